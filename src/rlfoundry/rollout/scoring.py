"""Stage 2 of a GRPO rollout: score. A :class:`~rlfoundry.rollout.base.Rollout` (stage 1:
token ids and engine log-probs) plus its prompts' data rows in, a :class:`ScoredRollout` out.

The record is plain data (lists, tensors, strings): a rollout worker on another host could
produce it, and the trainer's grouping stage reads nothing else. Scoring itself is the
trainer's ``score_rollout`` hook (reward functions, ``algorithm.reward_error`` /
``reward_timeout``); :func:`score_samples` is its default body.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlfoundry.rewards import NonFiniteRewardError, RewardResult, compute_rewards, resolve_reward
from rlfoundry.rollout.base import Rollout, concat_rollouts

PASSING_REASONS = ("passed", "failed")  # reward reasons that need no explanation in the log

ScoreFn = Callable[[list[Any], list[str], dict[str, list[Any]], list[str]],
                   tuple[RewardResult, "str | None"]]


@dataclass
class ScoredRollout:
    """Stage-2 record: the samples of one rollout round with their rewards.

    ``rewards`` is ``[N]`` float64 (NaN = no reward, e.g. ``reward_error: skip``);
    ``per_function`` holds each reward function's unweighted scores; ``reasons`` /
    ``details`` each function's per-sample explanation (None: nothing said), for functions
    that give one; ``reason_counts`` the ``reward/<name>/<reason>`` counts; ``nonfinite``
    describes a NaN/inf reward (or is None)."""

    rollout: Rollout
    prompts: list[Any]  # the rendered prompt of each sample
    responses: list[str]  # the decoded completion of each sample
    columns: dict[str, list[Any]]  # data columns of each sample's row, plus completion_lengths
    rewards: torch.Tensor
    per_function: dict[str, torch.Tensor] = field(default_factory=dict)
    reasons: dict[str, list[str | None]] = field(default_factory=dict)
    details: dict[str, list[str | None]] = field(default_factory=dict)
    reason_counts: dict[str, float] = field(default_factory=dict)
    nonfinite: str | None = None

    def __len__(self) -> int:
        return len(self.responses)


def reward_functions(given: list[Any] | None, specs: list[Any]) -> list[tuple[str, Any, float]]:
    """``(name, function, weight)`` of each reward: ``given`` (functions, ``(name, fn)`` or
    ``(name, fn, weight)``), or else the config's ``algorithm.rewards`` specs."""
    if given is None:
        return [(spec.name, resolve_reward(spec.name, spec.args, spec.in_process), spec.weight) for spec in specs]
    return [(item if len(item) == 3 else (*item, 1.0)) if isinstance(item, tuple)
            else (getattr(item, "__name__", "reward"), item, 1.0) for item in given]


def data_columns(examples: Sequence[Any]) -> dict[str, list[Any]]:
    """Extra data columns of the examples, one list per column (None where a row lacks it)."""
    keys = dict.fromkeys(k for ex in examples for k in ex.extras)
    return {k: [ex.extras.get(k) for ex in examples] for k in keys}


def sample_columns(examples: Sequence[Any], rollout: Rollout) -> dict[str, list[Any]]:
    """The columns reward functions see: each sample's data row, plus ``completion_lengths``
    (for an episode: every token after its first prompt) and, for episodes,
    ``episode_turns`` and ``episode_messages`` (the whole conversation)."""
    columns = data_columns(examples)
    columns["completion_lengths"] = [len(c) for c in rollout.completion_ids]
    if rollout.episodes is not None:
        columns["episode_turns"] = [e.turns for e in rollout.episodes]
        columns["episode_messages"] = [e.messages for e in rollout.episodes]
    return columns


def decode_responses(rollout: Rollout, tokenizer) -> list[str]:
    """What reward functions score: each completion's text, or an episode's final model turn."""
    if rollout.episodes is not None:
        return [e.final_text for e in rollout.episodes]
    return tokenizer.batch_decode(rollout.completion_ids, skip_special_tokens=True)


