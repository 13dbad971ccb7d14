"""Dialogue grouping: samples that continue the same conversation share a baseline.

A sample's conversation context is, in order of preference: the data column named by
``algorithm.grouping.context_column``; else a ``conversation_id`` or ``context`` column when
the data has one; else its chat prompt without the final user turn (the earlier turns the
reply must stay consistent with). A plain-string prompt is its own context, so on string data
``context`` reduces to one group per distinct prompt. Rows lacking the column fall back to
their prompt's context.

``context_match: exact`` groups samples with equal contexts (split into groups of at most
``max_group_size``); ``embedding`` embeds each context's text (``ctx.embed``) and groups
contexts more similar than ``similarity_threshold``, like ``dynamic``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch

from rlfoundry.algorithms.grouping.base import GROUPINGS, GroupingContext
from rlfoundry.algorithms.grouping.similarity import (
    cosine_similarity_matrix,
    greedy_similarity_groups,
)
from rlfoundry.errors import ConfigError
from rlfoundry.registry import did_you_mean

AUTO_CONTEXT_COLUMNS: tuple[str, ...] = ("conversation_id", "context")


def conversation_text(prompt: Any) -> str:
    """Plain text of a prompt: a string as is, messages as ``role: content`` lines."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def conversation_context(prompt: Any) -> str:
    """The conversation before its last user turn, as text (a string prompt: itself)."""
    if isinstance(prompt, str):
        return prompt
    messages = list(prompt)
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    earlier = messages[:last_user] if last_user is not None else messages[:-1]
    return conversation_text(earlier)


def context_column(ctx: GroupingContext) -> str | None:
    """The column holding conversation ids, or None to use the prompts."""
    name = ctx.option("context_column")
    if name is not None:
        if name not in ctx.columns:
            raise ConfigError(f"algorithm.grouping.context_column: the data has no column "
                              f"'{name}'{did_you_mean(name, ctx.columns)}; columns: "
                              f"{', '.join(sorted(ctx.columns)) or '(none)'}")
        return name
    return next((c for c in AUTO_CONTEXT_COLUMNS if c in ctx.columns), None)


def context_keys(ctx: GroupingContext) -> list[Hashable]:
    """Each sample's conversation context (column value, or the prompt's earlier turns)."""
    column = context_column(ctx)
    values = ctx.columns[column] if column else [None] * ctx.num_samples
    if len(ctx.prompts) != ctx.num_samples and any(v is None for v in values):
        raise ValueError("context grouping needs ctx.prompts (one per sample) or a context column")
    keys: list[Hashable] = []
    for i, v in enumerate(values):
        if v is None:
            keys.append(("prompt", conversation_context(ctx.prompts[i])))
        else:
            keys.append(("column", _hashable(v)))
    return keys


def _hashable(value: Any) -> Hashable:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    return value


def _key_text(key: Hashable) -> str:
    kind, value = key
    return value if kind == "prompt" else str(value)


@GROUPINGS.register("context")
def context_groups(ctx: GroupingContext) -> list[torch.Tensor]:
    """Samples continuing the same conversation (a context column, or the earlier chat turns)."""
    keys = context_keys(ctx)
    distinct = list(dict.fromkeys(keys))
    key_id = torch.tensor([distinct.index(k) for k in keys])
    cap = ctx.option("max_group_size")
    if ctx.option("context_match") == "embedding":
        if ctx.embed is None:
            raise ValueError("context_match 'embedding' needs ctx.embed (texts -> embeddings)")
        texts = [_key_text(k) for k in distinct]
        sim = cosine_similarity_matrix(ctx.embed(texts))[key_id][:, key_id]
        threshold = ctx.option("similarity_threshold")
        return ctx.finalize(greedy_similarity_groups(sim, cap, 1, threshold), sim)
    same = key_id[:, None] == key_id[None, :]
    affinity = torch.zeros(same.shape, dtype=torch.float64).masked_fill(~same, float("-inf"))
    candidates = []
    for k in range(len(distinct)):
        members = torch.nonzero(key_id == k).flatten()
        candidates.extend(torch.split(members, cap) if cap else [members])
    return ctx.finalize(candidates, affinity)


@GROUPINGS.register("dialogue")
def dialogue_groups(ctx: GroupingContext) -> list[torch.Tensor]:
    """Alias of context: samples continuing the same conversation."""
    return context_groups(ctx)
