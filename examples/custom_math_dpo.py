"""Former plugin of examples/configs/custom_dpo.yaml, kept so ``plugins:`` lines that name it
still load. The names that config uses (algorithm ``custom_dpo``, loss
``custom_math_reasoning``) are now registered by rlfoundry itself
(:mod:`rlfoundry.algorithms.seed_algorithms`); this file only re-exports them.
"""

from rlfoundry.algorithms.seed_algorithms import CustomDPOTrainer, MathReasoningDPOLossFn

__all__ = ["CustomDPOTrainer", "MathReasoningDPOLossFn"]