def add_environment_rewards(result: RewardResult, rollout: Rollout) -> RewardResult:
    """Episodes' environment rewards added to the reward functions' totals, as the
    ``environment`` function (NaN where it gave none). An episode dropped under
    ``reward_error: skip`` has no total; an environment reward of None leaves the total as
    the reward functions made it."""
    if rollout.episodes is None:
        return result
    env = torch.tensor([math.nan if e.env_reward is None else e.env_reward for e in rollout.episodes],
                       dtype=torch.float64)
    skipped = torch.tensor([e.env_reward is not None and math.isnan(e.env_reward) for e in rollout.episodes])
    given = ~torch.isnan(env)
    total = torch.where(given, torch.nan_to_num(result.total, nan=0.0) + env, result.total)
    total = torch.where(skipped, torch.full_like(total, math.nan), total)
    reasons = [None if e.error is None else (e.error_reason or "exception") for e in rollout.episodes]
    per_function = {**result.per_function, "environment": env}
    out = RewardResult(total, per_function, {**result.num_errors, "environment": sum(r is not None for r in reasons)},
                       dict(result.reasons), dict(result.details))
    if any(r is not None for r in reasons):
        out.reasons["environment"] = reasons
        out.details["environment"] = [e.error for e in rollout.episodes]
    return out


def score(rollout: Rollout, examples: Sequence[Any], prompts: list[Any], responses: list[str],
          group_size: int, score_fn: ScoreFn) -> ScoredRollout:
    """Score ``rollout`` (``examples[i]`` is sample ``i``'s data row, ``prompts[i]`` its
    rendered prompt, ``responses[i]`` its decoded completion) with ``score_fn`` (the trainer's
    ``score_rollout``). Sample ids are ``<row location>#<sample number in its group>``."""
    columns = sample_columns(examples, rollout)
    sample_ids = [f"{ex.location}#{i % group_size}" for i, ex in enumerate(examples)]
    result, nonfinite = score_fn(prompts, responses, columns, sample_ids)
    result = add_environment_rewards(result, rollout)
    return ScoredRollout(rollout=rollout, prompts=prompts, responses=responses, columns=columns,
                         rewards=result.total, per_function=result.per_function,
                         reasons=dict(result.reasons), details=dict(result.details),
                         reason_counts=result.reason_counts(), nonfinite=nonfinite)


def score_samples(reward_fns: list[tuple[str, Any, float]], prompts: list[Any],
                  responses: list[str], columns: dict[str, list[Any]], sample_ids: list[str], *,
                  on_error: str, timeout: float | None) -> tuple[RewardResult, str | None]:
    """Run the reward functions. Returns the result and a description of any NaN/inf reward
    (None if all are finite); a NaN/inf from a function gives NaN rewards throughout."""
    try:
        result = compute_rewards(reward_fns, prompts, responses, columns, on_error=on_error,
                                 sample_ids=sample_ids, timeout=timeout)
    except NonFiniteRewardError as e:
        empty = torch.full((len(responses),), math.nan, dtype=torch.float64)
        return RewardResult(empty, {name: empty for name, _, _ in reward_fns}, {}), str(e)
    overflow = torch.isinf(result.total)  # finite rewards whose weighted sum overflows
    if overflow.any():
        first = int(overflow.nonzero()[0])
        return result, f"the weighted total of {sample_ids[first]} is {float(result.total[first])}"
    return result, None


def failure_lines(result: RewardResult, sample_ids: list[str], limit: int) -> list[str]:
    """The first ``limit`` explained failures (sandbox timeouts, blocked calls, ...) as
    ``reward '<name>' on <sample>: <reason> (<detail>)``."""
    lines: list[str] = []
    for name, reasons in result.reasons.items():
        for i, reason in enumerate(reasons):
            if reason is None or reason in PASSING_REASONS or len(lines) >= limit:
                continue
            detail = result.details.get(name, [None] * len(reasons))[i]
            lines.append(f"reward '{name}' on {sample_ids[i]}: {reason}{f' ({detail})' if detail else ''}")
    return lines


