"""Rollouts: sample completions for prompts behind a small backend interface."""

from rlfoundry.rollout.base import Rollout, RolloutBackend, SamplingParams, concat_rollouts
from rlfoundry.rollout.hf_sampler import HFSampler, filter_logits

__all__ = ["HFSampler", "Rollout", "RolloutBackend", "SamplingParams", "concat_rollouts",
           "filter_logits"]
