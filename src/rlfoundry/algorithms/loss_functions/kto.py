"""KTO: Kahneman-Tversky Optimization on unpaired, binary-labelled completions.

Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization"
(arXiv:2402.01306). Each row is one completion ``y`` of a prompt ``x`` labelled desirable or
undesirable; there is no pairing. With the implicit reward
``r(x, y) = log pi(y|x) - log pi_ref(y|x)`` and the reference point ``z0`` (an estimate of
``KL(pi || pi_ref)``, see :func:`kl_estimate`), the value of a row is

- desirable:   ``v = lambda_D * sigma(beta * (r - z0))``
- undesirable: ``v = lambda_U * sigma(beta * (z0 - r))``

and the loss is ``E[lambda_y - v]``: per row ``lambda_D * (1 - sigma(beta * (r - z0)))`` or
``lambda_U * (1 - sigma(beta * (z0 - r)))``, mean over rows. ``z0`` is detached: it sets the
reference point of the value function and carries no gradient (as in the paper).

The paper estimates ``z0`` from *mismatched* pairs: each prompt ``x_i`` with another row's
completion ``y_j``, ``z0 = max(0, mean_i(log pi(y_j|x_i) - log pi_ref(y_j|x_i)))``. The paper
advises ``lambda_D * n_D / (lambda_U * n_U)`` in ``[1, 4/3]`` when the classes are unbalanced.

Inputs: ``model_outputs["policy_logps"]`` ``[B]`` (summed completion log-probs),
``batch["reference_logps"]`` ``[B]``, ``batch["label"]`` ``[B]`` (1/True desirable, 0/False
undesirable) and either ``batch["kl_estimate"]`` (``z0`` computed by the trainer over the
whole step, the default in ``algorithm.name: kto``) or the mismatched log-probs
``model_outputs["policy_kl_logps"]`` / ``batch["reference_kl_logps"]`` ``[B]`` (then ``z0`` is
estimated from this batch alone).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from rlfoundry.algorithms.loss_functions.empty import empty_batch_result, is_empty
from rlfoundry.algorithms.loss_functions.options import NumberChecks, check_loss_options
from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry
from rlfoundry.errors import DataError

_DEFAULTS: dict[str, Any] = {
    "reference_policy_kl_penalty": 0.1,  # beta (alias: beta)
    "desirable_weight": 1.0,  # lambda_D
    "undesirable_weight": 1.0,  # lambda_U
}
_NUMBER_CHECKS: NumberChecks = {
    "reference_policy_kl_penalty": (False, lambda v: v > 0, "must be > 0"),
    "desirable_weight": (False, lambda v: v > 0, "must be > 0"),
    "undesirable_weight": (False, lambda v: v > 0, "must be > 0"),
}


def kl_estimate(policy_kl_logps: torch.Tensor, reference_kl_logps: torch.Tensor) -> torch.Tensor:
    """``z0 = max(0, mean(policy - reference))`` over mismatched (prompt, completion) rows,
    detached (0 for an empty batch)."""
    with torch.no_grad():
        if policy_kl_logps.numel() == 0:
            return policy_kl_logps.new_zeros(())
        return (policy_kl_logps - reference_kl_logps).mean().clamp(min=0)


def kto_losses(policy_logps: torch.Tensor, reference_logps: torch.Tensor, desirable: torch.Tensor,
               z0: torch.Tensor | float, beta: float, desirable_weight: float = 1.0,
               undesirable_weight: float = 1.0) -> torch.Tensor:
    """Per-row KTO losses ``[B]`` (see the module docstring); ``desirable`` is a bool mask."""
    reward = policy_logps - reference_logps
    z0 = torch.as_tensor(z0, dtype=reward.dtype, device=reward.device).detach()
    d = 1.0 - torch.sigmoid(beta * (reward - z0))  # 1 - sigma(beta (r - z0))
    u = 1.0 - torch.sigmoid(beta * (z0 - reward))
    return torch.where(desirable, desirable_weight * d, undesirable_weight * u)


def kto_metrics(policy_logps: torch.Tensor, reference_logps: torch.Tensor, desirable: torch.Tensor,
                z0: torch.Tensor, beta: float) -> dict[str, torch.Tensor]:
    """Batch statistics: ``kl`` (z0), mean implicit rewards ``beta * r`` of each class (0 for
    a class absent from the batch) and the fraction of rows whose reward is on the label's
    side of the reference point (``reward_accuracy``)."""
    with torch.no_grad():
        r = beta * (policy_logps - reference_logps).detach()
        d, u = desirable, ~desirable
        right = torch.where(desirable, r > beta * z0, r < beta * z0).to(r.dtype)
        return {
            "kl": z0.to(r.dtype),
            "rewards_desirable": r[d].mean() if d.any() else r.new_zeros(()),
            "rewards_undesirable": r[u].mean() if u.any() else r.new_zeros(()),
            "desirable_fraction": d.to(r.dtype).mean() if r.numel() else r.new_zeros(()),
            "reward_accuracy": right.mean() if r.numel() else r.new_zeros(()),
        }


@LossFunctionRegistry.register("kto")
class KTOLossFn:
    """KTO (Ethayarajh et al. 2024) on unpaired desirable/undesirable completions.

    ``algorithm.loss`` keys: ``beta`` (alias ``reference_policy_kl_penalty``, default 0.1),
    ``desirable_weight`` (lambda_D, 1.0), ``undesirable_weight`` (lambda_U, 1.0). Loss per
    row: ``lambda_D (1 - sigma(beta (r - z0)))`` for desirable rows and
    ``lambda_U (1 - sigma(beta (z0 - r)))`` for undesirable ones, ``r`` the policy/reference
    log-ratio, ``z0`` the detached, clamped mismatched-pair KL estimate; mean over rows.
    """

    reduction = "sequence"
    requires_reference = True

    def __init__(self, cfg: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        self.cfg = check_loss_options({**dict(cfg or {}), **kwargs}, "algorithm.loss", _DEFAULTS,
                                      _NUMBER_CHECKS)
        self.reference_policy_kl_penalty = self.cfg["reference_policy_kl_penalty"]
        self.desirable_weight = self.cfg["desirable_weight"]
        self.undesirable_weight = self.cfg["undesirable_weight"]

    @property
    def beta(self) -> float:
        return self.reference_policy_kl_penalty

    def __call__(self, batch: dict[str, Any], model_outputs: dict[str, torch.Tensor]):
        policy = model_outputs["policy_logps"]
        if is_empty(policy):  # the shared empty-micro-batch behaviour (loss_functions/empty.py)
            return empty_batch_result(self, policy)
        reference = batch.get("reference_logps")
        if reference is None:
            raise DataError("kto: batch['reference_logps'] is missing; KTO needs reference "
                            "log-probs (a reference model or reference.precompute)")
        if "label" not in batch:
            raise DataError("kto: batch['label'] is missing; rows need a 'label' column "
                            "(true = desirable, false = undesirable)")
        desirable = torch.as_tensor(batch["label"], device=policy.device).bool()
        z0 = batch.get("kl_estimate")
        if z0 is None:
            z0 = kl_estimate(model_outputs["policy_kl_logps"], batch["reference_kl_logps"])
        z0 = torch.as_tensor(z0, dtype=policy.dtype, device=policy.device).detach()
        metrics = kto_metrics(policy, reference, desirable, z0, self.beta)
        losses = kto_losses(policy, reference.to(policy.dtype), desirable, z0, self.beta,
                            self.desirable_weight, self.undesirable_weight)
        return losses.mean(), metrics

    def loss_from_rewards(self, rewards: torch.Tensor, desirable: torch.Tensor,
                          z0: torch.Tensor) -> torch.Tensor:
        """Mean KTO loss from log-ratios ``r`` directly (held-out evaluation)."""
        return kto_losses(rewards, torch.zeros_like(rewards), desirable, z0, self.beta,
                          self.desirable_weight, self.undesirable_weight).mean()


__all__ = ["KTOLossFn", "kl_estimate", "kto_losses", "kto_metrics"]
