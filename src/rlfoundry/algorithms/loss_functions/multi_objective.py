"""Multi-objective losses: a main DPO/GRPO loss plus weighted auxiliary objectives, and
dynamic weight balancing between objectives.

``multi_objective_dpo`` / ``multi_objective_grpo`` take the main loss's own options plus

- ``auxiliary_losses``: names of registered objectives (a list, or a ``{name: weight}`` map),
  e.g. ``[perplexity, consistency, safety]`` (see ``objectives.py``);
- ``auxiliary_weights``: ``{name: weight}`` (default 1.0 each);
- ``auxiliary_options``: ``{name: {option: value}}``, e.g. ``{safety: {banned_phrases: [...]}}``.

``multi_objective_grpo`` also accepts the seed's ``diversity_weight`` (default 0.1) and
``quality_weight`` (default 0.0: quality needs a target column, see ``QualityLossFn``;
the seed's fallback target, a zero vector, carries no information).

``dynamic_multi_objective`` re-weights its objectives once per optimizer step (never per
micro-batch, so accumulation stays exact) by one of:

- ``moving_average`` (the seed's rule): after ``window`` steps, an objective whose mean over
  the last ``window`` steps is below its earlier mean gets ``w *= 1 + adaptation_rate``,
  otherwise ``w *= 1 - adaptation_rate``; weights stay >= ``min_weight``.
- ``dwa``: Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019):
  ``w_k = K * softmax_k(r_k / T)`` with ``r_k = L_k(t-1) / L_k(t-2)``.
- ``uncertainty``: homoscedastic uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018):
  ``sum_k exp(-s_k) L_k + s_k`` with learnable ``s_k`` (trained with the model).

The current weights are logged every step as ``weight/<name>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from rlfoundry.algorithms.loss_functions.composite import ComposableLossFunction
from rlfoundry.algorithms.loss_functions.dpo import DPOLossFn
from rlfoundry.algorithms.loss_functions.grpo import GRPOLossFn
from rlfoundry.algorithms.loss_functions.registry import LossFunctionRegistry
from rlfoundry.errors import ConfigError

AUX_KEYS = ("auxiliary_losses", "auxiliary_weights", "auxiliary_options")


def build_auxiliaries(cfg: dict[str, Any]) -> tuple[list[Any], list[float], list[str]]:
    """Pop the auxiliary keys from ``cfg`` and build the objectives they name."""
    names = cfg.pop("auxiliary_losses", []) or []
    weights = dict(cfg.pop("auxiliary_weights", {}) or {})
    options = dict(cfg.pop("auxiliary_options", {}) or {})
    if isinstance(names, Mapping):
        weights = {**names, **weights}
        names = list(names)
    if not isinstance(names, list):
        raise ConfigError("algorithm.loss.auxiliary_losses: give a list of objective names "
                          "or a {name: weight} map")
    for key, given in (("auxiliary_weights", weights), ("auxiliary_options", options)):
        stray = sorted(set(given) - set(names))
        if stray:
            raise ConfigError(f"algorithm.loss.{key}: {stray} not listed in auxiliary_losses {names}")
    components = []
    for name in names:
        try:
            components.append(LossFunctionRegistry.build({"type": name, **dict(options.get(name) or {})}))
        except ConfigError as e:
            raise ConfigError(f"algorithm.loss.auxiliary_losses[{name}]: {e}") from None
    return components, [float(weights.get(n, 1.0)) for n in names], list(names)


class _MainPlusAuxiliaries(ComposableLossFunction):
    main_cls: type = DPOLossFn
    main_name = "dpo"

    def __init__(self, cfg: Mapping[str, Any] | None = None) -> None:
        cfg = {k: v for k, v in dict(cfg or {}).items() if k != "type"}
        aux, weights, names = build_auxiliaries(cfg)
        extra = self.seed_auxiliaries(cfg)
        main = self.main_cls(cfg)
        super().__init__([main, *aux, *extra[0]], [1.0, *weights, *extra[1]],
                         [self.main_name, *names, *extra[2]])

    def seed_auxiliaries(self, cfg: dict[str, Any]):
        return [], [], []

    @property
    def main(self):
        return self.components[0]


@LossFunctionRegistry.register("multi_objective_dpo")
class MultiObjectiveDPOLossFn(_MainPlusAuxiliaries):
    """DPO plus weighted auxiliary objectives (perplexity, consistency, safety, ...)."""


@LossFunctionRegistry.register("multi_objective_grpo")
class MultiObjectiveGRPOLossFn(_MainPlusAuxiliaries):
    """GRPO plus diversity (within-group) and quality (distance to targets) objectives."""

    main_cls = GRPOLossFn
    main_name = "grpo"

    def seed_auxiliaries(self, cfg: dict[str, Any]):
        out: tuple[list, list, list] = ([], [], [])
        for name, default in (("diversity", 0.1), ("quality", 0.0)):
            weight = float(cfg.pop(f"{name}_weight", default))
            if weight:
                out[0].append(LossFunctionRegistry.build({"type": name}))
                out[1].append(weight)
                out[2].append(name)
        return out


class _CallableObjective:
    """Wrap ``fn(batch, model_outputs) -> loss`` (the seed's objective functions)."""

    reduction = "sequence"

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def __call__(self, batch, model_outputs):
        out = self.fn(batch, model_outputs)
        return out if isinstance(out, tuple) else (out, {})


SCHEMES = ("moving_average", "dwa", "uncertainty")


@LossFunctionRegistry.register("dynamic_multi_objective")
class DynamicMultiObjectiveLossFn(ComposableLossFunction):
    """Objectives re-weighted every step (moving-average rule, DWA, or uncertainty)."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        cfg = {k: v for k, v in dict(cfg).items() if k != "type"}
        objectives = cfg.pop("objectives", None)
        if not isinstance(objectives, Mapping) or not objectives:
            raise ConfigError("algorithm.loss.objectives: give a map {name: loss spec or callable}")
        initial = dict(cfg.pop("initial_weights", {}) or {})
        self.scheme = cfg.pop("scheme", "moving_average")
        self.adaptation_rate = float(cfg.pop("adaptation_rate", 0.01))
        self.window = int(cfg.pop("window", 10))
        self.temperature = float(cfg.pop("temperature", 2.0))
        self.min_weight = float(cfg.pop("min_weight", 0.01))
        if cfg:
            raise ConfigError(f"algorithm.loss: dynamic_multi_objective does not take {sorted(cfg)}")
        if self.scheme not in SCHEMES:
            raise ConfigError(f"algorithm.loss.scheme: {self.scheme!r} is not one of {SCHEMES}")
        stray = sorted(set(initial) - set(objectives))
        if stray:
            raise ConfigError(f"algorithm.loss.initial_weights: {stray} are not objectives {list(objectives)}")
        components = []
        for name, spec in objectives.items():
            if callable(spec):
                components.append(_CallableObjective(spec))
            elif isinstance(spec, Mapping) and "type" in spec:
                try:
                    components.append(LossFunctionRegistry.build(dict(spec)))
                except ConfigError as e:
                    raise ConfigError(f"algorithm.loss.objectives.{name}: {e}") from None
            else:
                raise ConfigError(f"algorithm.loss.objectives.{name}: give a loss spec "
                                  f"{{type: ..., ...}} or a callable, got {spec!r}")
        names = list(objectives)
        super().__init__(components, [float(initial.get(n, 1.0)) for n in names], names)
        self.initial_weights = list(self.weights)
        self.histories: dict[str, list[float]] = {n: [] for n in names}
        self.log_vars = (torch.zeros(len(names), requires_grad=True)
                         if self.scheme == "uncertainty" else None)

    @property
    def current_weights(self) -> dict[str, float]:
        return dict(zip(self.names, self.weights))

    def parameters(self) -> list[torch.Tensor]:
        """Learnable loss parameters (the uncertainty scheme's log-variances)."""
        return [self.log_vars] if self.log_vars is not None else []

    def __call__(self, batch, model_outputs):
        terms, metrics = self.weighted_terms(batch, model_outputs)
        if self.log_vars is not None:
            s = self.log_vars.to(terms[0].device)
            total = sum(torch.exp(-s[i]) * t + s[i] for i, t in enumerate(terms))
            effective = torch.exp(-s.detach())
        else:
            total = sum(w * t for w, t in zip(self.weights, terms))
            effective = self.weights
        metrics.update({f"weight/{n}": w for n, w in zip(self.names, effective)})
        return total, metrics

    def on_step_end(self, metrics: Mapping[str, float]) -> None:
        """Update weights from this step's (accumulated, exact) objective losses."""
        super().on_step_end(metrics)
        values = {n: metrics.get(f"{n}/loss") for n in self.names}
        if any(v is None or not math.isfinite(v) for v in values.values()):
            return
        for n, v in values.items():
            self.histories[n].append(float(v))
        if self.scheme == "moving_average":
            self._moving_average()
        elif self.scheme == "dwa":
            self._dwa()

    def _moving_average(self) -> None:
        for i, n in enumerate(self.names):
            h = self.histories[n]
            if len(h) <= self.window:
                continue
            recent = sum(h[-self.window:]) / self.window
            earlier = sum(h[:-self.window]) / (len(h) - self.window)
            factor = 1 + self.adaptation_rate if recent < earlier else 1 - self.adaptation_rate
            self.weights[i] = max(self.weights[i] * factor, self.min_weight)

    def _dwa(self) -> None:
        if any(len(h) < 2 for h in self.histories.values()):
            return
        ratios = [h[-1] / h[-2] if h[-2] else 1.0 for h in self.histories.values()]
        exps = [math.exp(r / self.temperature) for r in ratios]
        k = len(exps)
        self.weights = [k * e / sum(exps) for e in exps]

    def state_dict(self) -> dict[str, Any]:
        state = {"weights": list(self.weights), "histories": {k: list(v) for k, v in self.histories.items()},
                 "components": super().state_dict()}
        if self.log_vars is not None:
            state["log_vars"] = self.log_vars.detach().clone()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.weights = list(state["weights"])
        self.histories = {k: list(v) for k, v in state["histories"].items()}
        super().load_state_dict(state.get("components", {}))
        if self.log_vars is not None and "log_vars" in state:
            with torch.no_grad():
                self.log_vars.copy_(state["log_vars"])
