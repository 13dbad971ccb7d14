"""Seed 000, "Adaptive Beta Scheduling": adaptive_beta_schedule.

The seed's function is the built-in ``linear`` beta schedule; in a config it is
``algorithm.beta_schedule: {type: linear, initial_beta: 0.2, final_beta: 0.05}``. This script
prints the seed function next to the built-in and then trains with the built-in, whose beta
is logged every step.
"""

import json
from pathlib import Path

from rlfoundry.algorithms.dpo import DPOTrainer
from rlfoundry.training.schedules import build_schedule


def adaptive_beta_schedule(self, step, total_steps):
    """
    Adaptive beta scheduling for DPO
    """
    # Start with high beta, decrease over time
    initial_beta = 0.2
    final_beta = 0.05

    progress = step / total_steps
    beta = initial_beta + (final_beta - initial_beta) * progress

    return beta


if __name__ == "__main__":
    builtin = build_schedule({"type": "linear", "initial_beta": 0.2, "final_beta": 0.05}, "beta", 0.1, "demo")
    for step in (0, 5, 10):
        print(f"step {step}: seed {adaptive_beta_schedule(None, step, 10):.4f} "
              f"built-in {builtin.value(step, 10):.4f}")
    out = Path("runs/seed_adaptive_beta")
    config = {"model": {"name_or_path": "builtin:tiny"},
              "data": {"train": "builtin:sort_preferences", "train_size": 32, "eval_size": 8},
              "algorithm": {"beta_schedule": {"type": "linear", "initial_beta": 0.2, "final_beta": 0.05}},
              "training": {"max_steps": 4, "batch_size": 8, "output_dir": str(out)},
              "logging": {"tensorboard": False, "progress_bar": False}}
    DPOTrainer(config=config).train()
    betas = [json.loads(line)["beta"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"beta"' in line]
    print("logged beta per step:", [round(b, 4) for b in betas])
