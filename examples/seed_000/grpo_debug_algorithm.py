"""Seed 000, "Debugging Tips": the GRPO half of ``debug_algorithm(self, algorithm_type, **kwargs)``.

The seed's ``elif algorithm_type == 'grpo'`` branch, verbatim but for the import and one
guard (``# fix``: the average group size divided by zero when no group formed). It is called
from ``form_groups`` on the first rollout with the groups and sample embeddings; "diversity"
is the seed's ``torch.std(group_emb).mean()`` (the spread of all embedding entries of the
group). The DPO half of the seed's function is with the DPO seed examples.

    python examples/seed_000/grpo_debug_algorithm.py
"""

import tempfile

import torch
from _grpo_shared import alnum_share, tiny_grpo_config

from rlfoundry.algorithms.grpo import GRPOTrainer


class DebugGRPOTrainer(GRPOTrainer):
    def form_groups(self, batch_size, group_size=4, embeddings=None, **context):
        groups = super().form_groups(batch_size, group_size, embeddings=embeddings, **context)
        if self.step == 0:
            self.debug_algorithm("grpo", groups=groups, embeddings=embeddings)
        return groups

    def debug_algorithm(self, algorithm_type, **kwargs):
        """
        Debug algorithm-specific components
        """
        if algorithm_type == 'grpo':
            groups = kwargs.get('groups')
            embeddings = kwargs.get('embeddings')

            print(f"Number of groups: {len(groups)}")
            # fix: guard the division when no group formed
            print(f"Average group size: {sum(len(g) for g in groups) / max(len(groups), 1):.2f}")

            # Check group diversity
            for i, group in enumerate(groups):
                group_emb = embeddings[group]
                diversity = torch.std(group_emb).mean()
                print(f"Group {i} diversity: {diversity:.3f}")


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        config = tiny_grpo_config(out, group_strategy="dynamic",
                                  grouping={"similarity_threshold": 0.7, "max_group_size": 6})
        metrics = DebugGRPOTrainer(config=config, reward_fns=[alnum_share]).train()
    print(f"last step: group/num_groups={metrics['group/num_groups']:.0f}, "
          f"group/ungrouped_frac={metrics['group/ungrouped_frac']:.2f}")


if __name__ == "__main__":
    main()
