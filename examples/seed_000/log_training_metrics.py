"""Seed 000, best practice 3 "Monitor Training Dynamics": log_training_metrics.

The DPO trainer already logs chosen_rewards_mean, rejected_rewards_mean and reward_gap every
step (the seed's names) to metrics.jsonl, TensorBoard and the progress bar. This trainer also
runs the seed's function after each step. Minimal fixes: the rewards are stored by
``compute_loss`` (the seed assumes ``self.chosen_rewards`` exists), the non-numeric
'algorithm' entry goes into the metric name (``monitor/dpo/...``) because metrics are numbers,
and ``self.logger.log`` takes the step first.
"""

import json
from pathlib import Path

from rlfoundry.algorithms.dpo import DPOTrainer


class MonitoredDPOTrainer(DPOTrainer):
    def log_training_metrics(self, loss, algorithm_type):
        """
        Log training metrics for monitoring
        """
        metrics = {
            'loss': loss.item(),
        }

        if algorithm_type == 'dpo':
            metrics.update({
                'chosen_rewards_mean': self.chosen_rewards.mean().item(),
                'rejected_rewards_mean': self.rejected_rewards.mean().item(),
                'reward_gap': (self.chosen_rewards - self.rejected_rewards).mean().item()
            })

        self.logger.log(self.step, {f"monitor/{algorithm_type}/{k}": v for k, v in metrics.items()})

    def compute_loss(self, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                     reference_rejected_logps, **extra):
        loss, metrics = super().compute_loss(policy_chosen_logps, policy_rejected_logps,
                                             reference_chosen_logps, reference_rejected_logps, **extra)
        beta = self.loss_fn.beta
        self.chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps).detach()
        self.rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps).detach()
        self.last_loss = loss.detach()
        return loss, metrics

    def optimizer_step(self, indices):
        metrics = super().optimizer_step(indices)
        self.log_training_metrics(self.last_loss, "dpo")
        return metrics


if __name__ == "__main__":
    out = Path("runs/seed_log_training_metrics")
    config = {"model": {"name_or_path": "builtin:tiny"},
              "data": {"train": "builtin:sort_preferences", "train_size": 32, "eval_size": 8},
              "training": {"max_steps": 3, "batch_size": 8, "learning_rate": 2e-3, "output_dir": str(out)},
              "logging": {"tensorboard": False, "progress_bar": False}}
    MonitoredDPOTrainer(config=config).train()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    monitor = [r for r in rows if "monitor/dpo/reward_gap" in r]
    print(f"{len(monitor)} monitor records; last reward_gap {monitor[-1]['monitor/dpo/reward_gap']:.4f} "
          f"(trainer's own: {[r for r in rows if 'reward_gap' in r][-1]['reward_gap']:.4f})")
