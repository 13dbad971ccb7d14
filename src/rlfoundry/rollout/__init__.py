"""Rollouts: sample completions for prompts behind a small backend interface."""

from rlfoundry.rollout.base import Rollout, RolloutBackend, SamplingParams
from rlfoundry.rollout.hf_sampler import HFSampler, filter_logits

__all__ = ["HFSampler", "Rollout", "RolloutBackend", "SamplingParams", "filter_logits"]
