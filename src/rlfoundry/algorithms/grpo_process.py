"""Process rewards in a GRPO run (``algorithm.advantage.estimator: process``).

A step-reward function (``algorithm.advantage.process.source``: a registered reward name or
``"module:function"``) is called like a reward function, ``fn(prompts, completions,
**columns)``, and returns for every sample a list of step rewards. The grouping stage maps
each sample's completion tokens onto its steps (``steps: delimiter`` on the decoded text of
each token, or ``steps: equal`` spans) and turns the step rewards into per-token advantages
with :func:`~rlfoundry.algorithms.process_rewards.process_advantages`. The buffer stores them
``[N, T - 1]``, aligned with the labels like the sampling log-probs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from rlfoundry.algorithms.process_rewards import (
    process_advantages,
    token_steps_equal,
    token_steps_from_text,
)
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.rewards import resolve_reward
from rlfoundry.rollout.scoring import ScoredRollout

PROCESS = "process"
PER_SEQUENCE_LOSSES = ("gspo",)  # losses that need advantages [B]


def check_process_config(cfg: Any, loss_types: Sequence[str]) -> None:
    """Reject, at config load, a process setup that cannot run: ``cfg`` is
    ``algorithm.advantage``, ``loss_types`` the loss type of each loss component."""
    if cfg.estimator != PROCESS:
        if cfg.process is not None:
            raise ConfigError("algorithm.advantage.process is set but algorithm.advantage."
                              f"estimator is '{cfg.estimator}'; set estimator: process or "
                              "remove the process section")
        return
    if cfg.process is None:
        raise ConfigError("algorithm.advantage.estimator: process needs algorithm.advantage."
                          "process.source, the step-reward function (see docs/objectives.md)")
    if cfg.whiten:
        raise ConfigError("algorithm.advantage.whiten: not supported with estimator: process "
                          "(step rewards are already normalised per group); set it to false")
    bad = [t for t in loss_types if t in PER_SEQUENCE_LOSSES]
    if bad:
        raise ConfigError(f"algorithm.loss.loss_type: '{bad[0]}' needs one advantage per "
                          "sequence, but algorithm.advantage.estimator: process gives one per "
                          "token; use gspo_token, grpo, dapo, bnpo or dr_grpo")
    step_reward_function(cfg.process)


def step_reward_function(cfg: Any) -> Callable[..., Any]:
    """The configured step-reward function (``algorithm.advantage.process``)."""
    try:
        return resolve_reward(cfg.source, cfg.args, in_process=True)
    except ConfigError as e:
        raise ConfigError(f"algorithm.advantage.process.source: {e}") from None


def step_rewards(fn: Callable[..., Any], scored: ScoredRollout) -> list[list[float]]:
    """Each sample's list of step rewards from ``fn``; a wrong shape or value is a
    ``DataError`` naming the sample."""
    raw = fn(scored.prompts, scored.responses, **scored.columns)
    if not isinstance(raw, Sequence) or len(raw) != len(scored):
        got = len(raw) if isinstance(raw, Sequence) else type(raw).__name__
        raise DataError(f"algorithm.advantage.process.source returned {got} items for "
                        f"{len(scored)} samples; return one list of step rewards per sample")
    out = []
    for i, rewards in enumerate(raw):
        where = f"sample {i} of the round (prompt {scored.rollout.prompt_index[i]})"
        if isinstance(rewards, (str, bytes)) or not isinstance(rewards, Sequence) or not rewards:
            raise DataError(f"algorithm.advantage.process.source: {where} got {rewards!r}; "
                            "return a non-empty list of step rewards")
        try:
            values = [float(r) for r in rewards]
        except (TypeError, ValueError):
            raise DataError(f"algorithm.advantage.process.source: {where} has a step reward "
                            f"that is not a number: {list(rewards)!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise DataError(f"algorithm.advantage.process.source: {where} has a non-finite "
                            f"step reward: {values}")
        out.append(values)
    return out


def token_steps(cfg: Any, completion_ids: Sequence[Sequence[int]], rewards: list[list[float]],
                tokenizer: Any) -> list[list[int]]:
    """Each completion token's step index, as ``cfg.steps`` says."""
    if cfg.steps == "equal":
        return [token_steps_equal(len(ids), len(r)) for ids, r in zip(completion_ids, rewards)]
    return [text_steps(tokenizer.batch_decode([[int(t)] for t in ids], skip_special_tokens=True),
                       cfg.delimiter) for ids in completion_ids]


def text_steps(pieces: list[str], delimiter: str) -> list[int]:
    """:func:`token_steps_from_text`, except that a completion ending in a delimiter (plus
    whitespace or an EOS token, which decodes to nothing) has no empty last step: those
    trailing tokens belong to the step the delimiter ends."""
    steps = token_steps_from_text(pieces, delimiter)
    text = "".join(pieces)
    last = max(steps, default=0)
    if last > 0 and not text[text.rfind(delimiter) + len(delimiter):].strip():
        steps = [min(s, last - 1) for s in steps]
    return steps


def round_token_advantages(cfg: Any, fn: Callable[..., Any], scored: ScoredRollout,
                           groups: Sequence[torch.Tensor], tokenizer: Any,
                           clip: float | None = None) -> list[torch.Tensor]:
    """Per-token advantages ``[L_i]`` (float32, ``L_i`` the completion length) of every
    sample of a round; ``clip`` bounds them as ``algorithm.advantage.clip``."""
    rewards = step_rewards(fn, scored)
    steps = token_steps(cfg, scored.rollout.completion_ids, rewards, tokenizer)
    names = [f"sample {i} of the round" for i in range(len(scored))]
    out = process_advantages(rewards, groups, steps, sample_ids=names)
    return [(a.clamp(-clip, clip) if clip is not None else a).float() for a in out]


class TokenAdvantages:
    """The trainer's stage-3 hook for ``estimator: process``: ``(scored, groups)`` ->
    per-token advantages ``[L_i]`` of every sample of the round."""

    def __init__(self, cfg: Any, tokenizer: Any):
        self.cfg, self.tokenizer = cfg, tokenizer  # cfg: algorithm.advantage
        self.fn = step_reward_function(cfg.process)

    def __call__(self, scored: ScoredRollout, groups: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return round_token_advantages(self.cfg.process, self.fn, scored, groups, self.tokenizer,
                                      self.cfg.clip)
