"""Multi-turn environments for GRPO: the contract (``base``) and its registry."""

from rlfoundry.environments.base import (
    ENVIRONMENTS,
    Environment,
    EnvStep,
    EpisodeStart,
    Message,
    register_environment,
)

__all__ = ["ENVIRONMENTS", "EnvStep", "Environment", "EpisodeStart", "Message", "register_environment"]
