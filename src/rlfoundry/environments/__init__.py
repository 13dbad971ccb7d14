"""Multi-turn environments for GRPO: the contract (``base``), its registry, and the episode
runner (``episodes``) that plays them with a rollout backend."""

from rlfoundry.environments.base import (
    ENVIRONMENTS,
    Environment,
    EnvStep,
    EpisodeStart,
    Message,
    register_environment,
)
from rlfoundry.environments.episodes import EpisodeRunner, EpisodeSettings

__all__ = ["ENVIRONMENTS", "EnvStep", "Environment", "EpisodeRunner", "EpisodeSettings",
           "EpisodeStart", "Message", "register_environment"]
