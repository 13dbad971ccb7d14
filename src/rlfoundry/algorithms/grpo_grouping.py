"""Stage 3 of a GRPO rollout: group + advantage. A :class:`~rlfoundry.rollout.scoring.ScoredRollout`
(all ranks' samples of one round) in, a :class:`GroupedRound` out; the rounds of a step (DAPO
dynamic sampling may add rounds) then become a :class:`SelectedSamples`, the samples the
update stage trains on.

The grouping strategy and the advantage estimator arrive as callables (the trainer's
``form_groups`` / ``compute_advantages`` hooks), so this module holds no trainer state. Also
here: how a run's grouping strategy is resolved from the config and the loss.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rlfoundry.algorithms.grouping import GROUPINGS, check_stages, group_quality_metrics
from rlfoundry.algorithms.grouping.embeddings import POLICY, encoder_path
from rlfoundry.errors import ConfigError, DataError
from rlfoundry.rollout.scoring import ScoredRollout
from rlfoundry.training.base import call_with_accepted

DEFAULT_GROUP_SIZE = 4


@dataclass
class GroupedRound:
    """Stage-3 record: a scored round with its groups (index tensors), advantages ``[N]``,
    the estimator's and grouping's statistics, and each sample's group (``-1``: none)."""

    scored: ScoredRollout
    groups: list[torch.Tensor]
    advantages: torch.Tensor
    stats: dict[str, Any] = field(default_factory=dict)
    group_of: torch.Tensor | None = None
    token_advantages: list[torch.Tensor] | None = None  # estimator: process, [L_i] per sample

    def decision(self) -> tuple:
        """What rank 0 decides and broadcasts: ``GroupedRound(scored, *decision)`` rebuilds it."""
        return self.groups, self.advantages, self.stats, self.group_of, self.token_advantages

    def __len__(self) -> int:
        return len(self.scored)

    def varied_groups(self) -> list[torch.Tensor]:
        """Groups whose valid rewards are not all equal (DAPO dynamic sampling keeps these)."""
        out = []
        for g in self.groups:
            vals = self.scored.rewards[g]
            vals = vals[~torch.isnan(vals)]
            if vals.numel() > 1 and bool((vals != vals[0]).any()):
                out.append(g)
        return out

    def nonfinite_advantages(self) -> str | None:
        """A description of the NaN/inf advantages, or None if all are finite."""
        bad = ~torch.isfinite(torch.as_tensor(self.advantages, dtype=torch.float64))
        if not bad.any():
            return None
        first = int(bad.nonzero()[0])
        return (f"{int(bad.sum())} of {bad.numel()}, first sample {first}: advantage "
                f"{float(self.advantages[first])}, reward {float(self.scored.rewards[first])}")


@dataclass
class SelectedSamples:
    """Stage-3 output for the update stage: a step's rounds and the ``(round, sample)``
    pairs it trains on (grouped samples with a reward; with dynamic sampling only those of
    varied groups, at most ``batch_size x group_size``)."""

    rounds: list[GroupedRound]
    samples: list[tuple[int, int]]

    def group_id(self) -> torch.Tensor:
        """Each trained sample's group, distinct across rounds (round ``k`` adds
        ``k x`` its sample count)."""
        return torch.stack([self.rounds[k].group_of[i] + k * len(self.rounds[k])
                            for k, i in self.samples])

    def column_values(self, name: str) -> list[Any]:
        """Each trained sample's value in data column ``name`` (None where its row lacks it)."""
        return [self.rounds[k].scored.columns.get(name, [None] * (i + 1))[i] for k, i in self.samples]


def group_round(scored: ScoredRollout, form_groups: Callable[..., Any],
                compute_advantages: Callable[..., Any], group_size: int, context: dict[str, Any],
                embeddings: torch.Tensor | None = None,
                token_advantages: Callable[..., Any] | None = None) -> GroupedRound:
    """Groups (``form_groups(n, group_size, **context, embeddings=...)``, only the arguments
    it accepts) and advantages (``compute_advantages(rewards, groups)``) of one round, plus
    per-token advantages (``token_advantages(scored, groups)``) when that hook is given."""
    n = len(scored)
    groups = call_grouping_hook(form_groups, n, group_size, {**context, "embeddings": embeddings})
    groups = [torch.as_tensor(g, dtype=torch.long).reshape(-1) for g in groups if len(g) > 0]
    advantages, stats = as_advantages(compute_advantages(scored.rewards, groups))
    stats.update(group_quality_metrics(groups, n, scored.rewards, embeddings))
    group_of = torch.full((n,), -1, dtype=torch.long)
    for k, g in enumerate(groups):
        group_of[g] = k
    per_token = token_advantages(scored, groups) if token_advantages is not None else None
    return GroupedRound(scored, groups, advantages, stats, group_of, per_token)


