"""Seed 000, "Performance-Based Grouping": ``performance_grouping(self, rewards, batch_size,
group_size)``.

The seed's method, verbatim but for the import; it works as written. A ``form_groups``
override that names ``rewards`` receives the rollout's total rewards. Sorting by reward puts
near-equal rewards together, so within-group reward variance (what GRPO learns from) is
small: the script prints it next to the default per-prompt groups. The library's
``performance`` strategy (``algorithm.group_strategy: performance``) forms the same groups.

    python examples/seed_000/grpo_performance_grouping.py
"""

import tempfile

import torch
from _grpo_shared import alnum_share, show_groups, tiny_grpo_config

from rlfoundry.algorithms.grouping import GROUPINGS, GroupingContext, group_quality_metrics
from rlfoundry.algorithms.grpo import GRPOTrainer


class PerformanceGRPOTrainer(GRPOTrainer):
    def form_groups(self, batch_size, group_size=4, rewards=None):
        self.last_rewards = rewards
        self.last_groups = self.performance_grouping(rewards, batch_size, group_size)
        return self.last_groups

    def performance_grouping(self, rewards, batch_size, group_size=4):
        """
        Group samples by performance levels
        """
        # Sort by reward values
        sorted_indices = torch.argsort(rewards, descending=True)

        groups = []
        for i in range(0, batch_size, group_size):
            group = sorted_indices[i:i + group_size]
            if len(group) == group_size:
                groups.append(group)

        return groups


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        trainer = PerformanceGRPOTrainer(config=tiny_grpo_config(out), reward_fns=[alnum_share])
        trainer.train()
    rewards = trainer.last_rewards
    labels = [f"{r:.2f}" for r in rewards.tolist()]
    print(f"performance groups (reward of each sample): {show_groups(trainer.last_groups, labels)}")
    ctx = GroupingContext(num_samples=16, group_size=4, prompt_index=torch.arange(16) // 4,
                          rewards=rewards)
    library = GROUPINGS.get("performance")(ctx)
    def reward_sets(groups):  # ties may be ordered differently; the rewards per group may not
        return [sorted(rewards[g].tolist()) for g in groups]

    same = reward_sets(library) == reward_sets(trainer.last_groups)
    print(f"library 'performance' strategy forms the same groups: {same}")
    for name, groups in (("performance", trainer.last_groups), ("by_prompt", GROUPINGS.get("by_prompt")(ctx))):
        m = group_quality_metrics(groups, 16, rewards)
        print(f"{name}: within-group reward std {float(m['group/reward_std_within']):.3f}, "
              f"zero-variance groups {float(m['group/zero_variance_frac']):.2f}")


if __name__ == "__main__":
    main()
