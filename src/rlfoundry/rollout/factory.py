"""Build the rollout backend a run's ``rollout`` section names."""

from __future__ import annotations

from rlfoundry.rollout.base import RolloutBackend
from rlfoundry.rollout.hf_sampler import HFSampler


def build_backend(config, model, tokenizer) -> RolloutBackend:
    """The generation engine of a GRPO run (``config.rollout``: backend, mode)."""
    rollout = config.rollout
    if rollout.backend == "hf":
        return HFSampler(model, tokenizer)
    if rollout.mode == "server":
        from rlfoundry.rollout.vllm_server import VLLMServerClient

        return VLLMServerClient(model, tokenizer, rollout)
    from rlfoundry.rollout.vllm_engine import VLLMColocated

    return VLLMColocated(model, tokenizer, rollout)


def attach_backend(trainer) -> None:
    """Give a GRPO ``trainer`` built without ``rollout_backend=`` the engine its
    ``config.rollout`` names (the trainer builds the HF one itself; the model must be loaded
    before an engine can be made from it). Anything but a default HF backend is kept."""
    if not hasattr(trainer, "rollout") or trainer.config.rollout.backend == "hf":
        return
    if isinstance(trainer.rollout, HFSampler):
        trainer.rollout = build_backend(trainer.config, trainer.model, trainer.tokenizer)
