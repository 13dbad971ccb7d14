"""Schedules and controllers for beta and the learning rate, chosen by name from config.

A schedule has ``target`` ("beta" or "lr"), ``value(step, total_steps)`` (called before each
optimizer step) and ``update(metrics)`` (called after it with the step's reduced metrics,
for feedback controllers). Beta schedules return the loss's beta
(``reference_policy_kl_penalty``); learning-rate controllers return a multiplier applied on
top of ``training.lr_scheduler``. Their state is checkpointed with the run.

YAML::

    algorithm:
      beta_schedule: {type: linear, final_beta: 0.05}        # beta from the loss's beta
    training:
      lr_controller: {type: performance, metric: reward_mean}
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from rlfoundry.errors import ConfigError
from rlfoundry.registry import Registry

SCHEDULES: Registry[type] = Registry("schedule")


class Schedule:
    target = "beta"
    options: dict[str, Any] = {}

    def __init__(self, base: float, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown}; this schedule takes {sorted(self.options) or 'none'}")
        for k, v in {**self.options, **options}.items():
            setattr(self, k, v)
        self.base = float(base)
        self.current = self.base

    def value(self, step: int, total_steps: int) -> float:
        return self.current

    def update(self, metrics: Mapping[str, float]) -> None:
        pass


@SCHEDULES.register("constant")
class ConstantBeta(Schedule):
    """Beta stays at the loss's configured value."""


@SCHEDULES.register("linear")
class LinearBeta(Schedule):
    """Beta moves linearly from initial_beta (default: the loss's) to final_beta over the run."""

    options = {"initial_beta": None, "final_beta": None}

    def value(self, step: int, total_steps: int) -> float:
        start = self.base if self.initial_beta is None else float(self.initial_beta)
        end = start if self.final_beta is None else float(self.final_beta)
        progress = step / max(1, total_steps)
        self.current = start + (end - start) * progress
        return self.current


@SCHEDULES.register("warmup_cosine")
class WarmupCosineBeta(Schedule):
    """Beta ramps linearly from final_beta to the loss's beta over warmup_steps, then
    follows a cosine from that beta down to final_beta over decay_steps (default: the rest
    of the run). The seed's AdaptiveDPOLossFn jumps from final_beta back to the initial
    beta when warmup ends; this schedule is continuous."""

    options = {"final_beta": None, "warmup_steps": 0, "decay_steps": None}

    def value(self, step: int, total_steps: int) -> float:
        peak = self.base
        low = peak * 0.1 if self.final_beta is None else float(self.final_beta)
        warmup = int(self.warmup_steps)
        if step < warmup:
            self.current = low + (peak - low) * step / warmup
            return self.current
        decay = self.decay_steps or max(1, total_steps - warmup)
        progress = min(1.0, (step - warmup) / decay)
        self.current = low + (peak - low) * 0.5 * (1 + math.cos(math.pi * progress))
        return self.current


@SCHEDULES.register("reward_gap")
class RewardGapController(Schedule):
    """Feedback on the step's reward gap: beta *= up below low_gap, *= down above high_gap."""

    options = {"metric": "reward_gap", "low_gap": 0.1, "high_gap": 0.5, "up": 1.1, "down": 0.9,
               "min_beta": 1e-3, "max_beta": 10.0}

    def update(self, metrics: Mapping[str, float]) -> None:
        gap = metrics.get(self.metric)
        if gap is None or not math.isfinite(gap):
            return
        if gap < self.low_gap:
            self.current *= self.up
        elif gap > self.high_gap:
            self.current *= self.down
        self.current = min(max(self.current, self.min_beta), self.max_beta)


@SCHEDULES.register("performance")
class PerformanceLRController(Schedule):
    """Learning-rate multiplier from group performance: x up below low, x down above high."""

    target = "lr"
    options = {"metric": "reward_mean", "low": 0.5, "high": 0.8, "up": 1.1, "down": 0.9,
               "min_scale": 0.1, "max_scale": 10.0}

    def update(self, metrics: Mapping[str, float]) -> None:
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        if value < self.low:
            self.current *= self.up
        elif value > self.high:
            self.current *= self.down
        self.current = min(max(self.current, self.min_scale), self.max_scale)


