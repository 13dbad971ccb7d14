"""Held-out evaluation of a GRPO run: mean reward per function of greedy completions, and
exact-match accuracy against the ``answer`` column where rows have one."""

from __future__ import annotations

from typing import Any

from rlfoundry.data.prompts import render_prompt
from rlfoundry.rewards import compute_rewards
from rlfoundry.rollout.base import SamplingParams
from rlfoundry.rollout.scoring import data_columns, nanmean
from rlfoundry.training import distributed
from rlfoundry.training.distributed import shard_range


def greedy_responses(engine, tokenizer, prompts: list[list[int]], sampling: SamplingParams,
                     size: int, generator, dist) -> list[str]:
    """Greedy completions (text) of ``prompts``: each rank generates its share, ``size``
    prompts per call, then (under torchrun) every rank gets all of them in order."""
    greedy = SamplingParams(0.0, 1.0, 0, sampling.max_new_tokens, list(sampling.stop_strings))
    share = shard_range(len(prompts), dist.rank, dist.world_size)
    responses: list[str] = []
    for start in range(share.start, share.stop, size):
        ro = engine.generate(prompts[start:min(start + size, share.stop)], 1, greedy, generator)
        responses += tokenizer.batch_decode(ro.completion_ids, skip_special_tokens=True)
    if dist.enabled:
        responses = [r for part in distributed.all_gather_object(responses) for r in part]
    return responses


def eval_metrics(reward_fns: list[tuple[str, Any, float]], examples: list[Any], tokenizer,
                 responses: list[str], timeout: float | None) -> dict[str, float]:
    """``reward_mean``, ``reward/<name>`` and (rows with an ``answer``) ``accuracy``: equal
    strings, or equal numbers by math equivalence. Failing reward calls count as 0."""
    from rlfoundry.rewards import REWARDS

    prompts = [render_prompt(tokenizer, ex.prompt) for ex in examples]
    columns = data_columns(examples)
    result = compute_rewards(reward_fns, prompts, responses, columns, on_error="zero", timeout=timeout)
    metrics = {"reward_mean": float(nanmean(result.total))}
    metrics.update({f"reward/{k}": float(nanmean(v)) for k, v in result.per_function.items()})
    if "answer" in columns:
        numeric = REWARDS.get("math_accuracy")(prompts, responses, answer=columns["answer"])
        scored = [float(r.strip() == str(a).strip()) or (m or 0.0)
                  for r, a, m in zip(responses, columns["answer"], numeric) if a is not None]
        if scored:
            metrics["accuracy"] = sum(scored) / len(scored)
    return metrics
