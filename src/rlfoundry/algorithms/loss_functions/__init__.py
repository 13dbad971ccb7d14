"""Loss functions, chosen by name from config (``algorithm.loss.type``)."""

from rlfoundry.algorithms.loss_functions.dpo import DPO_LOSS_TYPES, DPOLossConfig, DPOLossFn
from rlfoundry.algorithms.loss_functions.grpo import GRPO_LOSS_TYPES, GRPOLossConfig, GRPOLossFn
from rlfoundry.algorithms.loss_functions.nll import NLLLossFn
from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry

__all__ = [
    "DPO_LOSS_TYPES",
    "DPOLossConfig",
    "DPOLossFn",
    "GRPO_LOSS_TYPES",
    "GRPOLossConfig",
    "GRPOLossFn",
    "LossFunctionRegistry",
    "NLLLossFn",
]
