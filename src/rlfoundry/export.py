"""``rlfoundry export``: a checkpoint (or a run's newest one) -> one Hugging Face directory.

The result loads with ``AutoModelForCausalLM.from_pretrained`` and ``AutoTokenizer`` alone:
LoRA adapters are merged into the weights, and the shards of an FSDP2 checkpoint are read
and stitched into one full state (no process group needed). Works in one CPU process.
"""

from __future__ import annotations

from pathlib import Path

from rlfoundry.config.schema import ModelConfig
from rlfoundry.errors import CheckpointError
from rlfoundry.safe_text import clip, escape_control
from rlfoundry.training import checkpoint as ckpt


def resolve_checkpoint(source: str | Path) -> Path:
    """``source`` itself when it is a checkpoint, else the newest intact checkpoint of the run
    dir; either way verified against its manifest (CheckpointError saying what is damaged)."""
    path = Path(source)
    if not path.is_dir():
        raise CheckpointError(f"'{source}' does not exist")
    looks_like_checkpoint = any((path / f).exists() for f in (
        ckpt.STATE_FILE, ckpt.LEGACY_STATE_FILE, "manifest.json", "model"))
    if not (path / "checkpoints").is_dir() and not looks_like_checkpoint:
        raise CheckpointError(
            f"'{source}' is neither a checkpoint (no {ckpt.STATE_FILE}) nor a run directory with "
            f"checkpoints under {path / 'checkpoints'}")
    if not (path / "checkpoints").is_dir():
        problems = ckpt.verify_checkpoint(path)
        if problems:
            raise CheckpointError(f"'{source}' is not an intact checkpoint: " + "; ".join(problems))
        return path
    found = ckpt.resolve_resume("auto", path)
    if found is None:
        raise CheckpointError(f"'{source}' is a run directory without checkpoints under "
                              f"{path / 'checkpoints'}")
    return found


def load_checkpoint_model(checkpoint: Path):
    """``(model, tokenizer)`` of a checkpoint as trained: full weights, base + adapter, or the
    FSDP2 shards put together."""
    from transformers import AutoModelForCausalLM

    from rlfoundry.models import build_policy, load_tokenizer
    from rlfoundry.models.loading import DTYPES
    from rlfoundry.models.lora import is_adapter_dir

    run = ckpt.saved_config(checkpoint) or {}
    model_cfg = ModelConfig.model_validate(run.get("model", {}))
    seed = int(run.get("training", {}).get("seed", 0))
    tokenizer = load_tokenizer(str(checkpoint / "model"))
    if ckpt.is_sharded(checkpoint) or is_adapter_dir(checkpoint / "model"):
        # rebuild the policy exactly as the run did (base weights, vocabulary, LoRA layers)
        tokenizer = load_tokenizer(model_cfg.name_or_path, model_cfg.tokenizer)
    if ckpt.is_sharded(checkpoint):
        model = build_policy(model_cfg, tokenizer, seed=seed)
        ckpt.load_sharded_weights(checkpoint, model)
    elif is_adapter_dir(checkpoint / "model"):
        model = build_policy(model_cfg, tokenizer, seed=seed)
        ckpt.load_checkpoint(checkpoint, model)
    else:
        try:  # safetensors only: a pickle (pytorch_model.bin) planted in model/ is never read
            model = AutoModelForCausalLM.from_pretrained(checkpoint / "model", use_safetensors=True,
                                                         dtype=DTYPES[model_cfg.dtype])
        except Exception as e:  # transformers raises OSError, ValueError, its own types
            raise CheckpointError(f"checkpoint '{checkpoint}': its model/ cannot be loaded "
                                  f"({type(e).__name__}: {clip(escape_control(str(e)), 300)}); "
                                  f"export another checkpoint") from e
    return model, tokenizer


def export(source: str | Path, out_dir: str | Path) -> Path:
    """Write the model of ``source`` (a checkpoint or run directory) to ``out_dir`` as a plain
    Hugging Face directory (merged weights + tokenizer); return the checkpoint used."""
    from rlfoundry.models.lora import merged_copy

    checkpoint = resolve_checkpoint(source)
    model, tokenizer = load_checkpoint_model(checkpoint)
    ckpt.save_model_dir(merged_copy(model), tokenizer, Path(out_dir), "the exported model")
    return checkpoint
