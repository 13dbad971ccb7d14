"""Seed 004, step 1: the LossFunction interface and LossFunctionRegistry.

``LossFunction`` is a runtime-checkable Protocol: any callable ``(batch, model_outputs) ->
(loss, metrics)`` satisfies it. ``LossFunctionRegistry.register(name)`` is a class decorator
(the seed shows its implementation; rlfoundry's adds ``names()``, ``describe()`` and a
did-you-mean error) and ``get(name)`` returns the class.
"""

from typing import Any

import torch

from rlfoundry.algorithms.interfaces import LossFunction
from rlfoundry.algorithms.loss_functions import LossFunctionRegistry


@LossFunctionRegistry.register("mean_margin")
class MeanMarginLoss:
    """Hinge on the summed log-prob margin of chosen over rejected (reference-free)."""

    def __init__(self, cfg: dict[str, Any]):
        self.margin = cfg.get("margin", 1.0)

    def __call__(self, batch: dict[str, torch.Tensor],
                 model_outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        gap = model_outputs["policy_chosen_logps"] - model_outputs["policy_rejected_logps"]
        loss = torch.relu(self.margin - gap).mean()
        return loss, {"gap": gap.detach().mean()}


if __name__ == "__main__":
    loss_fn = LossFunctionRegistry.get("mean_margin")({"margin": 2.0})
    outputs = {"policy_chosen_logps": torch.tensor([-3.0, -5.0]),
               "policy_rejected_logps": torch.tensor([-4.0, -4.0])}
    loss, metrics = loss_fn({}, outputs)
    print(f"isinstance(loss_fn, LossFunction): {isinstance(loss_fn, LossFunction)}; "
          f"loss {loss.item():.2f}; gap {metrics['gap'].item():.2f}")
    print(f"registered: {'mean_margin' in LossFunctionRegistry.names()}; "
          f"doc: {LossFunctionRegistry.describe()['mean_margin']}")
