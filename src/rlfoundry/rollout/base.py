"""The rollout interface: prompts in, sampled completions (with their log-probs) out.

The trainer only talks to a ``RolloutBackend``; the built-in one samples with the policy
itself (``HFSampler``). An external inference engine plugs in by implementing ``generate``
(and ``sync_weights`` to receive updated policy weights after each optimizer step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    max_new_tokens: int = 64
    stop_strings: list[str] = field(default_factory=list)


@dataclass
class Rollout:
    """``num_samples`` completions per prompt, flattened prompt-major (prompt i -> rows i*G..)."""

    prompt_index: list[int]  # which input prompt each sample continues
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # includes the EOS token when one was sampled
    sampling_logprobs: list[list[float]]  # log-prob of each sampled token under the sampler
    truncated: list[bool]  # hit max_new_tokens without EOS or a stop string
    seconds: float = 0.0

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)


def concat_rollouts(parts: list[Rollout]) -> Rollout:
    """Rollouts of consecutive prompt sets as one (``prompt_index`` must already be global;
    ``seconds`` is the longest part's, as the parts ran side by side on different ranks)."""
    return Rollout(
        prompt_index=[i for p in parts for i in p.prompt_index],
        prompt_ids=[x for p in parts for x in p.prompt_ids],
        completion_ids=[x for p in parts for x in p.completion_ids],
        sampling_logprobs=[x for p in parts for x in p.sampling_logprobs],
        truncated=[x for p in parts for x in p.truncated],
        seconds=max(p.seconds for p in parts),
    )


@runtime_checkable
class RolloutBackend(Protocol):
    """``generator`` is one ``torch.Generator`` for the whole call, or a list with one per
    prompt (then a prompt's samples depend only on its own generator, not on which other
    prompts share the call: how ``sampling.seed_per_prompt`` makes ranks agree)."""

    def generate(self, prompts: list[list[int]], num_samples: int, params: SamplingParams,
                 generator: torch.Generator | list[torch.Generator]) -> Rollout: ...

    def sync_weights(self, model: torch.nn.Module) -> None: ...
