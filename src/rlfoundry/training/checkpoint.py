"""Atomic, resumable checkpoints in Hugging Face format.

Layout: ``<output_dir>/checkpoints/step_000120/{model/, trainer_state.pt}``. A checkpoint is
written into a temporary sibling directory, synced to disk and renamed into place only when
complete, so a crash mid-write never leaves a directory that ``resume: auto`` would pick up;
the leftovers of killed writers are deleted when the next run starts.

``model/`` holds the full weights, or only the adapter when LoRA is used. Under FSDP2 every
rank writes its own shards of the model and optimizer with ``torch.distributed.checkpoint``
into ``sharded/`` (no rank ever holds the whole state) and ``model/`` keeps the config and
tokenizer; ``rlfoundry export`` consolidates such a checkpoint into one directory, and it can
be resumed on any number of ranks.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from rlfoundry.errors import CheckpointError
from rlfoundry.training.storage import describe_write_failure

logger = logging.getLogger(__name__)

STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "trainer_state.pt"
SHARDED_DIR = "sharded"
POLICY_PREFIX = "model."  # the policy inside the FSDP2 wrapper whose state sharded/ holds
TMP_PREFIX = ".tmp_step_"
TRASH_PREFIX = ".trash_"
LEFTOVER = re.compile(r"^\.(?:tmp|trash)_.*_(\d+)$")


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
    """Write checkpoint ``step`` atomically and prune to the newest ``keep_last``.

    Everything is written into ``.tmp_step_N_<pid>``, synced to disk, and renamed to
    ``step_N`` only when complete; a failure (a full disk raises ``OSError``,
    ``SafetensorError`` or ``RuntimeError`` depending on the writer) removes the partial
    directory and raises :class:`CheckpointError`, leaving every earlier checkpoint intact.
    """
    root = Path(output_dir) / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f"{TMP_PREFIX}{step:06d}_{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        save_pretrained(model, tokenizer, tmp / "model")
        torch.save(state, tmp / STATE_FILE)
        _fsync_tree(tmp)
        _publish(tmp, final)
    except Exception as e:  # the writers report a full disk with different exception types
        message = describe_write_failure(f"the checkpoint of step {step}", root, e)
        leftover = _discard(tmp)
        raise CheckpointError(message + leftover) from e
    if keep_last:
        prune_checkpoints(output_dir, keep_last)
    return final


def _publish(tmp: Path, final: Path) -> None:
    """Rename the finished ``tmp`` to ``final`` (replacing an older copy) and sync the parent."""
    if final.exists():  # rename the old copy away first: directories cannot be replaced in one step
        trash = final.with_name(f"{TRASH_PREFIX}{final.name}_{os.getpid()}")
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)


def _discard(tmp: Path) -> str:
    """Remove a partial checkpoint directory; '' or a sentence saying it could not be removed."""
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
    except OSError as e:
        return f" The partial directory '{tmp}' could not be removed ({e}); delete it by hand."
    return ""


def _fsync_tree(path: Path) -> None:
    """Flush every file and directory under ``path`` to disk (so a rename publishes data)."""
    for dirpath, _, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # cannot sync a directory here
            raise
    finally:
        os.close(fd)


def prune_checkpoints(output_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints; return the deleted ones.

    Each is renamed away before it is deleted, so an interrupted deletion never leaves a
    half-deleted ``step_N`` that looks complete. Failures are logged, not raised: training
    goes on with an extra checkpoint on disk.
    """
    removed = []
    for old in list_checkpoints(output_dir)[:-keep_last]:
        trash = old.with_name(f"{TRASH_PREFIX}{old.name}_{os.getpid()}")
        try:
            os.replace(old, trash)
            shutil.rmtree(trash)
        except OSError as e:
            logger.warning("could not delete old checkpoint '%s' (%s); delete it by hand", old, e)
            continue
        removed.append(old)
    return removed


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete partial checkpoint directories left by killed runs (``.tmp_*`` and ``.trash_*``
    whose writer process is gone); return them. ``resume: auto`` never reads them anyway."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    removed = []
    for p in root.iterdir():
        m = LEFTOVER.match(p.name)
        if not (m and p.is_dir()) or _alive(int(m.group(1))):
            continue
        try:
            shutil.rmtree(p)
        except OSError as e:
            logger.warning("could not delete partial checkpoint '%s' (%s); delete it by hand", p, e)
            continue
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing it (it is only now starting)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_complete(path: Path) -> bool:
    """A published checkpoint: trainer state and model weights (or FSDP2 shards) are present."""
    return (path / STATE_FILE).is_file() and (
        any((path / "model").glob("*.safetensors")) or (path / SHARDED_DIR).is_dir())


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and is_complete(p)]
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
    """Load weights (or a LoRA adapter) into ``model`` (in place); return the trainer state.

    The files are read before the model is touched, so an unreadable checkpoint raises
    :class:`CheckpointError` and leaves the model as it was.
    """
    from safetensors.torch import load_file

    from rlfoundry.models.lora import is_adapter_dir, load_adapter_weights

    adapter = is_adapter_dir(path / "model")
    weights = {}
    state = read_state(path)
    try:
        for f in [] if adapter else sorted((path / "model").glob("*.safetensors")):
            weights.update(load_file(f))
    except Exception as e:  # safetensors raises its own type
        raise CheckpointError(_unreadable(path, e)) from e
    if adapter:
        load_adapter_weights(model, path / "model")
        return state
    if not weights:
        raise CheckpointError(f"checkpoint '{path}' has no model weights")
    load_state_dict_strict(model, weights, f"checkpoint '{path}'")
    return state


