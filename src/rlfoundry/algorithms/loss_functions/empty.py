"""One behaviour for an empty micro-batch (no sequences), shared by every built-in loss.

A mean over zero sequences (or pairs) is 0/0 = NaN, and a NaN loss poisons the whole step's
gradient. Instead every built-in loss returns a zero that still joins the autograd graph
(``(x * 0).sum()`` of its differentiable inputs, so ``backward`` runs and gives exact zero
gradients) and the metric ``empty_batches = 1``; the loss object also counts such calls in
its ``empty_batches`` attribute. The trainer weights a micro-batch by its share of the step's
sequences (or tokens), which is 0 here, so the step's other metrics are unaffected.
"""

from __future__ import annotations

from typing import Any

import torch


def is_empty(x: torch.Tensor) -> bool:
    """Whether ``x`` (``[B]`` or ``[B, T]``) holds no sequence (``B == 0``)."""
    return x.dim() > 0 and x.shape[0] == 0


def empty_batch_result(owner: Any, *inputs: torch.Tensor | None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(zero loss in the graph of inputs, metrics)`` for an empty micro-batch; counts it on
    ``owner.empty_batches``."""
    tensors = [t for t in inputs if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not tensors:
        raise ValueError("empty_batch_result needs at least one floating-point tensor")
    loss = sum(((t * 0).sum() for t in tensors[1:]), (tensors[0] * 0).sum())
    owner.empty_batches = getattr(owner, "empty_batches", 0) + 1
    zero = loss.detach()
    return loss, {"loss": zero, "empty_batches": torch.ones_like(zero)}