def build_schedule(spec: Mapping[str, Any] | None, target: str, base: float, where: str) -> Schedule | None:
    """The schedule ``spec`` names (``{type: ..., options}``), checked against ``target``."""
    if not spec:
        return None
    spec = dict(spec)
    name = spec.pop("type", None)
    if name is None:
        raise ConfigError(f"{where}: needs a 'type' (one of {', '.join(SCHEDULES.names())})")
    try:
        cls = SCHEDULES.get(name)
    except ConfigError as e:
        raise ConfigError(f"{where}.type: {e}") from None
    if getattr(cls, "target", "beta") != target:
        raise ConfigError(f"{where}.type: '{name}' schedules {cls.target}, not {target}")
    try:
        return cls(base, **spec)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


PROBE_RUNS = (1, 2, 3, 10, 100, 1000)  # run lengths (steps) a schedule is checked over
PROBE_UPDATES = 1000  # controller updates per probe


class _Every(Mapping[str, float]):
    """Metrics in which every name has the same value (drives a controller one way)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __getitem__(self, key: str) -> float:
        return self.value

    def __iter__(self):
        return iter(())

    def __len__(self) -> int:
        return 0


def check_range(schedule: Schedule | None, where: str, *, positive: bool) -> None:
    """Probe ``schedule`` on copies: every step of runs of :data:`PROBE_RUNS` lengths (sampled
    for long runs), and for a controller :data:`PROBE_UPDATES` updates with metrics far below
    and far above its thresholds. A value that is NaN/inf, negative, or zero when ``positive``
    (a learning-rate multiplier) is a :class:`ConfigError` naming ``where``, the step and the
    value; so are a NaN/inf option and an option that makes the schedule fail."""
    if schedule is None:
        return
    bound = "> 0" if positive else ">= 0"

    def check(value: float, when: str) -> None:
        ok = math.isfinite(value) and (value > 0 if positive else value >= 0)
        if not ok:
            raise ConfigError(f"{where}: the {schedule.target} schedule reaches {value:.6g} {when}; "
                              f"it must stay finite and {bound} (check its options)")

    for name in schedule.options:
        value = getattr(schedule, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}.{name}: {value} is not a finite number")
    try:
        for total in PROBE_RUNS:
            probe = copy.deepcopy(schedule)
            for step in sorted({*range(0, total + 1, max(1, total // 100)), total}):
                check(float(probe.value(step, total)), f"at step {step} of a {total}-step run")
        if type(schedule).update is not Schedule.update:
            for level in (-1e9, 1e9):
                probe = copy.deepcopy(schedule)
                for n in range(1, PROBE_UPDATES + 1):
                    probe.update(_Every(level))
                    check(float(probe.value(n, PROBE_UPDATES)),
                          f"after {n} updates with its metric at {level:g}")
    except ConfigError:
        raise
    except (ArithmeticError, TypeError, ValueError) as e:
        raise ConfigError(f"{where}: the schedule fails with these options: "
                          f"{type(e).__name__}: {e}") from None


def loss_components(loss_fn) -> list[Any]:
    """The loss and, for composites, every nested component."""
    out = [loss_fn]
    for c in getattr(loss_fn, "components", []):
        out.extend(loss_components(c))
    return out


def _beta_owner(loss_fn):
    """The loss whose beta is "the" beta: the loss itself, or a composite's first component
    that has one (the main loss of multi-objective losses)."""
    return next((c for c in loss_components(loss_fn) if hasattr(c, "reference_policy_kl_penalty")), None)


def get_beta(loss_fn) -> float | None:
    owner = _beta_owner(loss_fn)
    return None if owner is None else float(owner.reference_policy_kl_penalty)


def set_beta(loss_fn, value: float) -> None:
    owner = _beta_owner(loss_fn)
    if owner is not None:
        owner.reference_policy_kl_penalty = float(value)
