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
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

from rlfoundry.errors import ConfigError, DataError, NonFiniteError, RLFoundryError
from rlfoundry.registry import Registry, did_you_mean, import_object
from rlfoundry.rewards.timeout import RewardTimeout, call_with_timeout

logger = logging.getLogger(__name__)

ON_ERROR: tuple[str, ...] = ("raise", "zero", "skip")


class RewardFunction(Protocol):
    """``fn(prompts, completions, **columns) -> list[float | None]`` (one value per sample)."""

    def __call__(
        self, prompts: list[Any], completions: list[str], **columns: Any
    ) -> Sequence[float | None]: ...


REWARDS: Registry[RewardFunction] = Registry("reward function")


class RewardError(RLFoundryError):
    """A reward function raised, or returned something other than one number/None per sample."""


class NonFiniteRewardError(RewardError, NonFiniteError):
    """A reward function returned NaN or inf (message names the function and the sample)."""


@dataclass
class RewardSpec:
    """One configured reward: a registered name or ``"module:function"``, its weight and options.

    ``label`` (default: ``name``) keys the per-function results; give two specs of the same
    function distinct labels.
    """

    name: str
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)
    label: str | None = None


def resolve_reward(name: str, args: Mapping[str, Any] | None = None) -> RewardFunction:
    """The reward function called ``name``, with ``args`` bound as keyword arguments.

    ``name`` is a registered name (``REWARDS.names()``) or an import path
    (``"my_module:my_reward"`` or ``"my_module.my_reward"``). Unknown names raise
    :class:`ConfigError` with a suggestion, and so do option names that are not parameters of
    the function (not checked for a function that takes ``**kwargs`` and has no keyword-only
    parameters, as it may read options from ``**kwargs``).
    """
    if name in REWARDS:
        fn: Any = REWARDS.get(name)
    elif ":" in name or "." in name:
        fn = import_object(name)
    else:
        fn = REWARDS.get(name)  # raises ConfigError with did-you-mean
    if not callable(fn):
        raise ConfigError(f"reward '{name}' is a {type(fn).__name__}, not a callable")
    if not args:
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
    return functools.partial(fn, **args)


def resolve_rewards(specs: Sequence[Any]) -> list[tuple[str, RewardFunction, float]]:
    """``(label, fn, weight)`` triples for :func:`compute_rewards` from names, dicts (keys
    ``name``, ``weight``, ``args``, ``label``) or objects with those attributes (a
    :class:`RewardSpec`, or the config's reward entries)."""
    out: list[tuple[str, RewardFunction, float]] = []
    for k, spec in enumerate(specs):
        if isinstance(spec, str):
            spec = RewardSpec(spec)
        elif isinstance(spec, Mapping):
            unknown = set(spec) - {"name", "weight", "args", "label"}
            if unknown or "name" not in spec:
                raise ConfigError(
                    f"rewards[{k}]: needs 'name' and allows 'weight', 'args', 'label'; "
                    f"got keys {sorted(spec)}"
                )
            spec = RewardSpec(**spec)
        name = spec.name
        label = getattr(spec, "label", None) or name
        if any(label == seen for seen, _, _ in out):
            raise ConfigError(f"rewards[{k}]: label '{label}' is used twice; set distinct 'label's")
        try:
            fn = resolve_reward(name, getattr(spec, "args", None))
        except ConfigError as e:
            raise ConfigError(f"rewards[{k}]: {e}") from None
        out.append((label, fn, float(getattr(spec, "weight", 1.0))))
    return out


class Scores(list):
    """A reward function's return value that also says *why* each sample got its reward.

    ``Scores(values, reasons, details)``: ``values`` as usual (numbers or None), ``reasons``
    one short category per sample (e.g. ``"passed"``, ``"timeout"``, ``"blocked"``) and
    ``details`` an optional longer text per sample. :func:`compute_rewards` keeps them in
    :attr:`RewardResult.reasons` and the trainer counts them as ``reward/<name>/<reason>``.
    """

    def __init__(self, values: Sequence[float | None], reasons: Sequence[str],
                 details: Sequence[str | None] | None = None) -> None:
        super().__init__(values)
        if len(reasons) != len(self) or (details is not None and len(details) != len(self)):
            raise ValueError(f"Scores: {len(self)} values need as many reasons (and details)")
        self.reasons = list(reasons)
        self.details = list(details) if details is not None else [None] * len(self)


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


def _sample_name(i: int, sample_ids: Sequence[Any] | None) -> str:
    return f"sample {sample_ids[i]!r}" if sample_ids is not None else f"sample {i}"


