"""Plugin for examples/configs/custom_grpo.yaml: registers the algorithm name ``custom_grpo``.

The seed's CustomGRPOTrainer overrides ``form_groups`` with random groups; this registered
version keeps the config's ``group_strategy`` (semantic) so the YAML means what it says.
"""

from rlfoundry.algorithms.grpo import GRPOTrainer
from rlfoundry.algorithms.trainer_registry import TRAINERS


@TRAINERS.register("custom_grpo")
class CustomGRPOTrainer(GRPOTrainer):
    """The seed's CustomGRPOTrainer: GRPO with the configured grouping strategy."""
