"""Token-level negative log-likelihood (supervised fine-tuning)."""

from __future__ import annotations

from typing import Any

import torch

from rlfoundry.algorithms.loss_functions.empty import empty_batch_result, is_empty
from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry
from rlfoundry.errors import ConfigError


@LossFunctionRegistry.register("nll")
class NLLLossFn:
    """SFT loss: mean negative log-likelihood over all response tokens of the batch.

    Inputs: ``model_outputs["logprobs"]`` ``[B, T]`` and ``batch["response_mask"]`` ``[B, T]``.
    In a preference batch (``batch["is_chosen"]`` present) only the chosen responses count,
    and the trainer's ``num_tokens`` counts chosen tokens, so this stays exact there too.
    ``reduction = "token"``: every response token weighs the same across micro-batches.
    """

    reduction = "token"
    requires_reference = False

    def __init__(self, cfg: dict[str, Any] | None = None):
        cfg = {k: v for k, v in dict(cfg or {}).items() if k != "type"}
        if cfg:
            raise ConfigError(f"algorithm.loss: the nll loss takes no options, got {sorted(cfg)}")
        self.cfg = cfg

    def __call__(self, batch, model_outputs):
        if is_empty(model_outputs["logprobs"]):  # see loss_functions/empty.py
            return empty_batch_result(self, model_outputs["logprobs"])
        mask = batch["response_mask"].bool()
        if batch.get("is_chosen") is not None:
            mask = mask & torch.as_tensor(batch["is_chosen"], device=mask.device).bool().unsqueeze(-1)
        mask = mask.to(model_outputs["logprobs"].dtype)
        total = mask.sum().clamp(min=1)
        loss = -(model_outputs["logprobs"].masked_fill(mask == 0, 0.0) * mask).sum() / total
        return loss, {"loss": loss.detach(), "perplexity": torch.exp(loss.detach())}
