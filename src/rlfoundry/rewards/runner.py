"""Resolve reward functions by name and run them over a batch of completions.

A reward function is any callable ``fn(prompts, completions, **columns) -> list[float | None]``.
``columns`` holds the extra data columns of the prompt rows (e.g. ``answer=[...]``), each a
list aligned with the samples (a prompt's columns are repeated for each of its completions).
``None`` means "no reward for this sample". Functions should accept ``**kwargs`` and ignore the
columns they do not use; their own options are keyword-only arguments with defaults, bound by
:func:`resolve_reward` from config ``args``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from rlfoundry.errors import ConfigError, DataError
from rlfoundry.registry import Registry, did_you_mean, import_object
from rlfoundry.rewards.calls import (
    Call,
    RewardError,
    Scored,
    describe_failure,
    failure_reason,
    failure_site,
    outcomes,
    runs_isolated,
    sample_name,
)
from rlfoundry.rewards.calls import NonFiniteRewardError as NonFiniteRewardError  # re-exported
from rlfoundry.rewards.calls import Scores as Scores  # re-exported
from rlfoundry.rewards.calls import in_process as mark_in_process
from rlfoundry.user_code import InterruptWatch, origin, watching_interrupts

logger = logging.getLogger(__name__)

ON_ERROR: tuple[str, ...] = ("raise", "zero", "skip")


class RewardFunction(Protocol):
    """``fn(prompts, completions, **columns) -> list[float | None]`` (one value per sample)."""

    def __call__(
        self, prompts: list[Any], completions: list[str], **columns: Any
    ) -> Sequence[float | None]: ...


REWARDS: Registry[RewardFunction] = Registry("reward function")


@dataclass
class RewardSpec:
    """One configured reward: a registered name or ``"module:function"``, its weight and options.

    ``label`` (default: ``name``) keys the per-function results; give two specs of the same
    function distinct labels. ``in_process``: see :func:`in_process` (None: run in a killable
    worker process exactly when a timeout is set).
    """

    name: str
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    in_process: bool | None = None


def resolve_reward(name: str, args: Mapping[str, Any] | None = None,
                   in_process: bool | None = None) -> RewardFunction:
    """The reward function called ``name``, with ``args`` bound as keyword arguments.

    ``name`` is a registered name (``REWARDS.names()``) or an import path
    (``"my_module:my_reward"`` or ``"my_module.my_reward"``). Unknown names raise
    :class:`ConfigError` with a suggestion, and so do option names that are not parameters of
    the function (not checked for a function that takes ``**kwargs`` and has no keyword-only
    parameters, as it may read options from ``**kwargs``). ``in_process`` (None: the
    function's own default) is attached as by :func:`in_process`.
    """
    fn = _resolve(name, args)
    return fn if in_process is None else mark_in_process(fn, in_process)


def _resolve(name: str, args: Mapping[str, Any] | None) -> RewardFunction:
    if name in REWARDS:
        fn: Any = REWARDS.get(name)
    elif ":" in name or "." in name:
        fn = import_object(name)
    else:
        fn = REWARDS.get(name)  # raises ConfigError with did-you-mean
    if not callable(fn):
        raise ConfigError(f"reward '{name}' is a {type(fn).__name__}, not a callable")
    if not args:
        _check_options(fn, {})
        return fn
    for key in ("prompts", "completions"):
        if key in args:
            raise ConfigError(f"reward '{name}': '{key}' cannot be an option")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # no signature to check against: bind blindly
        params = []
    kinds = {p.kind for p in params}
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    # Options are checked against the named parameters unless the function takes **kwargs
    # and declares no keyword-only parameters (then it may read its options from **kwargs).
    if params and (named[0] in kinds or inspect.Parameter.VAR_KEYWORD not in kinds):
        options = [p.name for p in params[2:] if p.kind in named]
        for key in args:
            if key not in options:
                raise ConfigError(
                    f"reward '{name}' has no option '{key}'{did_you_mean(key, options)}; "
                    f"its options: {', '.join(options) or '(none)'}"
                )
    _check_options(fn, args)
    return functools.partial(fn, **args)


def _check_options(fn: Any, args: Mapping[str, Any]) -> None:
    """A function's own option check, ``fn.check_options(**args)`` when it has one (the
    ``reward_model`` reward checks its model directory), so bad options fail at config load."""
    check = getattr(fn, "check_options", None)
    if callable(check):
        check(**dict(args))


def resolve_rewards(specs: Sequence[Any]) -> list[tuple[str, RewardFunction, float]]:
    """``(label, fn, weight)`` triples for :func:`compute_rewards` from names, dicts (keys
    ``name``, ``weight``, ``args``, ``label``, ``in_process``) or objects with those attributes (a
    :class:`RewardSpec`, or the config's reward entries)."""
    out: list[tuple[str, RewardFunction, float]] = []
    for k, spec in enumerate(specs):
        if isinstance(spec, str):
            spec = RewardSpec(spec)
        elif isinstance(spec, Mapping):
            unknown = set(spec) - {"name", "weight", "args", "label", "in_process"}
            if unknown or "name" not in spec:
                raise ConfigError(
                    f"rewards[{k}]: needs 'name' and allows 'weight', 'args', 'label', 'in_process'; "
                    f"got keys {sorted(spec)}"
                )
            spec = RewardSpec(**spec)
        name = spec.name
        label = getattr(spec, "label", None) or name
        if any(label == seen for seen, _, _ in out):
            raise ConfigError(f"rewards[{k}]: label '{label}' is used twice; set distinct 'label's")
        try:
            fn = resolve_reward(name, getattr(spec, "args", None), getattr(spec, "in_process", None))
        except ConfigError as e:
            raise ConfigError(f"rewards[{k}]: {e}") from None
        out.append((label, fn, float(getattr(spec, "weight", 1.0))))
    return out


@dataclass
class RewardResult:
    """What :func:`compute_rewards` returns.

    ``total`` [N] float64: the weighted sum, NaN where no function (of nonzero weight) gave the
    sample a reward. ``per_function`` name -> [N] float64 raw (unweighted) rewards, NaN for
    ``None``. ``num_errors`` name -> how many samples the function raised on (or timed out
    on). ``reasons`` / ``details`` name -> one entry per sample, for functions that return
    :class:`Scores` or that failed under ``on_error`` "zero"/"skip" (reason ``"exception"``
    or ``"timeout"``); None where nothing was said.
    """

    total: torch.Tensor
    per_function: dict[str, torch.Tensor]
    num_errors: dict[str, int]
    reasons: dict[str, list[str | None]] = field(default_factory=dict)
    details: dict[str, list[str | None]] = field(default_factory=dict)

    def reason_counts(self) -> dict[str, float]:
        """``reward/<name>/<reason>`` -> number of samples, for every reason given."""
        out: dict[str, float] = {}
        for name, reasons in self.reasons.items():
            for reason in reasons:
                if reason is not None:
                    key = f"reward/{name}/{reason}"
                    out[key] = out.get(key, 0.0) + 1.0
        return dict(sorted(out.items()))

    def summary(self) -> dict[str, float]:
        """Flat metrics: ``reward_mean``/``reward_std`` over valid totals, ``reward/<name>``
        means, ``reward/<name>/errors`` where nonzero (NaN when nothing is valid)."""

        def mean(t: torch.Tensor) -> float:
            valid = t[~torch.isnan(t)]
            return float(valid.mean()) if valid.numel() else math.nan

        valid = self.total[~torch.isnan(self.total)]
        out = {
            "reward_mean": mean(self.total),
            "reward_std": float(valid.std()) if valid.numel() > 1 else math.nan,
        }
        for name, values in self.per_function.items():
            out[f"reward/{name}"] = mean(values)
            if self.num_errors.get(name):
                out[f"reward/{name}/errors"] = float(self.num_errors[name])
        out.update(self.reason_counts())
        return out


def _explanations(scored: Mapping[int, Scored], batch: bool,
                  failures: Mapping[int, BaseException], n: int
                  ) -> tuple[list[str | None], list[str | None]] | None:
    """Per-sample reasons/details from :class:`Scores` returns and from failures, or None."""
    if not failures and not any(s.reasons is not None for s in scored.values()):
        return None
    reasons: list[str | None] = [None] * n
    details: list[str | None] = [None] * n
    for i, s in scored.items():
        if s.reasons is None:
            continue
        if batch:  # one call for all samples
            reasons, details = list(s.reasons), list(s.details or [None] * n)
        else:
            reasons[i], details[i] = s.reasons[0], (s.details or [None])[0]
    for i, e in failures.items():
        reasons[i] = failure_reason(e)
        details[i] = describe_failure(e)
    return reasons, details


def compute_rewards(
    reward_fns: Sequence[tuple[str, RewardFunction, float]],
    prompts: Sequence[Any],
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]] | None = None,
    on_error: Literal["raise", "zero", "skip"] = "raise",
    sample_ids: Sequence[Any] | None = None,
    timeout: float | None = None,
) -> RewardResult:
    """Run each ``(name, fn, weight)`` over the ``N`` samples and combine the rewards.

    ``total[i] = sum_f weight_f * r_f[i]`` over the functions ``f`` of nonzero weight that
    gave sample ``i`` a number; it is NaN only when none did (``None`` rewards are left out
    of the sum rather than counted as 0). Weight-0 functions are still run and reported in
    ``per_function`` (handy for monitoring) but never make a total non-NaN.

    Each function returns one number (bools count as 0/1) or ``None`` per sample; a wrong
    length, another type, or NaN/inf raises :class:`RewardError` naming the function (and
    the sample). When a function raises, it is called again one sample at a time to find the
    samples that fail (an exception from a batch call cannot be attributed to a sample;
    re-calling is cheap for the small batches of RL training):

    - ``on_error="raise"``: :class:`RewardError` naming the function, the exception and the
      first failing sample (``sample_ids[i]`` if given, else the index ``i``);
    - ``"zero"``: failing samples get 0 from that function (a warning is logged);
    - ``"skip"``: failing samples get ``None`` from that function (a warning is logged).

    The other samples get their values from the per-sample calls. ``num_errors`` counts
    the failing samples per function.

    ``timeout`` (seconds, None: no limit) bounds each call: the batch call, then each
    per-sample call. Under a timeout a function runs in a forked worker process
    (:mod:`rlfoundry.rewards.worker`) that is SIGKILLed when a call runs out of time, so
    nothing the function does can hold the run up; without one it runs in this process. A
    function marked :func:`in_process` (``True``) always runs here, where the time limit is
    :func:`~rlfoundry.rewards.timeout.call_with_timeout`; one marked ``False`` always runs in
    a worker. A call that times out, exits (``sys.exit``, ``KeyboardInterrupt`` raised by the
    function itself -- a real Ctrl-C still stops the run) or kills its worker (segfault,
    ``os._exit``) counts as a call that raised, so the same ``on_error`` policy applies; the
    reason is "timeout", "exception" or "crashed". Reasons (:class:`Scores`, failures) end up
    in ``RewardResult.reasons``.
    """
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
    n = len(completions)
    columns = dict(columns or {})
    if len(prompts) != n:
        raise DataError(f"got {len(prompts)} prompts for {n} completions")
    if sample_ids is not None and len(sample_ids) != n:
        raise DataError(f"got {len(sample_ids)} sample_ids for {n} completions")
    for key, col in columns.items():
        if key in ("prompts", "completions"):
            raise DataError(f"a data column may not be called '{key}' (reserved for rewards)")
        if len(col) != n:
            raise DataError(f"column '{key}' has {len(col)} values for {n} samples")
    names = [name for name, _, _ in reward_fns]
    if len(set(names)) != len(names):
        raise ConfigError(f"reward names must be distinct, got {names}")
    for name, _, weight in reward_fns:
        if not math.isfinite(float(weight)):
            raise ConfigError(f"reward '{name}' has a non-finite weight {weight}")

    per_function: dict[str, torch.Tensor] = {}
    num_errors: dict[str, int] = {}
    reasons: dict[str, list[str | None]] = {}
    details: dict[str, list[str | None]] = {}
    total = torch.zeros(n, dtype=torch.float64)
    present = torch.zeros(n, dtype=torch.bool)
    data = (prompts, completions, columns)
    with watching_interrupts() as watch:
        firsts = _batch_calls(reward_fns, data, sample_ids, timeout, watch)
        for name, fn, weight in reward_fns:
            values, failures, scored, batch = _run_one(name, fn, firsts[name], data, sample_ids,
                                                       timeout, watch)
            if failures:
                _report_failures(name, fn, failures, n, on_error, sample_ids)
                if on_error == "zero":
                    values = [0.0 if i in failures else v for i, v in enumerate(values)]
            num_errors[name] = len(failures)
            explained = _explanations(scored, batch, failures, n)
            if explained is not None:
                reasons[name], details[name] = explained
            r = torch.tensor([math.nan if v is None else v for v in values], dtype=torch.float64)
            per_function[name] = r
            if weight != 0:
                has = ~torch.isnan(r)
                total = total + torch.where(has, r * float(weight), torch.zeros_like(r))
                present |= has
    total = torch.where(present, total, torch.full_like(total, math.nan))
    return RewardResult(total, per_function, num_errors, reasons, details)


