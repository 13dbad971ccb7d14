"""Build the rollout backend a run's ``rollout.backend`` names."""

from __future__ import annotations

from rlfoundry.rollout.base import RolloutBackend
from rlfoundry.rollout.hf_sampler import HFSampler


def build_backend(config, model, tokenizer) -> RolloutBackend:
    """The generation engine of a GRPO run (``config.rollout.backend``)."""
    backend = config.rollout.backend
    if backend == "hf":
        return HFSampler(model, tokenizer)
    raise NotImplementedError(f"rollout.backend '{backend}'")
