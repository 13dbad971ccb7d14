"""Bradley-Terry reward-model loss: a scalar score per sequence, trained on preference pairs.

With ``r_c`` and ``r_r`` the reward model's scores of the chosen and the rejected completion of
a pair, the Bradley-Terry model (Bradley & Terry 1952; as used for RLHF reward models by
Ouyang et al. 2022, "Training language models to follow instructions with human feedback")
says ``P(chosen > rejected) = sigmoid(r_c - r_r)``. The loss of a pair is its negative
log-likelihood, optionally with a required margin ``m`` (Llama 2's margin loss) and a
centering term that keeps the scores near zero (Eisenstein et al. 2023, "Helping or Herding?";
TRL calls its coefficient ``center_rewards_coefficient``)::

    loss_i = -log sigmoid(r_c - r_r - m) + center_rewards_coefficient * (r_c + r_r)^2

mean over pairs (``reduction = "sequence"``: every pair weighs the same across micro-batches).

Inputs: ``model_outputs["chosen_rewards"]`` and ``["rejected_rewards"]`` ``[B]``; with
``margin_column`` set, ``batch[margin_column]`` ``[B]`` (a numeric data column).
Metrics: ``accuracy`` (pairs whose chosen score is higher; a tie, ``|r_c - r_r| <
tie_tolerance``, counts one half), mean ``chosen_rewards`` / ``rejected_rewards`` and
``reward_margin`` (mean ``r_c - r_r``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from rlfoundry.algorithms.loss_functions.empty import empty_batch_result, is_empty
from rlfoundry.algorithms.loss_functions.options import NumberChecks, check_loss_options
from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry
from rlfoundry.errors import ConfigError, DataError

_DEFAULTS: dict[str, Any] = {
    "center_rewards_coefficient": 0.0,
    "tie_tolerance": 1e-6,
    "margin_column": None,
}
_NUMBER_CHECKS: NumberChecks = {
    "center_rewards_coefficient": (False, lambda v: v >= 0, "must be >= 0"),
    "tie_tolerance": (False, lambda v: v >= 0, "must be >= 0"),
}


def bradley_terry_losses(chosen: torch.Tensor, rejected: torch.Tensor,
                         margin: torch.Tensor | None = None,
                         center_rewards_coefficient: float = 0.0) -> torch.Tensor:
    """Per-pair losses ``[B]``: ``-log sigmoid(r_c - r_r - m) + c * (r_c + r_r)^2``."""
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin.to(diff)
    losses = -F.logsigmoid(diff)
    if center_rewards_coefficient:
        losses = losses + center_rewards_coefficient * (chosen + rejected) ** 2
    return losses


def pair_accuracy(chosen: torch.Tensor, rejected: torch.Tensor, tie_tolerance: float = 0.0) -> torch.Tensor:
    """Fraction of pairs ranked right: 1 if ``r_c - r_r >= tol``, 0.5 if ``|r_c - r_r| < tol``,
    else 0 (with ``tol = 0`` only exact ties count one half)."""
    with torch.no_grad():
        diff = (chosen - rejected).double()
        tie = diff.abs() < tie_tolerance if tie_tolerance > 0 else diff == 0
        score = torch.where(tie, 0.5, (diff > 0).double())
        return score.mean().to(chosen.dtype) if score.numel() else chosen.new_zeros(())


@LossFunctionRegistry.register("bradley_terry")
class BradleyTerryLossFn:
    """Reward-model loss on pairs: ``-log sigmoid(r_c - r_r - margin)`` plus an optional
    centering term ``center_rewards_coefficient * (r_c + r_r)^2``; mean over pairs.

    ``algorithm.loss`` keys: ``center_rewards_coefficient`` (default 0: off),
    ``margin_column`` (a numeric data column holding each pair's required margin; default
    null: no margin), ``tie_tolerance`` (pairs closer than this count 0.5 in ``accuracy``,
    default 1e-6)."""

    reduction = "sequence"
    requires_reference = False

    def __init__(self, cfg: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        cfg = {**dict(cfg or {}), **kwargs}
        if "beta" in cfg or "reference_policy_kl_penalty" in cfg:
            raise ConfigError("algorithm.loss.beta: a reward model has no reference policy and no "
                              "beta; remove it (options: center_rewards_coefficient, "
                              "margin_column, tie_tolerance)")
        self.cfg = check_loss_options(cfg, "algorithm.loss", _DEFAULTS, _NUMBER_CHECKS)
        column = self.cfg["margin_column"]
        if column is not None and (not isinstance(column, str) or not column):
            raise ConfigError(f"algorithm.loss.margin_column: must be a column name (a non-empty "
                              f"string) or null, got {column!r}")
        self.center_rewards_coefficient = float(self.cfg["center_rewards_coefficient"])
        self.tie_tolerance = float(self.cfg["tie_tolerance"])
        self.margin_column: str | None = column

    def margin(self, batch: Mapping[str, Any], like: torch.Tensor) -> torch.Tensor | None:
        """The batch's ``margin_column`` as a tensor like ``like`` (None when not configured)."""
        if self.margin_column is None:
            return None
        value = batch.get(self.margin_column)
        if value is None:
            raise DataError(f"algorithm.loss.margin_column: the batch has no column "
                            f"'{self.margin_column}'; add it to every preference row or unset "
                            f"margin_column")
        if not isinstance(value, torch.Tensor):
            raise DataError(f"algorithm.loss.margin_column: column '{self.margin_column}' must be "
                            f"a number in every row (got {type(value[0]).__name__ if value else 'none'})")
        return value.to(like)

    def __call__(self, batch: Mapping[str, Any], model_outputs: Mapping[str, torch.Tensor]):
        chosen, rejected = model_outputs["chosen_rewards"], model_outputs["rejected_rewards"]
        if is_empty(chosen):  # the shared empty-micro-batch behaviour (loss_functions/empty.py)
            return empty_batch_result(self, chosen, rejected)
        losses = bradley_terry_losses(chosen, rejected, self.margin(batch, chosen),
                                      self.center_rewards_coefficient)
        loss = losses.mean()
        with torch.no_grad():
            metrics = {"loss": loss.detach(),
                       "accuracy": pair_accuracy(chosen, rejected, self.tie_tolerance),
                       "chosen_rewards": chosen.detach().mean(),
                       "rejected_rewards": rejected.detach().mean(),
                       "reward_margin": (chosen - rejected).detach().mean()}
        return loss, metrics


__all__ = ["BradleyTerryLossFn", "bradley_terry_losses", "pair_accuracy"]
