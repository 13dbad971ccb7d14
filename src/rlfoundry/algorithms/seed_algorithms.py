"""The names the NeMo RL-style configuration examples use, registered by default.

- ``algorithm.name: custom_dpo``: :class:`CustomDPOTrainer`, DPO with the configured loss
  (the documents' ``CustomDPOTrainer`` subclasses ``DPOTrainer`` and changes only its loss).
- ``algorithm.name: custom_grpo``: :class:`CustomGRPOTrainer`, GRPO with the configured
  ``group_strategy`` (the documents' config sets ``group_strategy: semantic  # or
  performance, random``).
- ``algorithm.loss.type: custom_math_reasoning``: DPO whose chosen reward gets a bonus of
  ``math_weight * math_correctness + syntax_weight * syntax_scores`` (per-row data columns;
  a missing column counts as 0), the documents' math-reasoning and code-generation losses as
  one configurable loss. A bonus ``b`` on the chosen reward ``beta * (pc - rc)`` equals
  lowering ``rc`` by ``b / beta``, so every DPO ``loss_type`` and metric keeps working.
"""

from __future__ import annotations

from typing import Any

import torch

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.algorithms.loss_functions import DPOLossFn, LossFunctionRegistry
from rlfoundry.algorithms.trainer_registry import TRAINERS


@LossFunctionRegistry.register("custom_math_reasoning")
class MathReasoningDPOLossFn(DPOLossFn):
    """DPO with a chosen-reward bonus from math_correctness and syntax_scores columns."""

    extra_config_keys = ("math_weight", "syntax_weight")

    def __call__(self, batch: dict[str, Any], model_outputs: Any):
        chosen = model_outputs["policy_chosen_logps"]
        bonus = torch.zeros_like(chosen)
        for column, key in (("math_correctness", "math_weight"), ("syntax_scores", "syntax_weight")):
            if column in batch:
                bonus = bonus + float(self.cfg.get(key, 1.0)) * batch[column].to(chosen)
        batch = dict(batch)
        ref = batch.get("reference_chosen_logps")
        ref = torch.zeros_like(chosen) if ref is None else ref
        batch["reference_chosen_logps"] = ref - bonus / self.reference_policy_kl_penalty
        if batch.get("reference_rejected_logps") is None:
            batch["reference_rejected_logps"] = torch.zeros_like(chosen)
        return super().__call__(batch, model_outputs)


@TRAINERS.register("custom_dpo")
class CustomDPOTrainer(DPOTrainer):
    """DPO with the configured (custom) loss: the documents' CustomDPOTrainer."""


@TRAINERS.register("custom_grpo")
class CustomGRPOTrainer(GRPOTrainer):
    """GRPO with the configured grouping strategy: the documents' CustomGRPOTrainer."""