def read_state(path: Path) -> dict[str, Any]:
    """The trainer state of checkpoint ``path``; CheckpointError when it cannot be read."""
    try:
        return torch.load(path / STATE_FILE, weights_only=False)
    except Exception as e:  # pickle and torch raise many types for a damaged file
        raise CheckpointError(_unreadable(path, e)) from e


def _unreadable(path: Path, error: BaseException) -> str:
    return (f"checkpoint '{path}' cannot be read ({type(error).__name__}: {error}); delete it to "
            f"resume from the one before, or set training.resume to another checkpoint")


def load_state_dict_strict(model, weights: dict[str, torch.Tensor], what: str) -> None:
    """``model.load_state_dict(weights)``, tolerating only a missing tied output head."""
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [m for m in missing if m not in tied and not m.endswith("lm_head.weight")]
    if missing or unexpected:
        raise CheckpointError(f"{what} does not match the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def is_sharded(path: Path) -> bool:
    return (Path(path) / SHARDED_DIR).is_dir()


def save_model_files(model, tokenizer, directory: Path) -> None:
    """Config, generation config, adapter config and tokenizer: a model directory minus
    its weights (the weights of a sharded checkpoint live in ``sharded/``)."""
    from rlfoundry.models.lora import is_peft

    base = model.get_base_model() if is_peft(model) else model
    base.config.save_pretrained(directory)
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(directory)
    if is_peft(model):
        model.peft_config[model.active_adapter].save_pretrained(directory)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def save_sharded_checkpoint(output_dir: str | Path, step: int, root, optimizer, model, tokenizer,
                            state: dict[str, Any], keep_last: int | None = None) -> Path:
    """FSDP2: every rank writes its shards of ``root`` (the wrapper holding the policy as
    ``model.*`` and any heads) and of the optimizer (collective; call on every rank); rank 0
    writes the model files of ``model`` and the trainer state, then renames atomically."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from rlfoundry.training import distributed

    main = distributed.current().is_main
    where = Path(output_dir) / "checkpoints"
    final = where / f"step_{step:06d}"
    tmp = Path(distributed.broadcast_object(str(where / f"{TMP_PREFIX}{step:06d}_{os.getpid()}")))
    try:
        if main:
            if tmp.exists():
                shutil.rmtree(tmp)
            (tmp / "model").mkdir(parents=True)
            save_model_files(model, tokenizer, tmp / "model")
        distributed.barrier()
        model_state, optim_state = get_state_dict(root, optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / SHARDED_DIR)
        if main:
            torch.save(state, tmp / STATE_FILE)
            _fsync_tree(tmp)
            _publish(tmp, final)
    except Exception as e:  # the writers report a full disk with different exception types
        message = describe_write_failure(f"the sharded checkpoint of step {step}", where, e)
        raise CheckpointError(message + (_discard(tmp) if main else "")) from e
    if main and keep_last:
        prune_checkpoints(output_dir, keep_last)
    return final


def load_sharded_checkpoint(path: Path, root, optimizer) -> dict[str, Any]:
    """FSDP2: load this rank's shards of ``root`` and the optimizer (written on any number of
    ranks); return the trainer state (collective; call on every rank)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not is_sharded(path):
        raise CheckpointError(f"checkpoint '{path}' has no {SHARDED_DIR}/ state; it was not "
                              f"written with training.distributed.strategy fsdp2")
    model_state, optim_state = get_state_dict(root, optimizer)
    bundle = {"model": model_state, "optimizer": optim_state}
    dcp.load(bundle, checkpoint_id=path / SHARDED_DIR)
    set_state_dict(root, optimizer, model_state_dict=bundle["model"],
                   optim_state_dict=bundle["optimizer"])
    return read_state(path)


def load_sharded_weights(path: Path, model) -> None:
    """Fill an unsharded ``model`` with the weights of an FSDP2 checkpoint (one process; no
    process group needed: the shards are read and stitched by torch.distributed.checkpoint)."""
    import torch.distributed.checkpoint as dcp

    weights = {POLICY_PREFIX + k: v for k, v in model.state_dict().items()}
    bundle = {"model": weights}
    with warnings.catch_warnings():  # loading in one process is the point here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(bundle, checkpoint_id=Path(path) / SHARDED_DIR, no_dist=True)
    load_state_dict_strict(model, policy_weights(bundle["model"]), f"sharded checkpoint '{path}'")


def policy_weights(root_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The policy's entries of a wrapper state dict (``model.*``), without the prefix."""
    return {k[len(POLICY_PREFIX):]: v for k, v in root_state.items() if k.startswith(POLICY_PREFIX)}


def full_state_dict(root) -> dict[str, torch.Tensor]:
    """FSDP2: the policy's whole state gathered to CPU on rank 0 (empty on the other ranks;
    collective, call on every rank)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return policy_weights(get_model_state_dict(
        root, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))