def call_grouping_hook(form_groups: Callable[..., Any], n: int, group_size: int,
                       context: dict[str, Any]) -> Any:
    """Call a ``form_groups`` hook. When every parameter it names is known (``batch_size``
    (alias ``num_samples``), ``group_size``, ``rewards``, ``embeddings``, ``step``,
    ``total_steps``, ``prompts``, ``responses``, ``columns``, ``prompt_index``, ``embed``,
    ``diversity_scores``) or has a default, it is called by keyword, so
    ``def semantic_grouping(self, embeddings, batch_size, group_size=4)`` works; otherwise as
    ``form_groups(n, group_size, **accepted context)``."""
    named = {"batch_size": n, "num_samples": n, "group_size": group_size, **context}
    params = inspect.signature(form_groups).parameters
    plain = [p for p in params.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not all(p.name in named or p.name == "diversity_scores" or p.default is not p.empty
               for p in plain):
        return call_with_accepted(form_groups, n, group_size, **context)
    if any(p.name == "diversity_scores" for p in plain) and "diversity_scores" not in named:
        named["diversity_scores"] = diversity_scores(context.get("responses") or [])
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return form_groups(**{k: v for k, v in named.items() if k != "num_samples" or "num_samples" in params})
    return form_groups(**{p.name: named[p.name] for p in plain if p.name in named})


def diversity_scores(responses: list[str]) -> torch.Tensor:
    """Per response, the share of its words that are distinct (1 = no repetition)."""
    out = []
    for text in responses:
        words = str(text).split()
        out.append(len(set(words)) / len(words) if words else 0.0)
    return torch.tensor(out)


def select_samples(rounds: list[GroupedRound], dynamic: bool, limit: int, step: int) -> SelectedSamples:
    """The samples a step trains on: every grouped sample with a reward (with ``dynamic``
    sampling only those of varied groups, the first ``limit``)."""
    samples: list[tuple[int, int]] = []
    for k, r in enumerate(rounds):
        for g in (r.varied_groups() if dynamic else r.groups):
            samples.extend((k, int(i)) for i in g if not math.isnan(float(r.scored.rewards[i])))
    if dynamic:
        samples = samples[:limit]
    if not samples:
        raise DataError(f"step {step + 1}: no sample has a reward inside a group; "
                        "nothing to train on (check the reward functions and grouping)")
    return SelectedSamples(rounds, samples)


def as_advantages(result) -> tuple[torch.Tensor, dict[str, Any]]:
    """``compute_advantages`` overrides may return a tensor or ``(tensor, stats)``."""
    if isinstance(result, tuple):
        return result[0], dict(result[1])
    return result, {}


def group_size_of(algo) -> int:
    """``algorithm.group_size`` (or its alias ``num_generations``), default 4."""
    return algo.group_size or algo.num_generations or DEFAULT_GROUP_SIZE


def resolve_grouping(algo, loss_fn) -> tuple[str, dict[str, Any]]:
    """The grouping strategy name and options for a run: ``algorithm.group_strategy`` and
    ``algorithm.grouping``, unless the loss names a grouping of its own (``loss_fn.grouping``),
    whose ``grouping_options`` (set in ``algorithm.loss``) and ``grouping_defaults`` then apply;
    a value set in both places must agree. In a composite loss the first component that names
    a grouping decides."""
    from rlfoundry.training.schedules import loss_components

    name, options = algo.group_strategy or "by_prompt", algo.grouping.model_dump()
    loss_fn = next((c for c in loss_components(loss_fn) if getattr(c, "grouping", None)), None)
    wanted = getattr(loss_fn, "grouping", None)
    if wanted is None:
        return name, options
    if algo.group_strategy not in (None, wanted):
        raise ConfigError(f"algorithm.group_strategy: '{algo.group_strategy}' conflicts with the "
                          f"loss, which forms its own groups with strategy '{wanted}'; remove "
                          "group_strategy or use another loss type")
    explicit = algo.grouping.model_fields_set
    for key, value in getattr(loss_fn, "grouping_defaults", {}).items():
        if key not in explicit:
            options[key] = value
    for key, value in getattr(loss_fn, "grouping_options", {}).items():
        if key in explicit and options[key] != value:
            raise ConfigError(f"algorithm.loss.{key}={value} and algorithm.grouping.{key}="
                              f"{options[key]} disagree; keep one")
        options[key] = value
    return wanted, options


def check_grouping(name: str, options: dict[str, Any]) -> None:
    """Reject an unknown strategy, bad adaptive stages or an unusable embedding source at
    config load."""
    try:
        GROUPINGS.get(name)
    except ConfigError as e:
        raise ConfigError(f"algorithm.group_strategy: {e}") from None
    if name == "adaptive":
        check_stages(options["stages"])
    low, high = options["min_group_size"], options["max_group_size"]
    if high is not None and low > high:
        raise ConfigError(f"algorithm.grouping.min_group_size ({low}) is larger than "
                          f"max_group_size ({high}): every group would be a leftover")
    if options["embedding"] != POLICY:
        encoder_path(options["embedding"])
