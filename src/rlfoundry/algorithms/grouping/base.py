"""The grouping interface: ``GroupingContext``, the ``GROUPINGS`` registry and the size policy.

A strategy is ``strategy(ctx: GroupingContext) -> list[LongTensor]``: disjoint groups of
sample indices. A strategy that needs sample embeddings sets ``needs_embeddings`` (``True``,
or a function of the context) and the trainer fills ``ctx.embeddings`` before calling it.

Size policy (applied by :meth:`GroupingContext.finalize`, which every built-in strategy
calls on its candidate groups): a group smaller than ``min_group_size`` is a leftover.
With ``leftovers: drop`` (default) its samples are in no group: they get advantage 0 and
the trainer does not train on them this step. With ``leftovers: merge`` each leftover sample
joins the kept group with the highest mean affinity to it (the strategy's similarity; the
smallest group when the strategy has none), which may take that group past
``max_group_size``; a group the sample has affinity ``-inf`` with (e.g. another
conversation for ``context``) is never chosen, so such a sample stays ungrouped. When no
group was kept, the leftovers form one group if there are at least ``min_group_size``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Protocol

import torch

from rlfoundry.errors import ConfigError
from rlfoundry.registry import Registry


@cache
def default_options() -> dict[str, Any]:
    """``algorithm.grouping`` defaults (the config schema is the one source of them)."""
    from rlfoundry.config.schema import GroupingConfig

    return GroupingConfig().model_dump()


@dataclass
class GroupingContext:
    """Everything a strategy may look at; fields a strategy does not need are ignored."""

    num_samples: int
    group_size: int  # completions sampled per prompt
    prompt_index: torch.Tensor  # [N] which prompt each sample continues
    rewards: torch.Tensor  # [N] total reward (NaN = none)
    step: int = 0  # optimizer steps done before this rollout
    total_steps: int = 1
    embeddings: torch.Tensor | None = None  # [N, D] when the strategy asks for them
    columns: dict[str, list[Any]] = field(default_factory=dict)  # data columns, per sample
    options: dict[str, Any] = field(default_factory=dict)  # algorithm.grouping
    generator: torch.Generator | None = None
    prompts: list[Any] = field(default_factory=list)  # each sample's prompt (str or messages)
    responses: list[str] = field(default_factory=list)  # each sample's completion text
    embed: Callable[[list[str]], torch.Tensor] | None = None  # texts -> [len, D]

    def option(self, name: str) -> Any:
        """``options[name]``, or its ``algorithm.grouping`` default when not given."""
        if name in self.options:
            return self.options[name]
        if name not in default_options():
            raise KeyError(f"no grouping option '{name}'")
        return default_options()[name]

    @property
    def progress(self) -> float:
        """Training progress in [0, 1]: ``step / total_steps``."""
        return min(max(self.step / max(self.total_steps, 1), 0.0), 1.0)

    def require_embeddings(self, strategy: str) -> torch.Tensor:
        if self.embeddings is None:
            raise ValueError(f"grouping strategy '{strategy}' needs ctx.embeddings [N, D] (the "
                             "trainer computes them when the strategy sets needs_embeddings)")
        return self.embeddings

    def finalize(self, candidates: Sequence[torch.Tensor],
                 affinity: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Apply ``min_group_size`` and the ``leftovers`` policy to candidate groups."""
        return apply_size_policy(candidates, self.option("min_group_size"),
                                 self.option("leftovers"), affinity)


class GroupingStrategy(Protocol):
    def __call__(self, ctx: GroupingContext) -> list[torch.Tensor]: ...


GROUPINGS: Registry[GroupingStrategy] = Registry("grouping strategy")
LEFTOVER_POLICIES: tuple[str, ...] = ("drop", "merge")


def needs_embeddings(strategy: Any, ctx: GroupingContext) -> bool:
    """Whether ``strategy`` wants ``ctx.embeddings`` for this context."""
    flag = getattr(strategy, "needs_embeddings", False)
    return bool(flag(ctx)) if callable(flag) else bool(flag)


def apply_size_policy(candidates: Sequence[torch.Tensor], min_size: int, leftovers: str = "drop",
                      affinity: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Keep groups of at least ``min_size``; drop or merge the rest (module docstring)."""
    if leftovers not in LEFTOVER_POLICIES:
        raise ConfigError(f"algorithm.grouping.leftovers: unknown value {leftovers!r}; choose "
                          f"one of: {', '.join(LEFTOVER_POLICIES)}")
    groups = [torch.as_tensor(g, dtype=torch.long).reshape(-1) for g in candidates]
    kept = [g for g in groups if g.numel() >= min_size]
    loose = [g for g in groups if 0 < g.numel() < min_size]
    if leftovers == "drop" or not loose:
        return kept
    pool = torch.cat(loose)
    if not kept:
        return [pool] if pool.numel() >= min_size else []
    members = [g.tolist() for g in kept]
    for s in pool.tolist():
        if affinity is None:
            target = min(range(len(members)), key=lambda k: len(members[k]))
        else:
            scores = torch.stack([affinity[s, m].double().mean() for m in members])
            scores = torch.nan_to_num(scores, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))
            if bool((scores == float("-inf")).all()):
                continue  # incompatible with every group: stays ungrouped
            target = int(torch.argmax(scores))
        members[target].append(s)
    return [torch.tensor(m, dtype=torch.long) for m in members]
