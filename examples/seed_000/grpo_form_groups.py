"""Seed 000, "Group Formation Strategies": ``CustomGRPOTrainer.form_groups`` (random groups).

The class is the seed's, import changed (nemo_rl -> rlfoundry). The GRPO trainer calls
``form_groups(batch_size, group_size)`` on every rollout, before the advantages are computed,
so these random groups (across prompts) are the baselines the policy is trained against.
The same behaviour from YAML: ``algorithm.group_strategy: random``.

    python examples/seed_000/grpo_form_groups.py
"""

import tempfile

import torch
from _grpo_shared import alnum_share, show_groups, tiny_grpo_config

from rlfoundry.algorithms.grpo import GRPOTrainer


class CustomGRPOTrainer(GRPOTrainer):
    def form_groups(self, batch_size, group_size=4):
        """
        Custom group formation strategy
        """
        # Random group formation
        indices = torch.randperm(batch_size)
        groups = []

        for i in range(0, batch_size, group_size):
            group = indices[i:i + group_size]
            if len(group) == group_size:
                groups.append(group)

        return groups


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        trainer = CustomGRPOTrainer(config=tiny_grpo_config(out), reward_fns=[alnum_share])
        formed = []
        original = trainer.form_groups

        def recording(batch_size, group_size=4):
            formed.append(original(batch_size, group_size))
            return formed[-1]

        trainer.form_groups = recording
        metrics = trainer.train()
    prompt_of = [i // trainer.group_size for i in range(16)]  # samples are prompt-major
    for step, groups in enumerate(formed):
        print(f"step {step}: groups by prompt of each sample: {show_groups(groups, prompt_of)}")
    mixed = sum(len({prompt_of[int(i)] for i in g}) > 1 for g in formed[-1])
    print(f"{mixed} of {len(formed[-1])} groups mix prompts; num_groups={metrics['num_groups']:.0f}, "
          f"mean_group_size={metrics['mean_group_size']:.0f}, grad_norm={metrics['grad_norm']:.3g}")


if __name__ == "__main__":
    main()
