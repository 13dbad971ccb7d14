"""Load a policy model and tokenizer from a local Hugging Face directory or a built-in name."""

from __future__ import annotations

from pathlib import Path

import torch

from rlfoundry.config.schema import ModelConfig
from rlfoundry.errors import ConfigError
from rlfoundry.models.tiny import BUILTIN_PREFIX, SIZES, build_model, build_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}


def is_builtin(name_or_path: str) -> bool:
    return name_or_path.startswith(BUILTIN_PREFIX)


def load_tokenizer(name_or_path: str, tokenizer_path: str | None = None):
    from transformers import AutoTokenizer

    if tokenizer_path is None and is_builtin(name_or_path):
        return build_tokenizer()
    path = tokenizer_path or name_or_path
    _require_dir(path, "model.tokenizer" if tokenizer_path else "model.name_or_path")
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:  # many base models ship without one; eos is the usual stand-in
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, tokenizer=None, dtype: str = "float32", seed: int = 0):
    """An ``AutoModelForCausalLM`` from a local directory, or ``builtin:tiny`` / ``builtin:small``."""
    if is_builtin(name_or_path):
        size = name_or_path[len(BUILTIN_PREFIX):]
        if size not in SIZES:
            raise ConfigError(
                f"model.name_or_path: unknown built-in model '{name_or_path}'; "
                f"choose from {[BUILTIN_PREFIX + s for s in SIZES]}"
            )
        return build_model(size, tokenizer, seed=seed).to(DTYPES[dtype])
    from transformers import AutoModelForCausalLM

    _require_dir(name_or_path, "model.name_or_path")
    return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=DTYPES[dtype])


def prepare_policy(model: torch.nn.Module, cfg: ModelConfig) -> torch.nn.Module:
    """Apply ``model.gradient_checkpointing`` and ``model.lora`` to a loaded policy."""
    from rlfoundry.models.lora import apply_lora, is_peft

    if cfg.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise ConfigError(f"model.gradient_checkpointing: {type(model).__name__} does not "
                              "support gradient checkpointing")
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # the newer transformers name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    if cfg.lora is not None and not is_peft(model):
        model = apply_lora(model, cfg.lora)
    return model


def build_policy(cfg: ModelConfig, tokenizer=None, seed: int = 0) -> torch.nn.Module:
    """The policy a run trains: ``model.name_or_path`` loaded in ``model.dtype``, prepared."""
    return prepare_policy(load_model(cfg.name_or_path, tokenizer, cfg.dtype, seed=seed), cfg)


def _require_dir(path: str, key: str) -> None:
    if not Path(path).is_dir():
        raise ConfigError(
            f"{key}: '{path}' is not a local directory. rlfoundry loads models from local "
            f"Hugging Face directories (config.json + weights) or built-ins "
            f"({', '.join(BUILTIN_PREFIX + s for s in SIZES)})."
        )
