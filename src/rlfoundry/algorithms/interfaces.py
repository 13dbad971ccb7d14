"""The loss contract: a callable taking ``(batch, model_outputs)`` and returning ``(loss, metrics)``."""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import torch

Reduction = Literal["sequence", "token"]


@runtime_checkable
class LossFunction(Protocol):
    """Base interface for all loss functions.

    ``batch`` holds the inputs (token ids, masks, reference log-probs, extra data columns);
    ``model_outputs`` holds what the policy forward produced (per-sequence or per-token
    log-probs, optionally logits). The return value is ``(loss, metrics)``: ``loss`` is a
    scalar tensor, the mean over this micro-batch's sequences (or tokens, see below);
    ``metrics`` maps names to floats or 0-dim tensors.

    Exact gradient accumulation: a loss may set the class attribute ``reduction`` to
    ``"sequence"`` (default: the loss is a mean over sequences/pairs) or ``"token"`` (a mean
    over the valid tokens in ``batch["response_mask"]``). The trainer weights each
    micro-batch by its share of the global count, so micro-batch 2 x 4 accumulation steps
    gives the same update as batch 8, and the same holds across data-parallel ranks.
    """

    def __call__(
        self, batch: dict[str, Any], model_outputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]: ...
