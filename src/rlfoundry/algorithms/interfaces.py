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
    Composites of both kinds use ``"sum"`` (see ``ComposableLossFunction``).

    Optional members the trainers honour:

    - ``requires_reference`` (bool): whether reference log-probs are needed;
    - ``requires`` (set): extra inputs, ``"hidden"`` (response embeddings) or ``"targets"``;
    - ``on_step_start(step, total_steps)`` / ``on_step_end(metrics)``: called once per
      optimizer step (not per micro-batch), the latter with the step's reduced metrics --
      the place for schedules and adaptive weights;
    - ``bind_tokenizer(tokenizer)``: called once when the trainer is built;
    - ``parameters()``: learnable loss parameters, trained with the model;
    - ``max_grad_norm``: a gradient-clipping threshold for runs using this loss. Clipping
      happens in the trainer after backward; a loss cannot clip gradients that do not exist
      yet when it is called;
    - ``state_dict()`` / ``load_state_dict()``: checkpointed state (default: plain attributes).
    """

    def __call__(
        self, batch: dict[str, Any], model_outputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, Any]]: ...
