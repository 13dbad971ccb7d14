"""Loss functions, chosen by name from config (``algorithm.loss.type``)."""

from rlfoundry.algorithms.loss_functions.dpo import DPO_LOSS_TYPES, DPOLossConfig, DPOLossFn
from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry

__all__ = ["DPO_LOSS_TYPES", "DPOLossConfig", "DPOLossFn", "LossFunctionRegistry"]
