"""Plugin for examples/configs/custom_dpo.yaml (the seed's "Custom DPO Configuration").

It registers the two names that config uses:

- loss ``custom_math_reasoning``: DPO whose chosen reward gets a bonus of
  ``math_weight * math_correctness + syntax_weight * syntax_scores`` (per-row data columns;
  a missing column counts as 0). Adding a bonus b to the chosen reward beta*(pc - rc) is the
  same as lowering the chosen reference log-prob by b/beta, so the built-in DPO math, metrics
  and every loss_type keep working unchanged.
- algorithm ``custom_dpo``: the seed's ``CustomDPOTrainer`` (a plain ``DPOTrainer`` subclass).
"""

import torch

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.algorithms.loss_functions import DPOLossFn, LossFunctionRegistry
from rlfoundry.algorithms.trainer_registry import TRAINERS


@LossFunctionRegistry.register("custom_math_reasoning")
class MathReasoningDPOLossFn(DPOLossFn):
    """DPO with a chosen-reward bonus from math_correctness and syntax_scores columns."""

    extra_config_keys = ("math_weight", "syntax_weight")

    def __call__(self, batch, model_outputs):
        chosen = model_outputs["policy_chosen_logps"]
        bonus = torch.zeros_like(chosen)
        for column, key in (("math_correctness", "math_weight"), ("syntax_scores", "syntax_weight")):
            if column in batch:
                bonus = bonus + self.cfg.get(key, 1.0) * batch[column].to(chosen)
        batch = dict(batch)
        batch["reference_chosen_logps"] = batch["reference_chosen_logps"] - bonus / self.reference_policy_kl_penalty
        return super().__call__(batch, model_outputs)


@TRAINERS.register("custom_dpo")
class CustomDPOTrainer(DPOTrainer):
    """The seed's CustomDPOTrainer: DPO with the configured (custom) loss."""
