"""Seed 000, "Group Quality Monitoring (GRPO)": ``monitor_group_quality(self, groups, embeddings)``.

The seed's method, verbatim but for the import. It is called from ``form_groups`` on every
rollout to compare the quality (``1 / (1 + mean distance to the group centroid)``) of the
groups the trainer forms (``semantic``) with random groups of the same samples. The trainer
logs the same number as ``group/cohesion``, computed on unit-normalised embeddings (so that
it does not depend on the embedding scale); the script checks that they agree. The other
``group/*`` metrics (sizes, ungrouped share, within-group reward spread) are logged for
every strategy.

    python examples/seed_000/grpo_monitor_group_quality.py
"""

import tempfile

import torch
import torch.nn.functional as F
from _grpo_shared import alnum_share, tiny_grpo_config

from rlfoundry.algorithms.grpo import GRPOTrainer


class MonitoredGRPOTrainer(GRPOTrainer):
    def form_groups(self, batch_size, group_size=4, embeddings=None, **context):
        groups = super().form_groups(batch_size, group_size, embeddings=embeddings, **context)
        unit = F.normalize(embeddings, dim=-1)
        shuffled = torch.randperm(batch_size, generator=torch.Generator().manual_seed(0))
        random_groups = list(shuffled.split(group_size))
        self.quality = {"formed": self.monitor_group_quality(groups, unit),
                        "random": self.monitor_group_quality(random_groups, unit),
                        "formed (raw embeddings)": self.monitor_group_quality(groups, embeddings)}
        print("group quality: " + ", ".join(f"{k} {float(v):.3f}" for k, v in self.quality.items()))
        return groups

    def monitor_group_quality(self, groups, embeddings):
        """
        Monitor the quality of formed groups
        """
        group_qualities = []

        for group in groups:
            group_embeddings = embeddings[group]
            centroid = group_embeddings.mean(dim=0)

            # Compute average distance to centroid
            distances = torch.norm(group_embeddings - centroid, dim=1)
            quality = 1.0 / (1.0 + distances.mean())
            group_qualities.append(quality)

        return torch.tensor(group_qualities).mean()


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        trainer = MonitoredGRPOTrainer(config=tiny_grpo_config(out, group_strategy="semantic"),
                                       reward_fns=[alnum_share])
        metrics = trainer.train()
    agree = abs(metrics["group/cohesion"] - float(trainer.quality["formed"])) < 1e-5
    print(f"logged group/cohesion {metrics['group/cohesion']:.3f} agrees with the seed formula on "
          f"unit embeddings: {agree}")
    print(", ".join(f"{k}={metrics[k]:.3g}" for k in sorted(metrics) if k.startswith("group/")))


if __name__ == "__main__":
    main()
