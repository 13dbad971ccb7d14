"""Typed, validated run configuration (YAML + dotted overrides)."""

from rlfoundry.config.loader import apply_overrides, load_config, read_yaml
from rlfoundry.config.schema import (
    AlgorithmConfig,
    DataConfig,
    LoggingConfig,
    ModelConfig,
    ReferenceConfig,
    RunConfig,
    TrainingConfig,
)

__all__ = [
    "AlgorithmConfig", "DataConfig", "LoggingConfig", "ModelConfig", "ReferenceConfig",
    "RunConfig", "TrainingConfig", "apply_overrides", "load_config", "read_yaml",
]
