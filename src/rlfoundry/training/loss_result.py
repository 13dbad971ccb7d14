"""What a loss returns, checked: a scalar tensor, or ``(scalar, metrics dict)``.

Trainers call :func:`checked_loss_result` on what ``train_step`` / ``compute_loss`` / the loss
function gave back, so a defect is reported once, naming the loss, instead of surfacing as a
raw ``unpack`` / ``backward`` error or a metric that silently disappears from the logs.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from rlfoundry.errors import ConfigError, LossError


def checked_loss_result(result: Any, who: str = "the loss", *,
                        check_values: bool = True) -> tuple[torch.Tensor, dict[str, Any]]:
    """``(loss, metrics)`` from a loss tensor or a ``(loss, metrics)`` pair; ``LossError``
    naming ``who`` for a wrong shape or type. Metric values may be numbers, one-element
    tensors, strings (not logged) or nested dicts of those (logged as ``a/b``); with
    ``check_values=False`` only the loss and the metrics' type are checked."""
    if isinstance(result, tuple):
        if len(result) != 2:
            raise LossError(f"{who} returned a tuple of {len(result)} items; return the loss "
                            f"tensor or (loss, metrics_dict)")
        loss, metrics = result
    else:
        loss, metrics = result, {}
    if metrics is None:
        metrics = {}
    if not isinstance(metrics, Mapping):
        raise LossError(f"{who} returned metrics of type {type(metrics).__name__}; metrics must "
                        f"be a dict of name -> number (return (loss, {{'name': value}}))")
    if not isinstance(loss, torch.Tensor):
        raise LossError(f"{who} returned a loss of type {type(loss).__name__}; it must be a "
                        f"torch.Tensor computed from the model outputs (so it has a gradient)")
    if loss.numel() != 1:
        raise LossError(f"{who} returned a loss of shape {tuple(loss.shape)}; it must be a scalar: "
                        f"reduce it (e.g. .mean() over sequences or masked tokens)")
    if check_values:
        _check_metrics(metrics, who, "")
    return loss.reshape(()), dict(metrics)


def _check_metrics(metrics: Mapping[str, Any], who: str, prefix: str) -> None:
    for k, v in metrics.items():
        if isinstance(v, Mapping):
            _check_metrics(v, who, f"{prefix}{k}/")
        elif isinstance(v, torch.Tensor) and v.numel() != 1:
            raise LossError(f"{who} returned metric '{prefix}{k}' of shape {tuple(v.shape)}; a "
                            f"metric must be one number (reduce it, e.g. .mean(), or log its "
                            f"parts under separate names)")
        elif isinstance(v, (list, tuple)):
            raise LossError(f"{who} returned metric '{prefix}{k}' as a {type(v).__name__}; a "
                            f"metric must be one number (log the items under separate names)")


def check_loss_signature(loss_fn: Any, who: str) -> None:
    """``ConfigError`` when ``loss_fn`` cannot be called as ``loss_fn(batch, model_outputs)``."""
    if not callable(loss_fn):
        raise ConfigError(f"{who} is a {type(loss_fn).__name__}, not callable; a loss is called "
                          f"as loss_fn(batch, model_outputs) -> loss or (loss, metrics)")
    try:
        signature = inspect.signature(loss_fn)
    except (TypeError, ValueError):
        return  # builtins and C callables: nothing to check
    try:
        signature.bind(None, None)
    except TypeError as e:
        raise ConfigError(f"{who} cannot be called as loss_fn(batch, model_outputs): its "
                          f"signature is {signature} ({e})") from None
