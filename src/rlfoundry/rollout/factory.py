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