def _batch_calls(reward_fns: Sequence[tuple[str, RewardFunction, float]], data: tuple,
                 sample_ids: Sequence[Any] | None, timeout: float | None, watch: InterruptWatch
                 ) -> dict[str, Scored | BaseException]:
    """Each function's call on the whole batch; those that run isolated share one worker
    (one fork per step when nothing fails)."""
    n = len(data[1])
    out: dict[str, Scored | BaseException] = {}
    for isolated in (True, False):
        calls = [Call(name, fn, range(n)) for name, fn, _ in reward_fns
                 if runs_isolated(fn, timeout) == isolated]
        if calls:
            with closing(outcomes(calls, data, sample_ids, timeout, isolated, watch)) as replies:
                for k, outcome in replies:
                    out[calls[k].name] = outcome
    return out


def _run_one(name: str, fn: RewardFunction, first: Scored | BaseException, data: tuple,
             sample_ids: Sequence[Any] | None, timeout: float | None, watch: InterruptWatch
             ) -> tuple[list[float | None], dict[int, BaseException], dict[int, Scored], bool]:
    """One function's result from its batch call ``first``: values (None where it failed),
    failures by sample, the successful calls by sample (keyed 0 for the batch call) and
    whether the batch call did it. A failed batch call (raised, exited, crashed or timed out)
    is retried one sample at a time to find the samples that fail; if none does, the batch
    failure is a :class:`RewardError`."""
    n = len(data[1])
    if isinstance(first, Scored):
        return first.values, {}, {0: first}, True
    values: list[float | None] = [None] * n
    failures: dict[int, BaseException] = {}
    scored: dict[int, Scored] = {}
    singles = [Call(name, fn, [i]) for i in range(n)]
    isolated = runs_isolated(fn, timeout)
    with closing(outcomes(singles, data, sample_ids, timeout, isolated, watch)) as replies:
        for i, outcome in replies:
            if isinstance(outcome, Scored):
                values[i], scored[i] = outcome.values[0], outcome
            else:
                failures[i] = outcome
    if not failures:
        raise RewardError(
            f"reward '{name}' {describe_failure(first)} on the batch of {n}, but on no single "
            f"sample ({origin(fn)})") from first
    return values, failures, scored, False


def _report_failures(name: str, fn: RewardFunction, failures: Mapping[int, BaseException],
                     n: int, on_error: str, sample_ids: Sequence[Any] | None) -> None:
    """Raise :class:`RewardError` for the first failure (``on_error="raise"``) or log them."""
    i, e = next(iter(failures.items()))
    site = failure_site(e)
    where = f"{origin(fn)}" + (f", at {site}" if site else "")
    if on_error == "raise":
        raise RewardError(
            f"reward '{name}' {describe_failure(e)} on {sample_name(i, sample_ids)} (index {i}; "
            f"{len(failures)} of {n} failed) in {where}. Fix the function, or set "
            f"algorithm.reward_error to 'zero' or 'skip'"
        ) from e
    which = ", ".join(sample_name(j, sample_ids) for j in list(failures)[:5])
    more = ", ..." if len(failures) > 5 else ""
    logger.warning(
        "reward '%s' (%s) failed on %d of %d samples (%s%s), first: %s; they get %s from it",
        name, where, len(failures), n, which, more, describe_failure(e),
        "0" if on_error == "zero" else "no reward",
    )
