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


def attach_backend(trainer) -> None:
    """Give a GRPO ``trainer`` built without ``rollout_backend=`` the engine its
    ``config.rollout`` names (the trainer builds the HF one itself; the model must be loaded
    before an engine can be made from it). Anything but a default HF backend is kept."""
    if not hasattr(trainer, "rollout") or trainer.config.rollout.backend == "hf":
        return
    if isinstance(trainer.rollout, HFSampler):
        trainer.rollout = build_backend(trainer.config, trainer.model, trainer.tokenizer)
