"""Seed 000, "Adaptive Group Formation": ``adaptive_grouping(self, step, total_steps, embeddings,
rewards)``.

The seed's method, import changed. It calls helpers the seed never defines; here they are
the library's registered strategies (``random_grouping``, ``performance_grouping`` and
``semantic_grouping`` below build a ``GroupingContext`` and call ``random``, ``performance``
and ``semantic``). The trainer passes ``step`` (optimizer steps done), ``total_steps``,
``rewards`` and, because the override names it, ``embeddings``.

The same schedule from YAML, without code (the seed's thresholds are the defaults)::

    algorithm:
      group_strategy: adaptive
      grouping:
        stages: [{until: 0.3, strategy: random}, {until: 0.7, strategy: performance},
                 {until: 1.0, strategy: semantic}]

    python examples/seed_000/grpo_adaptive_grouping.py
"""

import tempfile

import torch
from _grpo_shared import alnum_share, tiny_grpo_config

from rlfoundry.algorithms.grouping import (
    GROUPINGS,
    GroupingContext,
    adaptive_strategy,
    default_options,
)
from rlfoundry.algorithms.grpo import GRPOTrainer


class AdaptiveGRPOTrainer(GRPOTrainer):
    def form_groups(self, batch_size, group_size=4, step=0, total_steps=1, embeddings=None,
                    rewards=None):
        self._ctx = GroupingContext(num_samples=batch_size, group_size=group_size,
                                    prompt_index=torch.arange(batch_size) // group_size,
                                    rewards=rewards, embeddings=embeddings)
        self.used = []
        groups = self.adaptive_grouping(step, total_steps, embeddings, rewards)
        print(f"step {step} (progress {step / total_steps:.2f}): {self.used[0]} -> "
              f"{len(groups)} groups of sizes {[len(g) for g in groups]}")
        return groups

    def adaptive_grouping(self, step, total_steps, embeddings, rewards):
        """
        Adaptive group formation strategy
        """
        progress = step / total_steps

        if progress < 0.3:
            # Early training: random grouping
            return self.random_grouping(len(embeddings))
        elif progress < 0.7:
            # Mid training: performance-based grouping
            return self.performance_grouping(rewards)
        else:
            # Late training: semantic grouping
            return self.semantic_grouping(embeddings)

    # The helpers the seed leaves undefined: the library's registered strategies.
    def random_grouping(self, batch_size):
        return self._strategy("random")

    def performance_grouping(self, rewards):
        return self._strategy("performance")

    def semantic_grouping(self, embeddings):
        return self._strategy("semantic")

    def _strategy(self, name):
        self.used.append(name)
        return GROUPINGS.get(name)(self._ctx)


def main() -> None:
    steps = 5
    with tempfile.TemporaryDirectory() as out:
        trainer = AdaptiveGRPOTrainer(config=tiny_grpo_config(out, max_steps=steps),
                                      reward_fns=[alnum_share])
        metrics = trainer.train()
    stages = default_options()["stages"]
    library = [adaptive_strategy(stages, s / steps) for s in range(steps)]
    print(f"group_strategy: adaptive would use: {' -> '.join(library)}")
    print(f"last step: num_groups={metrics['num_groups']:.0f}, grad_norm={metrics['grad_norm']:.3g}")


if __name__ == "__main__":
    main()
