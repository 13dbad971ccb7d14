"""``training.precision``: autocast for forward passes, and a gradient scaler for fp16.

bf16 autocast runs on CUDA and on CPU. fp16 needs CUDA: its narrow exponent range needs
dynamic loss scaling (``torch.amp.GradScaler``), which skips an update whose gradients
overflowed and lowers the scale. Parameters stay in ``model.dtype``; fp16 training with
fp16 parameters is refused because the scaler cannot unscale fp16 gradients.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from rlfoundry.errors import ConfigError

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device, model_dtype: str) -> None:
    """Reject precision settings the device or parameter dtype cannot honour."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"training.precision: fp16 autocast needs a CUDA device (training on {device.type}); "
            f"use bf16 or fp32"
        )
    if precision == "fp16" and model_dtype == "float16":
        raise ConfigError(
            "training.precision: fp16 with model.dtype float16 cannot use a gradient scaler "
            "(fp16 gradients cannot be unscaled); keep model.dtype float32 with fp16 autocast"
        )


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """The autocast context of ``precision`` on ``device`` (nothing for fp32)."""
    if precision == "fp32":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """A dynamic loss scaler for fp16, else None."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)
