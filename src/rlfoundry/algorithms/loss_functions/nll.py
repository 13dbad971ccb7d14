"""Token-level negative log-likelihood (supervised fine-tuning)."""

from __future__ import annotations

from typing import Any

import torch

from rlfoundry.algorithms.loss_functions.empty import empty_batch_result, is_empty
from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry
from rlfoundry.errors import ConfigError

NORMALIZATIONS = ("token", "sequence")


@LossFunctionRegistry.register("nll")
class NLLLossFn:
    """SFT loss: mean negative log-likelihood of the response tokens.

    Inputs: ``model_outputs["logprobs"]`` ``[B, T]`` and ``batch["response_mask"]`` ``[B, T]``.
    In a preference batch (``batch["is_chosen"]`` present) only the chosen responses count.

    ``normalization`` (YAML ``algorithm.loss.normalization``):

    - ``token`` (default): the mean over all response tokens of the batch, so every token
      weighs the same across micro-batches (``reduction = "token"``; the trainer's
      ``num_tokens`` counts chosen tokens in preference batches, so this stays exact there);
    - ``sequence``: each row's mean token NLL, averaged over rows (``reduction =
      "sequence"``), so a 2-token answer weighs as much as a 70-token one. Use it when rows
      of very different lengths teach different skills, e.g. one SFT row per model turn of
      a tool-using conversation (the call, then the one-digit answer).
    """

    requires_reference = False

    def __init__(self, cfg: dict[str, Any] | None = None):
        cfg = {k: v for k, v in dict(cfg or {}).items() if k != "type"}
        self.normalization = cfg.pop("normalization", "token")
        if cfg:
            raise ConfigError(f"algorithm.loss: the nll loss takes only 'normalization', got "
                              f"{sorted(cfg)}")
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"algorithm.loss.normalization must be one of "
                              f"{', '.join(NORMALIZATIONS)}, got {self.normalization!r}")
        self.reduction = self.normalization
        self.cfg = {"normalization": self.normalization}

    def __call__(self, batch, model_outputs):
        if is_empty(model_outputs["logprobs"]):  # see loss_functions/empty.py
            return empty_batch_result(self, model_outputs["logprobs"])
        mask = batch["response_mask"].bool()
        if batch.get("is_chosen") is not None:
            mask = mask & torch.as_tensor(batch["is_chosen"], device=mask.device).bool().unsqueeze(-1)
        mask = mask.to(model_outputs["logprobs"].dtype)
        nll = -(model_outputs["logprobs"].masked_fill(mask == 0, 0.0) * mask)
        if self.normalization == "token":
            loss = nll.sum() / mask.sum().clamp(min=1)
        else:  # rows without response tokens (rejected rows of a preference batch) count 0
            rows = mask.sum(-1)
            loss = (nll.sum(-1) / rows.clamp(min=1)).sum() / (rows > 0).sum().clamp(min=1)
        return loss, {"loss": loss.detach(), "perplexity": torch.exp(loss.detach())}