def _check_values(
    name: str, values: Any, n: int, indices: Sequence[int], sample_ids: Sequence[Any] | None
) -> list[float | None]:
    """Validate a function's return for the samples ``indices``; floats or None out."""
    if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__len__"):
        raise RewardError(
            f"reward '{name}' must return a list of numbers/None, got {type(values).__name__}"
        )
    if len(values) != n:
        raise RewardError(f"reward '{name}' returned {len(values)} values for {n} samples")
    out: list[float | None] = []
    for i, v in zip(indices, values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if not isinstance(v, numbers.Real):
            raise RewardError(
                f"reward '{name}' returned {type(v).__name__} {v!r} for "
                f"{_sample_name(i, sample_ids)} (index {i}); expected a number or None"
            )
        x = float(v)
        if not math.isfinite(x):
            raise NonFiniteRewardError(
                f"reward '{name}' returned {x} for {_sample_name(i, sample_ids)} (index {i}); "
                f"return None for 'no reward' instead"
            )
        out.append(x)
    return out


def _describe(e: BaseException) -> str:
    if isinstance(e, RewardTimeout):
        return str(e)
    return f"raised {type(e).__name__}: {e}"


def _per_sample(
    name: str,
    fn: RewardFunction,
    prompts: Sequence[Any],
    completions: Sequence[str],
    columns: Mapping[str, Sequence[Any]],
    sample_ids: Sequence[Any] | None,
    timeout: float | None,
) -> tuple[list[float | None], dict[int, Exception], list[Any]]:
    """Call ``fn`` on one sample at a time: values (None where it failed), the exceptions
    (a :class:`RewardTimeout` where it ran out of time) and each call's raw return."""
    values: list[float | None] = []
    failures: dict[int, Exception] = {}
    raws: list[Any] = []
    for i in range(len(completions)):
        try:
            raw = call_with_timeout(fn, timeout, [prompts[i]], [completions[i]],
                                    **{k: [v[i]] for k, v in columns.items()})
        except Exception as e:  # user code; reported by the caller
            failures[i] = e
            values.append(None)
            raws.append(None)
            continue
        values.extend(_check_values(name, raw, 1, [i], sample_ids))
        raws.append(raw)
    return values, failures, raws


def _explanations(raws: Sequence[Any], failures: Mapping[int, Exception], n: int
                  ) -> tuple[list[str | None], list[str | None]] | None:
    """Per-sample reasons/details from :class:`Scores` returns and from failures, or None."""
    if not failures and not any(isinstance(r, Scores) for r in raws):
        return None
    reasons: list[str | None] = [None] * n
    details: list[str | None] = [None] * n
    if len(raws) == 1 and isinstance(raws[0], Scores) and len(raws[0]) == n:  # one batch call
        reasons, details = list(raws[0].reasons), list(raws[0].details)
    elif len(raws) == n:  # one call per sample
        for i, raw in enumerate(raws):
            if isinstance(raw, Scores):
                reasons[i], details[i] = raw.reasons[0], raw.details[0]
    for i, e in failures.items():
        reasons[i] = "timeout" if isinstance(e, RewardTimeout) else "exception"
        details[i] = _describe(e)
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

    ``timeout`` (seconds, None: no limit) bounds each call (see
    :func:`~rlfoundry.rewards.timeout.call_with_timeout`); a call that runs out of time counts
    as a call that raised, so the same ``on_error`` policy applies, and the message says
    "timed out". Reasons (:class:`Scores`, failures) end up in ``RewardResult.reasons``.
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
    for name, fn, weight in reward_fns:
        try:
            raw = call_with_timeout(fn, timeout, list(prompts), list(completions),
                                    **{k: list(v) for k, v in columns.items()})
        except Exception as batch_error:  # user code: re-run per sample
            values, failures, raws = _per_sample(name, fn, prompts, completions, columns,
                                                 sample_ids, timeout)
            if on_error == "raise":
                if not failures:
                    raise RewardError(
                        f"reward '{name}' {_describe(batch_error)} on the batch of {n}, but on no "
                        f"single sample"
                    ) from batch_error
                i, e = next(iter(failures.items()))
                raise RewardError(
                    f"reward '{name}' {_describe(e)} on {_sample_name(i, sample_ids)} (index {i}; "
                    f"{len(failures)} of {n} failed). Fix the function, or set "
                    f"algorithm.reward_error to 'zero' or 'skip'"
                ) from e
            if failures:
                which = ", ".join(_sample_name(i, sample_ids) for i in list(failures)[:5])
                more = ", ..." if len(failures) > 5 else ""
                first = next(iter(failures.values()))
                logger.warning(
                    "reward '%s' failed on %d of %d samples (%s%s), first: %s; they get %s from it",
                    name, len(failures), n, which, more, _describe(first),
                    "0" if on_error == "zero" else "no reward",
                )
                if on_error == "zero":
                    values = [0.0 if i in failures else v for i, v in enumerate(values)]
            num_errors[name] = len(failures)
        else:
            values = _check_values(name, raw, n, range(n), sample_ids)
            num_errors[name] = 0
            failures, raws = {}, [raw]
        explained = _explanations(raws, failures, n)
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
