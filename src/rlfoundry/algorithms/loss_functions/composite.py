"""Composition: a weighted sum of loss functions, each keeping its own metrics.

``ComposableLossFunction(components, weights)`` calls every component on the same
``(batch, model_outputs)`` and returns ``sum_i w_i * loss_i``. Metrics stay apart: component
``dpo``'s ``accuracy`` is logged as ``dpo/accuracy`` (never added to another component's
``accuracy``), and each component's unweighted loss as ``<name>/loss``.

Exact accumulation with mixed reductions: when all components share one ``reduction``
("sequence" or "token") the sum has it too. When they differ (DPO is a mean over pairs, NLL
a mean over tokens) the composite declares ``reduction = "sum"``: it rescales each component
by its micro-batch's share of the step's global count (``batch["num_sequences"] /
batch["global_num_sequences"]`` or the token equivalent, filled in by the trainer) and the
trainer adds micro-batch losses unweighted. Either way micro-batch 2 x 4 equals batch 8.

YAML form (``algorithm.loss``)::

    loss:
      type: composite
      components:
        - {type: dpo, weight: 1.0, beta: 0.1}
        - {type: nll, weight: 0.2, name: sft}
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry
from rlfoundry.errors import ConfigError

COUNT_KEYS = {"sequence": "num_sequences", "token": "num_tokens"}


def component_share(component: Any, batch: Mapping[str, Any]) -> float:
    """This micro-batch's share of the step's count for ``component``'s reduction (1.0 when
    the trainer gave no global counts, e.g. a direct call on one batch)."""
    key = COUNT_KEYS[getattr(component, "reduction", "sequence")]
    local, total = batch.get(key), batch.get(f"global_{key}")
    if local is None or not total:
        return 1.0
    return float(local) / float(total)


def default_name(component: Any) -> str:
    """'dpo' for DPOLossFn, 'nll' for NLLLossFn, 'my_thing' for MyThingLossFn."""
    name = getattr(component, "name", None) or type(component).__name__
    name = re.sub(r"(LossFn|LossFunction|Loss)$", "", name) or "loss"
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class ComposableLossFunction:
    """Weighted sum of loss components; each component's metrics under its own prefix."""

    def __init__(self, components: Sequence[Any], weights: Sequence[float] | None = None,
                 names: Sequence[str] | None = None) -> None:
        self.components = list(components)
        if not self.components:
            raise ConfigError("algorithm.loss.components: a composite loss needs at least one component")
        self.weights = [float(w) for w in (weights if weights is not None else [1.0] * len(self.components))]
        if len(self.weights) != len(self.components):
            raise ConfigError(f"algorithm.loss: {len(self.components)} components but "
                              f"{len(self.weights)} weights")
        self.names = _unique(list(names) if names is not None else
                             [default_name(c) for c in self.components])
        reductions = {getattr(c, "reduction", "sequence") for c in self.components}
        for r in reductions:
            if r not in COUNT_KEYS:
                raise ConfigError(f"algorithm.loss: component reduction {r!r} is not 'sequence' or 'token'")
        self.reduction = reductions.pop() if len(reductions) == 1 else "sum"

    # ---- what the trainer asks of a loss --------------------------------------------------
    @property
    def requires_reference(self) -> bool:
        return any(getattr(c, "requires_reference", False) for c in self.components)

    @property
    def cfg(self) -> dict[str, Any]:
        """Options the trainer reads (entropy_coef, value_loss_coef): any component's."""
        merged: dict[str, Any] = {}
        for c in self.components:
            for k, v in (getattr(c, "cfg", None) or {}).items():
                if v and not merged.get(k):
                    merged[k] = v
        return merged

    @property
    def requires(self) -> set[str]:
        """Extra model outputs the components ask for (e.g. ``{"hidden"}``)."""
        return set().union(*(getattr(c, "requires", set()) for c in self.components))

    def valid_mask(self, batch):
        for c in self.components:
            if hasattr(c, "valid_mask"):
                return c.valid_mask(batch)
        return batch["response_mask"]

    def on_step_start(self, step: int, total_steps: int) -> None:
        for c in self.components:
            if hasattr(c, "on_step_start"):
                c.on_step_start(step, total_steps)

    def on_step_end(self, metrics: Mapping[str, float]) -> None:
        for name, c in zip(self.names, self.components):
            if hasattr(c, "on_step_end"):
                prefix = f"{name}/"
                c.on_step_end({k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)})

    def bind_tokenizer(self, tokenizer) -> None:
        for c in self.components:
            if hasattr(c, "bind_tokenizer"):
                c.bind_tokenizer(tokenizer)

    def state_dict(self) -> dict[str, Any]:
        from rlfoundry.training.checkpoint import plain_state

        return {name: plain_state(c) for name, c in zip(self.names, self.components)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        from rlfoundry.training.checkpoint import restore_plain_state

        for name, c in zip(self.names, self.components):
            restore_plain_state(c, state.get(name, {}))

    # ---- the loss -------------------------------------------------------------------------
    def weighted_terms(self, batch, model_outputs) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Each component's loss (rescaled when reduction is "sum") and the prefixed metrics."""
        terms, metrics = [], {}
        for name, component in zip(self.names, self.components):
            loss, m = component(batch, model_outputs)
            metrics.update({f"{name}/{k}": v for k, v in dict(m or {}).items()})
            metrics.setdefault(f"{name}/loss", loss.detach())
            if self.reduction == "sum":
                loss = loss * component_share(component, batch)
            terms.append(loss)
        empty = [v for k, v in metrics.items() if k.endswith("/empty_batches")]
        if empty:  # an empty micro-batch (loss_functions/empty.py): count it once, unprefixed
            metrics["empty_batches"] = empty[0]
            self.empty_batches = getattr(self, "empty_batches", 0) + 1
        return terms, metrics

    def __call__(self, batch, model_outputs) -> tuple[torch.Tensor, dict[str, Any]]:
        terms, metrics = self.weighted_terms(batch, model_outputs)
        total = sum(w * t for w, t in zip(self.weights, terms))
        return total, metrics


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out


@LossFunctionRegistry.register("composite")
class CompositeLossFn(ComposableLossFunction):
    """Weighted sum of registered losses from YAML: components: [{type, weight, name, ...}]."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        cfg = {k: v for k, v in dict(cfg).items() if k != "type"}
        specs = cfg.pop("components", None)
        if cfg:
            raise ConfigError(f"algorithm.loss: composite takes only 'components', got {sorted(cfg)}")
        if not isinstance(specs, list) or not specs:
            raise ConfigError("algorithm.loss.components: give a non-empty list of "
                              "{type: <registered loss>, weight: <float>, ...}")
        components, weights, names = [], [], []
        for i, spec in enumerate(specs):
            if not isinstance(spec, Mapping) or "type" not in spec:
                raise ConfigError(f"algorithm.loss.components[{i}]: needs a 'type' key, got {spec!r}")
            spec = dict(spec)
            weights.append(spec.pop("weight", 1.0))
            name = spec.pop("name", None)
            try:
                component = LossFunctionRegistry.build(spec)
            except ConfigError as e:
                raise ConfigError(f"algorithm.loss.components[{i}]: {e}") from None
            components.append(component)
            names.append(name or spec["type"])
        super().__init__(components, weights, names)
