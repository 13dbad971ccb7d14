"""Atomic, resumable checkpoints in Hugging Face format.

Layout: ``<output_dir>/checkpoints/step_000120/{model/, trainer_state.pt}``. A checkpoint is
written into a temporary sibling directory and renamed into place only when complete, so a
crash mid-write never leaves a directory that ``resume: auto`` would pick up.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from rlfoundry.errors import CheckpointError

STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def plain_state(obj: Any) -> dict[str, Any]:
    """Checkpointable state of a loss/schedule object: its ``state_dict()`` if it has one,
    else its plain-data attributes (numbers, strings, lists, dicts, tensors)."""
    if obj is None:
        return {}
    if hasattr(obj, "state_dict") and callable(obj.state_dict):
        return {"state_dict": obj.state_dict()}
    simple = (int, float, str, bool, list, dict, tuple, torch.Tensor, type(None))
    return {"attrs": {k: v for k, v in vars(obj).items() if isinstance(v, simple) and k != "cfg"}}


def restore_plain_state(obj: Any, state: dict[str, Any]) -> None:
    if obj is None or not state:
        return
    if "state_dict" in state:
        obj.load_state_dict(state["state_dict"])
    for k, v in state.get("attrs", {}).items():
        setattr(obj, k, v)


def save_pretrained(model, tokenizer, directory: Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per save would drown the training bar
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_checkpoint(output_dir: str | Path, step: int, model, tokenizer, state: dict[str, Any],
                    keep_last: int | None = None) -> Path:
    """Write checkpoint ``step`` atomically and prune to the newest ``keep_last``."""
    root = Path(output_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}_{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        save_pretrained(model, tokenizer, tmp / "model")
        torch.save(state, tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint for step {step} under '{root}': {e}. "
            f"Earlier checkpoints are untouched."
        ) from e
    if keep_last:
        for old in list_checkpoints(output_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and STEP_DIR.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """'auto' -> newest complete checkpoint (or None); a path -> that checkpoint."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise CheckpointError(f"training.resume: '{resume}' is not a checkpoint directory "
                              f"(no {STATE_FILE})")
    return path


def load_checkpoint(path: Path, model) -> dict[str, Any]:
    """Load weights into ``model`` (in place) and return the trainer state."""
    from safetensors.torch import load_file

    weights = {}
    for f in sorted((path / "model").glob("*.safetensors")):
        weights.update(load_file(f))
    if not weights:
        raise CheckpointError(f"checkpoint '{path}' has no model weights")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied and not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint '{path}' does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return torch.load(path / STATE_FILE, weights_only=False)
