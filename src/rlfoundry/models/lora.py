"""LoRA adapters through PEFT: add them to a policy, read their weights back, merge them.

With ``model.lora`` set only the adapter weights train. The frozen base weights *are* the
reference policy: ``with model.disable_adapter():`` runs the initial model, so DPO and GRPO's
KL need no second copy. A checkpoint holds the adapter (plus optimizer state); ``final/`` and
``rlfoundry export`` hold the merged weights, loadable without PEFT.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from rlfoundry.config.schema import LoRAConfig
from rlfoundry.errors import CheckpointError, ConfigError

ADAPTER_CONFIG = "adapter_config.json"


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("model.lora: LoRA needs the 'peft' package; install it with "
                          "pip install 'rlfoundry[lora]'") from None
    return peft


def is_peft(model: torch.nn.Module) -> bool:
    """True for a PEFT-wrapped model (it has ``disable_adapter``)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


def apply_lora(model: torch.nn.Module, cfg: LoRAConfig) -> torch.nn.Module:
    """``model`` with trainable LoRA adapters on ``cfg.target_modules`` (base weights frozen)."""
    peft = _peft()
    lora = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                           target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    try:
        return peft.get_peft_model(model, lora)
    except ValueError as e:
        raise ConfigError(f"model.lora.target_modules: {e}") from None


def merged_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model with the adapter folded into the weights (``model`` itself
    when it has no adapter); the trained PEFT model is left untouched."""
    if not is_peft(model):
        return model
    return copy.deepcopy(model).merge_and_unload()


def is_adapter_dir(directory: Path) -> bool:
    return (Path(directory) / ADAPTER_CONFIG).is_file()


def load_adapter_weights(model: torch.nn.Module, directory: Path) -> None:
    """Load adapter weights saved by ``save_pretrained`` into the PEFT ``model`` (in place)."""
    from safetensors.torch import load_file

    peft = _peft()
    files = sorted(Path(directory).glob("adapter_model*.safetensors"))
    if not files:
        raise CheckpointError(f"'{directory}' has {ADAPTER_CONFIG} but no adapter weights")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        weights.update(load_file(f))
    result = peft.set_peft_model_state_dict(model, weights)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(f"adapter in '{directory}' does not match the model's LoRA layers: "
                              f"unexpected {unexpected[:5]} (was model.lora changed?)")
