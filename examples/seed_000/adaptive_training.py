"""Seed 000, best practice 5 "Adaptive Training": adaptive_training.

The seed's rules are built in as config-driven controllers, applied once per optimizer step
from that step's metrics, checkpointed, and logged (``beta``, ``lr``):

    algorithm:
      beta_schedule: {type: reward_gap, low_gap: 0.1, high_gap: 0.5}   # the DPO branch
    training:
      lr_controller: {type: performance, metric: reward_mean, low: 0.5, high: 0.8}  # GRPO branch

This script runs the seed's function by hand after each step of a DPO run (minimal fix:
``self.beta`` is the loss's beta, exposed as a property) and then the built-in controller on
the same run, and prints both beta trajectories: they agree.
"""

import json
from pathlib import Path

from rlfoundry.algorithms.dpo import DPOTrainer


class AdaptiveDPOTrainer(DPOTrainer):
    @property
    def beta(self):
        return self.loss_fn.reference_policy_kl_penalty

    @beta.setter
    def beta(self, value):
        self.loss_fn.reference_policy_kl_penalty = value

    def adaptive_training(self, performance_metrics, algorithm_type):
        """
        Adapt training based on performance
        """
        if algorithm_type == 'dpo':
            reward_gap = performance_metrics.get('reward_gap', 0)
            if reward_gap < 0.1:
                # Poor reward separation: increase beta
                self.beta *= 1.1
            elif reward_gap > 0.5:
                # Good reward separation: decrease beta
                self.beta *= 0.9

        elif algorithm_type == 'grpo':
            group_performance = performance_metrics.get('group_performance', 0)
            if group_performance < 0.5:
                # Poor performance: increase learning rate
                self.optimizer.param_groups[0]['lr'] *= 1.1
            elif group_performance > 0.8:
                # Good performance: decrease learning rate
                self.optimizer.param_groups[0]['lr'] *= 0.9

    def optimizer_step(self, indices):
        metrics = super().optimizer_step(indices)
        self.betas.append(self.beta)
        self.adaptive_training(metrics, "dpo")
        return metrics


def config(out, **algorithm):
    return {"model": {"name_or_path": "builtin:tiny"}, "algorithm": algorithm,
            "data": {"train": "builtin:sort_preferences", "train_size": 64, "eval_size": 8},
            "training": {"max_steps": 8, "batch_size": 8, "learning_rate": 3e-3, "output_dir": out},
            "logging": {"tensorboard": False, "progress_bar": False}}


if __name__ == "__main__":
    by_hand = AdaptiveDPOTrainer(config=config("runs/seed_adaptive_by_hand"))
    by_hand.betas = []
    by_hand.train()
    out = Path("runs/seed_adaptive_builtin")
    DPOTrainer(config=config(str(out), beta_schedule={"type": "reward_gap"})).train()
    builtin = [json.loads(line)["beta"] for line in (out / "metrics.jsonl").read_text().splitlines()
               if '"beta"' in line]
    print("seed rule beta:", [round(b, 4) for b in by_hand.betas])
    print("built-in beta: ", [round(b, 4) for b in builtin])
