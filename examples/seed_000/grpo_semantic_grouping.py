"""Seed 000, "Semantic Grouping": ``semantic_grouping(self, embeddings, batch_size, group_size)``.

The seed's method, import changed, with two minimal fixes (marked ``# fix``):

1. it ranked raw dot products, so a sample with a large embedding norm was "most similar" to
   everything; the embeddings are L2-normalised first (cosine similarity);
2. it took the top ``group_size`` indices and only then dropped the used ones, so a group
   came out short, was skipped, and its sample never got a group; used samples are now
   masked out before ranking, and the sample itself leads its group.

A ``form_groups`` override that names an ``embeddings`` parameter gets the rollout's sample
embeddings from the trainer (mean-pooled policy hidden states of each completion). The
library's ``semantic`` strategy (``algorithm.group_strategy: semantic``) is this algorithm;
the script checks that both form the same groups.

    python examples/seed_000/grpo_semantic_grouping.py
"""

import tempfile

import torch
import torch.nn.functional as F
from _grpo_shared import alnum_share, show_groups, tiny_grpo_config

from rlfoundry.algorithms.grouping import GROUPINGS, GroupingContext
from rlfoundry.algorithms.grpo import GRPOTrainer


class SemanticGRPOTrainer(GRPOTrainer):
    def form_groups(self, batch_size, group_size=4, embeddings=None):
        self.last_embeddings = embeddings
        self.last_groups = self.semantic_grouping(embeddings, batch_size, group_size)
        return self.last_groups

    def semantic_grouping(self, embeddings, batch_size, group_size=4):
        """
        Group samples by semantic similarity
        """
        embeddings = F.normalize(embeddings, dim=-1)  # fix 1: cosine, not raw dot products
        # Compute pairwise similarities
        similarities = torch.mm(embeddings, embeddings.t())

        # Form groups based on similarity
        groups = []
        used_indices = set()

        for i in range(batch_size):
            if i in used_indices:
                continue

            # Find most similar samples
            sim_scores = similarities[i].clone()
            sim_scores[list(used_indices)] = float("-inf")  # fix 2: rank unused samples only
            sim_scores[i] = float("inf")  # fix 2: the sample leads its own group
            similar_indices = torch.argsort(sim_scores, descending=True)[:group_size]

            # Filter unused indices
            group = [idx.item() for idx in similar_indices if idx.item() not in used_indices]

            if len(group) == group_size:
                groups.append(torch.tensor(group))
                used_indices.update(group)

        return groups


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        trainer = SemanticGRPOTrainer(config=tiny_grpo_config(out), reward_fns=[alnum_share])
        metrics = trainer.train()
    prompt_of = [i // trainer.group_size for i in range(16)]
    print(f"semantic groups (prompt of each sample): {show_groups(trainer.last_groups, prompt_of)}")
    ctx = GroupingContext(num_samples=16, group_size=4, prompt_index=torch.tensor(prompt_of),
                          rewards=torch.zeros(16), embeddings=trainer.last_embeddings,
                          options={"similarity_threshold": None, "min_group_size": 4})
    library = GROUPINGS.get("semantic")(ctx)
    same = [g.tolist() for g in library] == [g.tolist() for g in trainer.last_groups]
    print(f"library 'semantic' strategy forms the same groups: {same}")
    print(f"grouped {sum(len(g) for g in trainer.last_groups)} of 16 samples; "
          f"cohesion={metrics['group/cohesion']:.3f}, grad_norm={metrics['grad_norm']:.3g}")


if __name__ == "__main__":
    main()
