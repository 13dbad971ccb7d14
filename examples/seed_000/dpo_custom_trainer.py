"""Seed 000, "Loss Function Customization": CustomDPOTrainer overriding compute_loss.

The seed's compute_loss, verbatim (import changed to rlfoundry). The trainer calls it with the
policy and reference per-sequence log-probs of each micro-batch; returning a bare tensor is
fine (metrics such as accuracy and reward_gap are still logged by the trainer).
"""

import torch

from rlfoundry.algorithms.dpo import DPOTrainer


class CustomDPOTrainer(DPOTrainer):
    def compute_loss(self, policy_chosen_logps, policy_rejected_logps,
                     reference_chosen_logps, reference_rejected_logps):
        """
        Custom DPO loss implementation
        """
        # Your custom loss logic here
        chosen_rewards = policy_chosen_logps - reference_chosen_logps
        rejected_rewards = policy_rejected_logps - reference_rejected_logps

        # Custom loss calculation
        losses = -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards)
        return losses.mean()


if __name__ == "__main__":
    config = {"model": {"name_or_path": "builtin:tiny"},
              "data": {"train": "builtin:sort_preferences", "train_size": 64, "eval_size": 32},
              "training": {"max_steps": 15, "batch_size": 8, "learning_rate": 2e-3, "eval_every": 15,
                           "output_dir": "runs/seed_custom_dpo_trainer"},
              "logging": {"tensorboard": False, "progress_bar": False}}
    trainer = CustomDPOTrainer(config=config)
    metrics = trainer.train()
    print(f"loss {metrics['loss']:.4f}; held-out accuracy "
          f"{trainer.initial_eval['accuracy']:.3f} -> {trainer.last_eval['accuracy']:.3f}")
