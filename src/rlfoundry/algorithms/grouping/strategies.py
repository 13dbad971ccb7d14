"""The built-in grouping strategies (the seed's random/semantic/performance/adaptive/multi-criteria
and ``DynamicGRPOLossFn``'s similarity-threshold groups). ``context``/``dialogue`` live in
:mod:`rlfoundry.algorithms.grouping.context`.

Group sizes: ``random`` and ``performance`` cut groups of ``group_size`` (capped at
``max_group_size``); ``semantic`` and ``multi_criteria`` form groups of up to
``max_group_size`` (default ``group_size``); ``dynamic`` groups have no size but
``max_group_size`` (default: no cap). All apply the size policy of ``GroupingContext.finalize``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rlfoundry.algorithms.grouping.base import GROUPINGS, GroupingContext, needs_embeddings
from rlfoundry.algorithms.grouping.similarity import (
    cosine_similarity_matrix,
    embedding_novelty,
    greedy_similarity_groups,
    pairwise_abs_difference,
    zscore,
)
from rlfoundry.errors import ConfigError
from rlfoundry.registry import did_you_mean


def chunk_size(ctx: GroupingContext) -> int:
    """``group_size``, capped at ``max_group_size`` when that is smaller."""
    cap = ctx.option("max_group_size")
    return min(ctx.group_size, cap) if cap else ctx.group_size


@GROUPINGS.register("by_prompt")
def by_prompt(ctx: GroupingContext) -> list[torch.Tensor]:
    """One group per prompt: its group_size samples (the GRPO default)."""
    order = torch.argsort(ctx.prompt_index, stable=True)
    _, counts = torch.unique_consecutive(ctx.prompt_index[order], return_counts=True)
    return list(torch.split(order, counts.tolist()))


@GROUPINGS.register("random")
def random_groups(ctx: GroupingContext) -> list[torch.Tensor]:
    """Random groups of group_size samples, across prompts (the seed's CustomGRPOTrainer)."""
    order = torch.randperm(ctx.num_samples, generator=ctx.generator)
    return ctx.finalize(list(torch.split(order, chunk_size(ctx))))


def reward_affinity(rewards: torch.Tensor) -> torch.Tensor:
    """``-|r_i - r_j|`` (-inf where a reward is NaN): closer rewards, higher affinity."""
    aff = -pairwise_abs_difference(rewards)
    return torch.nan_to_num(aff, nan=float("-inf"))


@GROUPINGS.register("performance")
def performance_groups(ctx: GroupingContext) -> list[torch.Tensor]:
    """Groups of group_size samples with similar rewards (sorted by reward, then cut)."""
    # NaN-reward samples are left out: they have no reward to sort by and are not trained.
    # Note: groups of near-equal rewards have small within-group variance, so GRPO's
    # group-normalised advantages are small or zero; prefer it as one stage of `adaptive`,
    # or with advantage.scale_rewards: batch.
    rewards = ctx.rewards.double()
    scored = torch.nonzero(~torch.isnan(rewards)).flatten()
    order = scored[torch.argsort(rewards[scored], descending=True, stable=True)]
    return ctx.finalize(list(torch.split(order, chunk_size(ctx))), reward_affinity(rewards))


@GROUPINGS.register("semantic")
def semantic_groups(ctx: GroupingContext) -> list[torch.Tensor]:
    """Groups of the most similar samples (cosine of embeddings above similarity_threshold)."""
    sim = cosine_similarity_matrix(ctx.require_embeddings("semantic"))
    size = ctx.option("max_group_size") or ctx.group_size
    return ctx.finalize(greedy_similarity_groups(sim, size, 1, ctx.option("similarity_threshold")),
                        sim)


semantic_groups.needs_embeddings = True


@GROUPINGS.register("dynamic")
def dynamic_groups(ctx: GroupingContext) -> list[torch.Tensor]:
    """Variable-size groups of samples more similar than similarity_threshold (max_group_size cap)."""
    # As the seed's DynamicGRPOLossFn: each ungrouped sample, in order, gathers the ungrouped
    # samples whose cosine similarity to it exceeds the threshold. Where more qualify than
    # max_group_size, the most similar are kept (the seed kept the lowest indices).
    sim = cosine_similarity_matrix(ctx.require_embeddings("dynamic"))
    groups = greedy_similarity_groups(sim, ctx.option("max_group_size"), 1,
                                      ctx.option("similarity_threshold"))
    return ctx.finalize(groups, sim)


dynamic_groups.needs_embeddings = True


def multi_criteria_affinity(embeddings: torch.Tensor, rewards: torch.Tensor,
                            diversity: torch.Tensor, weights: Mapping[str, float]) -> torch.Tensor:
    """``w_e cos(e_i, e_j) + w_r |z(r)_i - z(r)_j| + w_d |z(d)_i - z(d)_j|`` ``[N, N]``.

    ``z`` is the z-score over the finite values; a criterion with std 0 (or NaN entries)
    contributes 0 instead of dividing by zero, as the seed's formula would.
    """
    return (weights["embedding"] * cosine_similarity_matrix(embeddings)
            + weights["reward"] * pairwise_abs_difference(zscore(rewards))
            + weights["diversity"] * pairwise_abs_difference(zscore(diversity)))


def diversity_scores(ctx: GroupingContext) -> torch.Tensor:
    """The ``diversity_column`` of the data, else each sample's embedding novelty."""
    column = ctx.option("diversity_column")
    if column is None:
        return embedding_novelty(ctx.require_embeddings("multi_criteria"))
    if column not in ctx.columns:
        raise ConfigError(f"algorithm.grouping.diversity_column: the data has no column "
                          f"'{column}'{did_you_mean(column, ctx.columns)}; columns: "
                          f"{', '.join(sorted(ctx.columns)) or '(none)'}")
    values = [float("nan") if v is None else float(v) for v in ctx.columns[column]]
    return torch.tensor(values, dtype=torch.float64)


@GROUPINGS.register("multi_criteria")
def multi_criteria_groups(ctx: GroupingContext) -> list[torch.Tensor]:
    """Groups by one affinity mixing embedding similarity, reward contrast and diversity contrast."""
    # The seed's combined score, kept on purpose: a positive reward weight adds |reward
    # difference|, so a group gathers semantically similar samples whose rewards DIFFER. GRPO's
    # advantage is zero in a group of equal rewards, so the other reading (similar rewards
    # together) would mostly form groups that teach nothing; "same kind of answer, different
    # outcome" is the most informative comparison. Set weights.reward < 0 for reward-alike
    # groups (and weights.diversity < 0 to keep typical and unusual samples apart).
    emb = ctx.require_embeddings("multi_criteria")
    affinity = multi_criteria_affinity(emb, ctx.rewards, diversity_scores(ctx),
                                       ctx.option("weights"))
    size = ctx.option("max_group_size") or ctx.group_size
    return ctx.finalize(greedy_similarity_groups(affinity, size), affinity)


multi_criteria_groups.needs_embeddings = True


def adaptive_strategy(stages: Sequence[Mapping[str, Any]], progress: float) -> str:
    """The strategy of the first stage whose ``until`` exceeds ``progress`` (else the last)."""
    for stage in stages:
        if progress < stage["until"]:
            return stage["strategy"]
    return stages[-1]["strategy"]


def check_stages(stages: Sequence[Mapping[str, Any]],
                 path: str = "algorithm.grouping.stages") -> None:
    """``ConfigError`` unless stages are non-empty, increasing and name registered strategies."""
    if not stages:
        raise ConfigError(f"{path}: adaptive grouping needs at least one stage")
    previous = 0.0
    for i, stage in enumerate(stages):
        if stage["until"] <= previous:
            raise ConfigError(f"{path}[{i}].until: {stage['until']} must be greater than the "
                              f"previous stage's ({previous}); list stages in order of progress")
        previous = stage["until"]
        if stage["strategy"] == "adaptive":
            raise ConfigError(f"{path}[{i}].strategy: a stage cannot be 'adaptive' itself")
        try:
            GROUPINGS.get(stage["strategy"])
        except ConfigError as e:
            raise ConfigError(f"{path}[{i}].strategy: {e}") from None


def _adaptive_current(ctx: GroupingContext) -> str:
    return adaptive_strategy(ctx.option("stages"), ctx.progress)


@GROUPINGS.register("adaptive")
def adaptive_groups(ctx: GroupingContext) -> list[torch.Tensor]:
    """Strategy by training progress (default random, then performance at 0.3, semantic at 0.7)."""
    return GROUPINGS.get(_adaptive_current(ctx))(ctx)


adaptive_groups.needs_embeddings = lambda ctx: needs_embeddings(
    GROUPINGS.get(_adaptive_current(ctx)), ctx)
