"""``dynamic_grpo``: GRPO whose groups are formed by response similarity (seed 004's
``DynamicGRPOLossFn``).

The seed forms the groups inside the loss, from ``model_outputs["responses"]``, after the
advantages were computed from other groups, and then never uses them: the loss it computes
is plain GRPO. What a user wants is the advantages computed over the similarity groups, so
this class *declares* the grouping it needs (``grouping = "dynamic"``) and the GRPO trainer
forms those groups, before the advantages, with the loss's ``similarity_threshold`` and
``max_group_size``::

    algorithm:
      name: grpo
      loss: {type: dynamic_grpo, similarity_threshold: 0.8, max_group_size: 10}

The loss itself is :class:`GRPOLossFn` (every GRPO option applies); it adds the seed's
metrics ``num_dynamic_groups`` and ``avg_group_size`` (trained samples per group) for the
rollout, read from the ``num_groups``/``num_grouped`` numbers the trainer puts in each batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

import torch

from rlfoundry.algorithms.grouping import GroupingContext, cosine_similarity_matrix, dynamic_groups
from rlfoundry.algorithms.loss_functions.grpo import GRPOLossConfig, GRPOLossFn
from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry
from rlfoundry.errors import ConfigError


class DynamicGRPOLossConfig(GRPOLossConfig, total=False):
    """``GRPOLossConfig`` plus the grouping options of ``dynamic_grpo``."""

    # Cosine similarity a response must exceed to join a group, in [-1, 1]. Default 0.8.
    similarity_threshold: float
    # Largest group (null: no cap). Default 10.
    max_group_size: int | None


def _check_grouping_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    if "similarity_threshold" in cfg:
        t = cfg["similarity_threshold"]
        if isinstance(t, bool) or not isinstance(t, Real) or not -1 <= t <= 1:
            raise ConfigError(f"algorithm.loss.similarity_threshold: must be a number in [-1, 1], "
                              f"got {t!r}")
        out["similarity_threshold"] = float(t)
    if "max_group_size" in cfg:
        m = cfg["max_group_size"]
        if m is not None and (isinstance(m, bool) or not isinstance(m, Integral) or m < 1):
            raise ConfigError(f"algorithm.loss.max_group_size: must be a positive integer or "
                              f"null (no cap), got {m!r}")
        out["max_group_size"] = m
    return out


@LossFunctionRegistry.register("dynamic_grpo")
class DynamicGRPOLossFn(GRPOLossFn):
    """GRPO over groups of similar responses (similarity_threshold, max_group_size)."""

    grouping = "dynamic"  # the trainer forms groups with this strategy before advantages
    grouping_defaults: dict[str, Any] = {"similarity_threshold": 0.8, "max_group_size": 10}
    extra_config_keys = ("similarity_threshold", "max_group_size")
    _builtin = True

    def __init__(self, cfg: DynamicGRPOLossConfig | Mapping[str, Any] | None = None) -> None:
        super().__init__(cfg)
        # Only the keys given in algorithm.loss; the trainer merges them with algorithm.grouping.
        self.grouping_options: dict[str, Any] = _check_grouping_options(self.cfg)
        resolved = {**self.grouping_defaults, **self.grouping_options}
        self.similarity_threshold: float = resolved["similarity_threshold"]
        self.max_group_size: int | None = resolved["max_group_size"]

    def _compute_response_similarity(self, responses: torch.Tensor) -> torch.Tensor:
        """Cosine similarity matrix ``[N, N]`` of response embeddings ``[N, D]``."""
        return cosine_similarity_matrix(responses)

    def _form_dynamic_groups(self, responses: torch.Tensor) -> list[list[int]]:
        """The groups the ``dynamic`` strategy forms from response embeddings ``[N, D]`` with
        this loss's threshold and cap (singletons kept, as in the seed)."""
        n = responses.shape[0]
        ctx = GroupingContext(num_samples=n, group_size=1, prompt_index=torch.arange(n),
                              rewards=torch.zeros(n), embeddings=responses,
                              options={"similarity_threshold": self.similarity_threshold,
                                       "max_group_size": self.max_group_size,
                                       "min_group_size": 1})
        return [g.tolist() for g in dynamic_groups(ctx)]

    def __call__(self, batch: Mapping[str, Any], model_outputs: Mapping[str, torch.Tensor]):
        loss, metrics = super().__call__(batch, model_outputs)
        groups, grouped = batch.get("num_groups"), batch.get("num_grouped")
        if groups is not None and grouped is not None:
            zero = loss.detach().new_zeros(())
            metrics["num_dynamic_groups"] = zero + groups
            metrics["avg_group_size"] = zero + (grouped / groups if groups else 0.0)
        return loss, metrics
