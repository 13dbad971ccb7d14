"""Seed 004, step 2: AdaptiveDPOLossFn (DPO with adaptive temperature scheduling).

Two minimal fixes, marked below:
1. ``torch.cos`` of a Python float raises TypeError; ``math.cos`` is used.
2. The seed counts steps inside ``__call__``, i.e. per call. The trainer rewinds such int
   counters so they advance once per optimizer step (docs/customization.md, "Step counters
   of stateful losses"), so that works too; this example sets the counter in
   ``on_step_start``, the explicit hook the trainer calls once per optimizer step.
The built-in ``algorithm.beta_schedule: {type: warmup_cosine, ...}`` is the same idea without
the seed's jump back to the initial beta when warmup ends.
"""

import math
from typing import Any

import torch

from rlfoundry.algorithms.loss_functions import DPOLossConfig, DPOLossFn, LossFunctionRegistry


@LossFunctionRegistry.register("adaptive_dpo")
class AdaptiveDPOLossFn(DPOLossFn):
    """DPO loss with adaptive temperature scheduling."""

    def __init__(self, cfg: DPOLossConfig):
        super().__init__(cfg)
        self.initial_beta = cfg["reference_policy_kl_penalty"]
        self.final_beta = cfg.get("final_beta", self.initial_beta * 0.1)
        self.warmup_steps = cfg.get("warmup_steps", 1000)
        self.current_step = 0

    def _compute_adaptive_beta(self) -> float:
        """Compute adaptive beta based on training progress."""
        if self.current_step < self.warmup_steps:
            # Linear warmup
            progress = self.current_step / self.warmup_steps
            return self.initial_beta + (self.final_beta - self.initial_beta) * progress
        else:
            # Cosine decay
            decay_steps = self.current_step - self.warmup_steps
            decay_factor = 0.5 * (1 + math.cos(math.pi * decay_steps / 10000))  # fix 1: math.cos
            return self.final_beta + (self.initial_beta - self.final_beta) * decay_factor

    def on_step_start(self, step: int, total_steps: int) -> None:  # fix 2: once per step
        self.current_step = step
        self.reference_policy_kl_penalty = self._compute_adaptive_beta()

    def __call__(self, batch: dict[str, torch.Tensor],
                 model_outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
        # Call parent implementation (beta was updated in on_step_start)
        loss, metrics = super().__call__(batch, model_outputs)

        # Add adaptive beta to metrics
        metrics["adaptive_beta"] = self.reference_policy_kl_penalty

        return loss, metrics


if __name__ == "__main__":
    from rlfoundry.algorithms.dpo import DPOTrainer

    config = {"model": {"name_or_path": "builtin:tiny"},
              "algorithm": {"loss": {"type": "adaptive_dpo", "reference_policy_kl_penalty": 0.1,
                                     "final_beta": 0.01, "warmup_steps": 4}},
              "data": {"train": "builtin:sort_preferences", "train_size": 48, "eval_size": 8},
              "training": {"max_steps": 6, "batch_size": 8, "micro_batch_size": 4,
                           "output_dir": "runs/seed_adaptive_dpo"},
              "logging": {"tensorboard": False, "progress_bar": False}}
    trainer = DPOTrainer(config=config)
    betas = []
    original = trainer.optimizer_step

    def step_and_record(indices):
        metrics = original(indices)
        betas.append(round(metrics["adaptive_beta"], 4))
        return metrics

    trainer.optimizer_step = step_and_record
    trainer.train()
    print("adaptive_beta per optimizer step (2 micro-batches each):", betas)
