"""AdamW and the learning-rate schedule (linear warmup, then constant/linear/cosine decay)."""

from __future__ import annotations

import math

import torch

from rlfoundry.config.schema import TrainingConfig


def build_optimizer(params: list[torch.nn.Parameter], cfg: TrainingConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on vectors (biases, norm weights).

    The fused implementation (one kernel per parameter group instead of about ten passes over
    every tensor; several times faster on CPU) is used whenever the parameters allow it."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=tuple(cfg.adam_betas),
                             eps=cfg.adam_eps, fused=_can_fuse(params))


def _can_fuse(params: list[torch.nn.Parameter]) -> bool:
    """Fused AdamW takes plain (unsharded; FSDP2 gives DTensors) floating tensors on CPU or
    CUDA, all on one device type."""
    devices = {p.device.type for p in params}
    return (len(devices) == 1 and devices <= {"cpu", "cuda"}
            and all(type(p) is torch.nn.Parameter and p.is_floating_point() for p in params))


def lr_multiplier(step: int, total_steps: int, warmup_steps: int, kind: str) -> float:
    """Factor applied to the peak learning rate before optimizer step ``step`` (0-based)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, cfg: TrainingConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_multiplier(step, total_steps, cfg.warmup_steps, cfg.lr_scheduler),
    )
