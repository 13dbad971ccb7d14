"""Seed 000, "Example: Custom DPO for Math Reasoning": MathDPOTrainer, verbatim but for the
import. ``math_correctness`` is a column of examples/data/math_preferences.jsonl; the trainer
hands every collated column to ``train_step`` in ``batch``, next to the policy and reference
log-probs under the seed's names.
"""

import torch.nn.functional as F

from rlfoundry.algorithms.dpo import DPOTrainer


class MathDPOTrainer(DPOTrainer):
    def __init__(self, *args, math_weight=2.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.math_weight = math_weight

    def compute_loss(self, policy_chosen_logps, policy_rejected_logps,
                     reference_chosen_logps, reference_rejected_logps,
                     math_correctness=None):
        """
        DPO loss with mathematical reasoning emphasis
        """
        # Standard DPO rewards
        chosen_rewards = policy_chosen_logps - reference_chosen_logps
        rejected_rewards = policy_rejected_logps - reference_rejected_logps

        # Add mathematical correctness if available
        if math_correctness is not None:
            chosen_rewards += self.math_weight * math_correctness

        # Compute DPO loss
        losses = -F.logsigmoid(chosen_rewards - rejected_rewards)

        return losses.mean()

    def train_step(self, batch):
        """
        Custom training step with math reasoning
        """
        # Extract math correctness scores
        math_correctness = batch.get('math_correctness', None)

        # Compute loss with math emphasis
        loss = self.compute_loss(
            batch['policy_chosen_logps'],
            batch['policy_rejected_logps'],
            batch['reference_chosen_logps'],
            batch['reference_rejected_logps'],
            math_correctness
        )

        return loss


if __name__ == "__main__":
    config = {"model": {"name_or_path": "builtin:tiny"},
              "data": {"train": "examples/data/math_preferences.jsonl", "max_length": 32},
              "training": {"max_steps": 6, "batch_size": 8, "learning_rate": 1e-3,
                           "output_dir": "runs/seed_math_dpo_trainer"},
              "logging": {"tensorboard": False, "progress_bar": False}}
    trainer = MathDPOTrainer(config=config, math_weight=2.0)
    metrics = trainer.train()
    print(f"MathDPOTrainer(math_weight={trainer.math_weight}) loss {metrics['loss']:.4f} "
          f"(ln 2 = 0.6931 without the math bonus)")
