"""Seed 000, "Mathematical Reasoning": math_reasoning_loss as a DPOTrainer.compute_loss.

The seed's function body is kept; it becomes the trainer's compute_loss (the method the
trainer calls), so the weighting applies in training.
"""

import torch

from rlfoundry.algorithms.dpo import DPOTrainer


def math_reasoning_loss(self, chosen_logps, rejected_logps,
                        reference_chosen_logps, reference_rejected_logps):
    """
    DPO loss optimized for mathematical reasoning
    """
    # Weight mathematical correctness more heavily
    math_weight = 2.0

    chosen_rewards = (chosen_logps - reference_chosen_logps) * math_weight
    rejected_rewards = (rejected_logps - reference_rejected_logps) * math_weight

    losses = -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards)
    return losses.mean()


class MathReasoningDPOTrainer(DPOTrainer):
    compute_loss = math_reasoning_loss


if __name__ == "__main__":
    config = {"model": {"name_or_path": "builtin:tiny"},
              "data": {"train": "examples/data/math_preferences.jsonl", "max_length": 32},
              "training": {"max_steps": 6, "batch_size": 8, "learning_rate": 1e-3,
                           "output_dir": "runs/seed_math_reasoning_loss"},
              "logging": {"tensorboard": False, "progress_bar": False}}
    metrics = MathReasoningDPOTrainer(config=config).train()
    print(f"math_reasoning_loss trained 6 steps: loss {metrics['loss']:.4f}, "
          f"reward_gap {metrics['reward_gap']:.4f}")
