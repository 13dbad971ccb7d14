"""Group formation for GRPO: which samples share a baseline.

A grouping strategy is a callable ``strategy(ctx: GroupingContext) -> list[LongTensor]``
returning groups of sample indices. Registered strategies are picked by
``algorithm.group_strategy``; the trainer calls whichever the config names, so a new
strategy needs no trainer change. Samples left in no group are not trained on this step
(they have no baseline); strategies document how they treat leftovers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from rlfoundry.registry import Registry


@dataclass
class GroupingContext:
    """Everything a strategy may look at; fields a strategy does not need are ignored."""

    num_samples: int
    group_size: int
    prompt_index: torch.Tensor  # [N] which prompt each sample continues
    rewards: torch.Tensor  # [N] total reward (NaN = none)
    step: int = 0
    total_steps: int = 1
    embeddings: torch.Tensor | None = None  # [N, D] when the strategy asks for them
    columns: dict[str, list[Any]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # algorithm.grouping
    generator: torch.Generator | None = None


class GroupingStrategy(Protocol):
    def __call__(self, ctx: GroupingContext) -> list[torch.Tensor]: ...


GROUPINGS: Registry[GroupingStrategy] = Registry("grouping strategy")


@GROUPINGS.register("by_prompt")
def by_prompt(ctx: GroupingContext) -> list[torch.Tensor]:
    """One group per prompt: its group_size samples (the GRPO default)."""
    order = torch.argsort(ctx.prompt_index, stable=True)
    _, counts = torch.unique_consecutive(ctx.prompt_index[order], return_counts=True)
    return list(torch.split(order, counts.tolist()))


def _chunks(order: torch.Tensor, size: int, min_size: int) -> list[torch.Tensor]:
    """Consecutive chunks of ``order``; a last chunk smaller than ``min_size`` is left out."""
    return [c for c in torch.split(order, size) if c.numel() >= min_size]


@GROUPINGS.register("random")
def random_groups(ctx: GroupingContext) -> list[torch.Tensor]:
    """Random groups of group_size (a leftover smaller than min_group_size is not trained)."""
    order = torch.randperm(ctx.num_samples, generator=ctx.generator)
    return _chunks(order, ctx.group_size, ctx.options.get("min_group_size", 2))


@GROUPINGS.register("performance")
def performance_groups(ctx: GroupingContext) -> list[torch.Tensor]:
    """Groups of group_size samples with similar rewards (sorted by reward, then chunked)."""
    rewards = torch.nan_to_num(ctx.rewards.double(), nan=float("-inf"))
    order = torch.argsort(rewards, descending=True, stable=True)
    return _chunks(order, ctx.group_size, ctx.options.get("min_group_size", 2))


def greedy_similarity_groups(similarity: torch.Tensor, group_size: int, min_size: int,
                             threshold: float | None = None) -> list[torch.Tensor]:
    """Greedy grouping: each still-unused sample (in index order) takes the most similar unused
    samples, up to ``group_size`` members, optionally only those above ``threshold``. Groups
    smaller than ``min_size`` are left out (their samples are not trained this step)."""
    n = similarity.shape[0]
    unused = torch.ones(n, dtype=torch.bool)
    groups = []
    for i in range(n):
        if not unused[i]:
            continue
        scores = similarity[i].double().masked_fill(~unused, float("-inf"))
        scores[i] = float("inf")
        candidates = torch.argsort(scores, descending=True, stable=True)[:group_size]
        keep = candidates[torch.isfinite(scores[candidates]) | (candidates == i)]
        if threshold is not None:
            keep = keep[(scores[keep] > threshold) | (keep == i)]
        unused[keep] = False
        if keep.numel() >= min_size:
            groups.append(keep)
    return groups


@GROUPINGS.register("semantic")
def semantic_groups(ctx: GroupingContext) -> list[torch.Tensor]:
    """Groups of samples whose embeddings are most similar (cosine) and above similarity_threshold."""
    if ctx.embeddings is None:
        raise ValueError("semantic grouping needs embeddings (the trainer computes them when the "
                         "strategy sets needs_embeddings = True)")
    emb = torch.nn.functional.normalize(ctx.embeddings.double(), dim=-1)
    size = ctx.options.get("max_group_size") or ctx.group_size
    return greedy_similarity_groups(emb @ emb.T, size, ctx.options.get("min_group_size", 2),
                                    ctx.options.get("similarity_threshold"))


semantic_groups.needs_embeddings = True
