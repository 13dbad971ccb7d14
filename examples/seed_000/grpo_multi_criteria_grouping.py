"""Seed 000, "Multi-Objective Grouping": ``multi_criteria_grouping(self, embeddings, rewards,
diversity_scores)``.

The seed's method, import changed, with minimal fixes (marked ``# fix``): it used ``F``
without importing it; it divided by ``std()``, which is 0 (NaN groups) whenever a criterion
is constant, so the z-scores now go through the library's ``zscore`` (0 for a constant
criterion); and ``form_groups_from_similarity``, which the seed never defines, is the
library's greedy grouping (each sample in turn takes the ``group_size`` unused samples of
highest affinity).

The combined score is kept as the seed wrote it: + cosine similarity, + |reward difference|,
+ |diversity difference|. So groups gather semantically similar samples with *different*
rewards, which is what GRPO can learn from (the library's ``multi_criteria`` docstring argues
this; negative weights reverse a criterion). Diversity here is each sample's embedding
novelty (1 - mean cosine similarity to the others). The library's ``multi_criteria``
strategy (``algorithm.group_strategy: multi_criteria``, weights in
``algorithm.grouping.weights``) forms the same groups.

    python examples/seed_000/grpo_multi_criteria_grouping.py
"""

import tempfile

import torch
import torch.nn.functional as F  # fix: the seed uses F without importing it
from _grpo_shared import alnum_share, show_groups, tiny_grpo_config

from rlfoundry.algorithms.grouping import (
    GROUPINGS,
    GroupingContext,
    embedding_novelty,
    greedy_similarity_groups,
    group_quality_metrics,
    zscore,
)
from rlfoundry.algorithms.grpo import GRPOTrainer


class MultiCriteriaGRPOTrainer(GRPOTrainer):
    def form_groups(self, batch_size, group_size=4, embeddings=None, rewards=None):
        self.last = dict(embeddings=embeddings, rewards=rewards, group_size=group_size)
        self.last_groups = self.multi_criteria_grouping(embeddings, rewards,
                                                        embedding_novelty(embeddings))
        return self.last_groups

    def multi_criteria_grouping(self, embeddings, rewards, diversity_scores):
        """
        Group formation using multiple criteria
        """
        # Normalize different metrics
        norm_embeddings = F.normalize(embeddings.double(), dim=1)  # float64, as the library
        norm_rewards = zscore(rewards)  # fix: (x - mean) / std with std = 0 guarded
        norm_diversity = zscore(diversity_scores)  # fix: as above

        # Combined similarity score
        combined_scores = (
            0.4 * torch.mm(norm_embeddings, norm_embeddings.t()) +
            0.3 * torch.abs(norm_rewards.unsqueeze(1) - norm_rewards.unsqueeze(0)) +
            0.3 * torch.abs(norm_diversity.unsqueeze(1) - norm_diversity.unsqueeze(0))
        )

        return self.form_groups_from_similarity(combined_scores)

    def form_groups_from_similarity(self, similarity):
        # fix: undefined in the seed; the library's greedy grouping, groups of group_size
        return greedy_similarity_groups(similarity, self.last["group_size"])


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        trainer = MultiCriteriaGRPOTrainer(config=tiny_grpo_config(out), reward_fns=[alnum_share])
        metrics = trainer.train()
    last = trainer.last
    labels = [f"{r:.2f}" for r in last["rewards"].tolist()]
    print(f"multi-criteria groups (reward of each sample): {show_groups(trainer.last_groups, labels)}")
    ctx = GroupingContext(num_samples=16, group_size=4, prompt_index=torch.arange(16) // 4,
                          rewards=last["rewards"], embeddings=last["embeddings"])
    library = GROUPINGS.get("multi_criteria")(ctx)
    same = [g.tolist() for g in library] == [g.tolist() for g in trainer.last_groups]
    print(f"library 'multi_criteria' strategy forms the same groups: {same}")
    quality = group_quality_metrics(trainer.last_groups, 16, last["rewards"], last["embeddings"])
    print(f"within-group reward std {float(quality['group/reward_std_within']):.3f}, cohesion "
          f"{float(quality['group/cohesion']):.3f}, grad_norm={metrics['grad_norm']:.3g}")


if __name__ == "__main__":
    main()
