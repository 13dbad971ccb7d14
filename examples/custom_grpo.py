"""Former plugin of examples/configs/custom_grpo.yaml, kept so ``plugins:`` lines that name it
still load. ``custom_grpo`` (GRPO with the configured ``group_strategy``) is now registered
by rlfoundry itself (:mod:`rlfoundry.algorithms.seed_algorithms`); this file re-exports it.
"""

from rlfoundry.algorithms.seed_algorithms import CustomGRPOTrainer

__all__ = ["CustomGRPOTrainer"]
