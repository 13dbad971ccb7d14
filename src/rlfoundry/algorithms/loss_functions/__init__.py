"""Loss functions, chosen by name from config (``algorithm.loss.type``)."""

from rlfoundry.algorithms.loss_functions import objectives  # noqa: F401  (registers objectives)
from rlfoundry.algorithms.loss_functions.bradley_terry import BradleyTerryLossFn
from rlfoundry.algorithms.loss_functions.composite import ComposableLossFunction, CompositeLossFn
from rlfoundry.algorithms.loss_functions.dpo import DPO_LOSS_TYPES, DPOLossConfig, DPOLossFn
from rlfoundry.algorithms.loss_functions.dynamic_grpo import (
    DynamicGRPOLossConfig,
    DynamicGRPOLossFn,
)
from rlfoundry.algorithms.loss_functions.grpo import GRPO_LOSS_TYPES, GRPOLossConfig, GRPOLossFn
from rlfoundry.algorithms.loss_functions.kto import KTOLossFn
from rlfoundry.algorithms.loss_functions.multi_objective import (
    DynamicMultiObjectiveLossFn,
    MultiObjectiveDPOLossFn,
    MultiObjectiveGRPOLossFn,
)
from rlfoundry.algorithms.loss_functions.nll import NLLLossFn
from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry

__all__ = [
    "BradleyTerryLossFn",
    "ComposableLossFunction",
    "CompositeLossFn",
    "DynamicMultiObjectiveLossFn",
    "MultiObjectiveDPOLossFn",
    "MultiObjectiveGRPOLossFn",
    "DPO_LOSS_TYPES",
    "DPOLossConfig",
    "DPOLossFn",
    "DynamicGRPOLossConfig",
    "DynamicGRPOLossFn",
    "GRPO_LOSS_TYPES",
    "GRPOLossConfig",
    "GRPOLossFn",
    "KTOLossFn",
    "LossFunctionRegistry",
    "NLLLossFn",
]