def concat_scored(parts: list[ScoredRollout], examples: Sequence[Any]) -> ScoredRollout:
    """The ranks' records of one round as one record (rank order = single-process order);
    ``examples`` are the joined samples' data rows (their columns are rebuilt from them, as a
    rank's share may lack a column another rank's rows have)."""
    counts: dict[str, float] = {}
    for part in parts:  # sum per-rank reward/<name>/<reason> counts
        for k, v in part.reason_counts.items():
            counts[k] = counts.get(k, 0.0) + v
    rollout = concat_rollouts([p.rollout for p in parts])
    return ScoredRollout(
        rollout=rollout,
        prompts=[x for p in parts for x in p.prompts],
        responses=[x for p in parts for x in p.responses],
        columns=sample_columns(examples, rollout),
        rewards=torch.cat([p.rewards for p in parts]),
        per_function={k: torch.cat([p.per_function[k] for p in parts]) for k in parts[0].per_function},
        reasons=_join_per_sample([p.reasons for p in parts], [len(p) for p in parts]),
        details=_join_per_sample([p.details for p in parts], [len(p) for p in parts]),
        reason_counts=dict(sorted(counts.items())),
        nonfinite=next((p.nonfinite for p in parts if p.nonfinite), None),
    )


def _join_per_sample(maps: list[dict[str, list[Any]]], sizes: list[int]) -> dict[str, list[Any]]:
    """Per-function per-sample lists of several parts as one (None where a part has none)."""
    names = dict.fromkeys(k for m in maps for k in m)
    return {k: [x for m, n in zip(maps, sizes) for x in m.get(k, [None] * n)] for k in names}


def nanmean(x: torch.Tensor) -> torch.Tensor:
    """Mean of the non-NaN entries (0 if there are none)."""
    return x.nanmean() if (~torch.isnan(x)).any() else x.new_tensor(0.0)


def reward_metrics(scored: ScoredRollout, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per-step rollout metrics: reward mean/std and per function, reason counts, ``stats``
    (the grouping stage's), completion lengths, truncation and generation throughput."""
    ro = scored.rollout
    lengths = torch.tensor([len(c) for c in ro.completion_ids], dtype=torch.float64)
    valid = scored.rewards[~torch.isnan(scored.rewards)]
    return {
        "reward_mean": nanmean(scored.rewards),
        "reward_std": valid.std() if valid.numel() > 1 else 0.0,
        **{f"reward/{k}": nanmean(v) for k, v in scored.per_function.items()},
        **scored.reason_counts,
        **(stats or {}),
        "completion_length_mean": lengths.mean(),
        "completion_length_max": lengths.max(),
        "truncated_frac": sum(ro.truncated) / len(ro.truncated),
        "generation_tokens_per_s": ro.num_tokens / max(ro.seconds, 1e-9),
        **episode_metrics(ro),
    }


def episode_metrics(rollout: Rollout) -> dict[str, float]:
    """Multi-turn rollouts: ``env/turns`` (mean per episode), ``env/<metric>`` (each
    ``EnvStep.metrics`` name, e.g. ``tool_calls``, ``tool_errors``: summed over an episode's
    turns, mean per episode), ``env/reward_mean`` (environment reward, episodes that gave
    one), ``env/truncated_frac``, ``env/errors`` (failed steps), ``env/done_frac`` and
    ``env/model_token_frac`` (share of completion tokens the model wrote)."""
    episodes = rollout.episodes
    if not episodes:
        return {}
    n = len(episodes)
    names = dict.fromkeys(k for e in episodes for k in e.metrics)
    rewards = [e.env_reward for e in episodes if e.env_reward is not None and not math.isnan(e.env_reward)]
    model = sum(sum(rollout.token_mask(i)) for i in range(n))
    out = {"env/turns": sum(e.turns for e in episodes) / n,
           **{f"env/{k}": sum(e.metrics.get(k, 0.0) for e in episodes) / n for k in names},
           "env/truncated_frac": sum(rollout.truncated) / n,
           "env/errors": float(sum(e.error is not None for e in episodes)),
           "env/done_frac": sum(e.outcome == "done" for e in episodes) / n,
           "env/model_token_frac": model / max(rollout.num_tokens, 1)}
    if rewards:
        out["env/reward_mean"] = sum(rewards) / len(rewards)
    return out
