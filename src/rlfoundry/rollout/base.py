"""The rollout interface: prompts in, sampled completions (with their log-probs) out.

The trainer only talks to a ``RolloutBackend``; the built-in one samples with the policy
itself (``HFSampler``). An external inference engine plugs in by implementing ``generate``
(and ``sync_weights`` to receive updated policy weights after each optimizer step).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    max_new_tokens: int = 64
    stop_strings: list[str] = field(default_factory=list)


@dataclass
class EpisodeStats:
    """How one multi-turn episode went (plain data, so it crosses ranks and processes).

    ``outcome``: ``done`` (the environment ended it), ``max_turns``, ``token_budget`` or
    ``error`` (a step, or ``final_reward``, raised, timed out or returned garbage: ``error``
    says which and how). ``env_reward``: the environment's final reward (None: it gave none;
    NaN: dropped under ``reward_error: skip``). ``metrics``: the episode's ``EnvStep.metrics``
    summed over its turns. ``final_text``: the last model turn (what reward functions score);
    ``messages``: the whole conversation, the model's turns included."""

    turns: int
    outcome: str
    env_reward: float | None = None
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    final_text: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    error_reason: str | None = None  # exception, timeout or bad_return (with error)


@dataclass
class Rollout:
    """``num_samples`` completions per prompt, flattened prompt-major (prompt i -> rows i*G..).

    A multi-turn episode is one sample: ``completion_ids`` are every token after the first
    prompt (model turns and environment answers in order), ``model_mask`` marks which of them
    the model sampled (1) and which the environment wrote (0), ``sampling_logprobs`` is
    aligned with ``completion_ids`` (0.0 at environment tokens) and ``episodes`` says how each
    episode went. Single-turn rollouts leave both None (every completion token is the model's)."""

    prompt_index: list[int]  # which input prompt each sample continues
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # includes the EOS token when one was sampled
    sampling_logprobs: list[list[float]]  # log-prob of each sampled token under the sampler
    truncated: list[bool]  # hit max_new_tokens without EOS or a stop string
    seconds: float = 0.0
    model_mask: list[list[int]] | None = None
    episodes: list[EpisodeStats] | None = None

    @property
    def num_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)

    def token_mask(self, i: int) -> list[int]:
        """Sample ``i``'s per-completion-token model mask (all ones for a single turn)."""
        if self.model_mask is None:
            return [1] * len(self.completion_ids[i])
        return self.model_mask[i]


def _joined(parts: list[Rollout], name: str, fill) -> list | None:
    """Field ``name`` of every part joined, None when no part has it (``fill(part)`` stands
    in for a part without it)."""
    if all(getattr(p, name) is None for p in parts):
        return None
    return [x for p in parts for x in (getattr(p, name) if getattr(p, name) is not None else fill(p))]


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
        model_mask=_joined(parts, "model_mask", lambda p: [p.token_mask(i) for i in range(len(p.completion_ids))]),
        episodes=_joined(parts, "episodes", lambda p: [EpisodeStats(1, "single_turn")] * len(p.completion_ids)),
    )


@runtime_checkable
class RolloutBackend(Protocol):
    """``generator`` is one ``torch.Generator`` for the whole call, or a list with one per
    prompt (then a prompt's samples depend only on its own generator, not on which other
    prompts share the call: how ``sampling.seed_per_prompt`` makes ranks agree)."""

    def generate(self, prompts: list[list[int]], num_samples: int, params: SamplingParams,
                 generator: torch.Generator | list[torch.Generator]) -> Rollout: ...

    def sync_weights(self, model: torch.nn.Module) -> None: ...
