"""Seed 004, step 4: DynamicMultiObjectiveLossFn (dynamic weight balancing).

The seed's class verbatim (import changed; ``LossFunction`` is a Protocol, so subclassing it
just declares the interface). Its objectives are Python callables and it updates weights on
every call. The built-in ``dynamic_multi_objective`` loss implements the same moving-average
rule, plus DWA and uncertainty weighting, from YAML, and updates once per optimizer step
from the step's accumulated objective values, so gradient accumulation cannot change the
weights:

    loss: {type: dynamic_multi_objective, scheme: moving_average, adaptation_rate: 0.01,
           objectives: {pref: {type: dpo}, sft: {type: nll}}, initial_weights: {pref: 1.0, sft: 0.1}}
"""

from typing import Any

import torch

from rlfoundry.algorithms.interfaces import LossFunction
from rlfoundry.algorithms.loss_functions import LossFunctionRegistry


@LossFunctionRegistry.register("seed_dynamic_multi_objective")
class DynamicMultiObjectiveLossFn(LossFunction):
    """Multi-objective loss with dynamic weight balancing."""

    def __init__(self, cfg: dict[str, Any]):
        self.objectives = cfg["objectives"]
        self.initial_weights = cfg["initial_weights"]
        self.adaptation_rate = cfg.get("adaptation_rate", 0.01)
        self.current_weights = self.initial_weights.copy()
        self.objective_histories = {name: [] for name in self.objectives.keys()}

    def _update_weights(self, objective_values: dict[str, float]):
        """Update weights based on objective performance."""
        for name, value in objective_values.items():
            self.objective_histories[name].append(value)

            # Compute moving average
            if len(self.objective_histories[name]) > 10:
                recent_avg = sum(self.objective_histories[name][-10:]) / 10
                historical_avg = sum(self.objective_histories[name][:-10]) / max(len(self.objective_histories[name]) - 10, 1)

                # Adjust weight based on performance trend
                if recent_avg < historical_avg:
                    # Performance improving, increase weight
                    self.current_weights[name] *= (1 + self.adaptation_rate)
                else:
                    # Performance degrading, decrease weight
                    self.current_weights[name] *= (1 - self.adaptation_rate)

                # Ensure weights stay positive
                self.current_weights[name] = max(self.current_weights[name], 0.01)

    def __call__(self, batch: dict[str, torch.Tensor],
                 model_outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        # Compute individual objective losses
        objective_losses = {}
        total_loss = torch.tensor(0.0, device=model_outputs["logits"].device)

        for name, objective_fn in self.objectives.items():
            loss = objective_fn(batch, model_outputs)
            objective_losses[name] = loss
            total_loss += self.current_weights[name] * loss

        # Update weights
        self._update_weights({name: loss.item() for name, loss in objective_losses.items()})

        # Prepare metrics
        metrics = {
            "total_loss": total_loss.item(),
            "weights": self.current_weights.copy()
        }
        metrics.update({f"{name}_loss": loss.item() for name, loss in objective_losses.items()})

        return total_loss, metrics


if __name__ == "__main__":
    from rlfoundry.algorithms.loss_functions import DynamicMultiObjectiveLossFn as BuiltIn

    state = {"t": 0}

    def falling(batch, outputs):  # an objective that improves over time
        return outputs["logits"].mean() * 0 + 10.0 / (1 + state["t"])

    def rising(batch, outputs):  # one that gets worse
        return outputs["logits"].mean() * 0 + 1.0 + 0.1 * state["t"]

    cfg = {"objectives": {"falling": falling, "rising": rising},
           "initial_weights": {"falling": 1.0, "rising": 1.0}, "adaptation_rate": 0.05}
    seed, builtin = DynamicMultiObjectiveLossFn(cfg), BuiltIn(cfg)
    outputs = {"logits": torch.zeros(2, 3, requires_grad=True)}
    for t in range(15):
        state["t"] = t
        seed({}, outputs)
        _, m = builtin({}, outputs)
        builtin.on_step_end({"falling/loss": 10.0 / (1 + t), "rising/loss": 1.0 + 0.1 * t})
    print("seed weights:    ", {k: round(v, 4) for k, v in seed.current_weights.items()})
    print("built-in weights:", {k: round(v, 4) for k, v in builtin.current_weights.items()})
