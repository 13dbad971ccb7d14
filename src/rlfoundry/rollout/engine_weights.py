"""The policy's weights as an inference engine loads them: plain Hugging Face names, full
tensors, LoRA folded in, the output layer included.

- FSDP2: parameters are ``DTensor`` shards; ``full_tensor()`` gathers each one. That is a
  collective, so every rank must call :func:`engine_weights` at the same point.
- LoRA (PEFT): the adapter is folded into its base weight, ``W + scale * B @ A``, from the
  (gathered) state dict; the trained model is left as it is.
- Tied embeddings: ``lm_head.weight`` is included. ``save_pretrained`` leaves it out, and an
  engine then keeps its old output layer.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from rlfoundry.errors import ConfigError

SAFETENSORS_NAME = "model.safetensors"


def _full(t: torch.Tensor) -> torch.Tensor:
    full_tensor = getattr(t, "full_tensor", None)  # DTensor (FSDP2)
    return (full_tensor() if full_tensor is not None else t).detach()


def _lora_scale(model) -> float:
    cfgs = getattr(model, "peft_config", {})
    if len(cfgs) != 1:
        raise ConfigError("rollout.backend vllm: a policy with several LoRA adapters cannot be "
                          "pushed to the engine; use one adapter")
    cfg = next(iter(cfgs.values()))
    if getattr(cfg, "use_dora", False):
        raise ConfigError("rollout.backend vllm: DoRA adapters cannot be folded for the engine; "
                          "use plain LoRA (model.lora)")
    rank, alpha = cfg.r, cfg.lora_alpha
    return alpha / (rank ** 0.5) if getattr(cfg, "use_rslora", False) else alpha / rank


def fold_lora(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A PEFT state dict (``base_model.model.*``, ``*.base_layer.weight``, ``*.lora_A.<name>``,
    ``*.lora_B.<name>``) as plain weights with each adapter folded into its base weight."""
    factors: dict[tuple[str, str], torch.Tensor] = {}
    for name, value in state.items():
        for part in ("lora_A", "lora_B"):
            if f".{part}." in name and name.endswith(".weight"):
                factors[(name.split(f".{part}.")[0], part)] = value
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        if ".lora_" in name:
            continue
        key = name.removeprefix("base_model.model.")
        if ".base_layer." in name:
            module = name.split(".base_layer.")[0]
            key = key.replace(".base_layer.", ".")
            if key.endswith(".weight") and (module, "lora_A") in factors:
                a, b = factors[(module, "lora_A")], factors[(module, "lora_B")]
                value = (value.float() + scale * (b.float() @ a.float())).to(value.dtype)
        out[key] = value
    return out


def engine_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full, Hugging Face-named weights of ``model`` (see the module docstring)."""
    state = {k: _full(v) for k, v in model.state_dict().items()}
    peft = hasattr(model, "peft_config") and hasattr(model, "get_base_model")
    if peft:
        state = fold_lora(state, _lora_scale(model))
    base = model.get_base_model() if peft else model
    config = getattr(base, "config", None)
    if getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in state:
        embed = base.get_input_embeddings().weight
        state["lm_head.weight"] = _full(embed)
    return state


def base_config(model: torch.nn.Module):
    """The transformers config of the policy (of its base model under PEFT)."""
    peft = hasattr(model, "peft_config") and hasattr(model, "get_base_model")
    return (model.get_base_model() if peft else model).config


def default_weights_root() -> Path:
    """A fresh private folder in /dev/shm (RAM) when there is one, else in the temp dir."""
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="rlfoundry-engine-", dir=parent))


def write_weights(weights: dict[str, torch.Tensor], directory: Path) -> Path:
    """``weights`` as one safetensors file in ``directory`` (written then renamed, so a
    reader never sees half a file). Tensors that share memory (tied layers) are copied."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    seen: set[int] = set()
    flat = {}
    for k, v in weights.items():
        v = v.detach().to("cpu").contiguous()
        if v.untyped_storage().data_ptr() in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        flat[k] = v
    tmp = directory / (SAFETENSORS_NAME + ".tmp")
    save_file(flat, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, directory / SAFETENSORS_NAME)
    return directory / SAFETENSORS_NAME


def write_model_dir(model: torch.nn.Module, tokenizer, directory: Path,
                    weights: dict[str, torch.Tensor] | None = None) -> Path:
    """A Hugging Face model directory (config, tokenizer, weights) an engine can start from."""
    directory.mkdir(parents=True, exist_ok=True)
    base_config(model).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_weights(weights if weights is not None else engine_weights(model), directory)
    return directory
