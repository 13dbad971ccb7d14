"""One reward function's calls: in the trainer's process or in a killable worker process.

A call (the whole batch, or one sample) ends as :class:`Scored` (its return value, checked:
one finite number or None per sample) or as the exception that describes its failure: what
it raised (``sys.exit`` and ``KeyboardInterrupt`` included, as :func:`describe_exit` words
them), :class:`RewardTimeout`, or :class:`RewardCallError` for a call in a worker that raised
or crashed. A malformed return value is not a failure of one sample but a bug of the function:
:class:`RewardError` is raised at once. Where a function runs: :func:`runs_isolated`.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import torch

from rlfoundry.errors import NonFiniteError, RLFoundryError
from rlfoundry.rewards.timeout import RewardTimeout, call_with_timeout
from rlfoundry.rewards.worker import Died, Raised, TimedOut, fork_available, run_forked
from rlfoundry.user_code import InterruptWatch, describe_exit, raise_site

logger = logging.getLogger(__name__)

IN_PROCESS_ATTR = "rlfoundry_in_process"


class RewardError(RLFoundryError):
    """A reward function raised, or returned something other than one number/None per sample."""


class NonFiniteRewardError(RewardError, NonFiniteError):
    """A reward function returned NaN or inf (message names the function and the sample)."""


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


def sample_name(i: int, sample_ids: Sequence[Any] | None) -> str:
    return f"sample {sample_ids[i]!r}" if sample_ids is not None else f"sample {i}"


def check_values(
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
                f"{sample_name(i, sample_ids)} (index {i}); expected a number or None"
            )
        x = float(v)
        if not math.isfinite(x):
            raise NonFiniteRewardError(
                f"reward '{name}' returned {x} for {sample_name(i, sample_ids)} (index {i}); "
                f"return None for 'no reward' instead"
            )
        out.append(x)
    return out


@dataclass
class Scored:
    """One successful call: checked values for its samples, and reasons/details if it
    returned :class:`Scores`."""

    values: list[float | None]
    reasons: list[str | None] | None = None
    details: list[str | None] | None = None


@dataclass
class _Invalid:
    """A call in a worker returned something malformed: the parent raises ``error``."""

    error: RewardError


class RewardCallError(Exception):
    """A reward call in a worker process raised, exited or crashed (``reason`` "exception"
    or "crashed"; ``site`` where it raised, ``remote_traceback`` the worker's traceback)."""

    def __init__(self, description: str, reason: str, site: str = "", remote_traceback: str = ""):
        super().__init__(description)
        self.reason, self.site, self.remote_traceback = reason, site, remote_traceback


def _checked(name: str, raw: Any, indices: Sequence[int], sample_ids: Sequence[Any] | None
             ) -> Scored:
    values = check_values(name, raw, len(indices), indices, sample_ids)
    if isinstance(raw, Scores):
        return Scored(values, list(raw.reasons), list(raw.details))
    return Scored(values)


def _subset(indices: Sequence[int], prompts: Sequence[Any], completions: Sequence[str],
            columns: Mapping[str, Sequence[Any]]) -> tuple[list, list, dict[str, list]]:
    return ([prompts[i] for i in indices], [completions[i] for i in indices],
            {k: [v[i] for i in indices] for k, v in columns.items()})


def _worker_job(name: str, fn: Any, indices: Sequence[int], args: tuple,
                sample_ids: Sequence[Any] | None) -> Scored | _Invalid:
    """Runs in the worker: user exceptions propagate (the worker reports them), malformed
    returns come back as :class:`_Invalid`."""
    raw = fn(args[0], args[1], **args[2])
    try:
        return _checked(name, raw, indices, sample_ids)
    except RewardError as e:
        return _Invalid(e)


def _from_worker(outcome: Any, timeout: float | None) -> Scored | BaseException:
    if isinstance(outcome, Scored):
        return outcome
    if isinstance(outcome, _Invalid):
        raise outcome.error
    if isinstance(outcome, TimedOut):
        return RewardTimeout(f"timed out after {outcome.seconds:g} s")
    if isinstance(outcome, Raised):
        hint = (" (a reward in a worker process cannot use CUDA: give it in_process: true)"
                if "CUDA" in outcome.description and "fork" in outcome.description else "")
        return RewardCallError(outcome.description + hint, "exception", outcome.site,
                               outcome.traceback)
    if isinstance(outcome, Died):
        return RewardCallError(outcome.description, "crashed")
    # the function shares the worker's descriptors: it wrote something of its own into the
    # result pipe (the worker is no security boundary, but its reply must not be a raw TypeError)
    return RewardCallError(f"sent a malformed reply from its worker process (a "
                           f"{type(outcome).__name__}); did it write to inherited file "
                           f"descriptors?", "crashed")


@dataclass(frozen=True)
class Call:
    """One call of reward function ``fn`` (reported as ``name``) on the samples ``indices``."""

    name: str
    fn: Any
    indices: Sequence[int]


def outcomes(calls: Sequence[Call], data: tuple, sample_ids: Sequence[Any] | None,
             timeout: float | None, isolated: bool, watch: InterruptWatch
             ) -> Iterator[tuple[int, Scored | BaseException]]:
    """``(k, outcome)`` for each of ``calls`` in order, all in one worker (``isolated``; a new
    one after a kill) or all here: checked values, or the error of a call that raised, exited,
    crashed or timed out (a malformed return value raises :class:`RewardError` at once)."""
    if isolated:
        jobs = [functools.partial(_worker_job, c.name, c.fn, c.indices,
                                  _subset(c.indices, *data), sample_ids) for c in calls]
        with closing(run_forked(jobs, timeout)) as replies:  # closing kills the worker
            for k, outcome in replies:
                yield k, _from_worker(outcome, timeout)
        return
    for k, c in enumerate(calls):
        prompts, completions, columns = _subset(c.indices, *data)
        try:
            raw = call_with_timeout(c.fn, timeout, prompts, completions, **columns)
        except BaseException as e:  # user code: sys.exit and KeyboardInterrupt included
            if watch.is_real(e):  # a real Ctrl-C stops the run
                raise
            yield k, e
            continue
        yield k, _checked(c.name, raw, c.indices, sample_ids)


def failure_reason(e: BaseException) -> str:
    if isinstance(e, RewardTimeout):
        return "timeout"
    return getattr(e, "reason", "exception")


def describe_failure(e: BaseException) -> str:
    if isinstance(e, (RewardTimeout, RewardCallError)):
        return str(e)
    return describe_exit(e)


def failure_site(e: BaseException) -> str:
    if isinstance(e, RewardTimeout):
        return ""
    if isinstance(e, RewardCallError):
        return e.site
    return raise_site(e)


def in_process_flag(fn: Any) -> bool | None:
    """The ``in_process`` choice attached to ``fn`` (by :func:`in_process`, a spec's
    ``in_process`` key, or a built-in), looking through ``functools.partial``; None: unset."""
    while True:
        flag = getattr(fn, IN_PROCESS_ATTR, None)
        if flag is not None or not isinstance(fn, functools.partial):
            return flag
        fn = fn.func


def in_process(fn: Any, flag: bool = True) -> Any:
    """``fn`` marked to run in the trainer's process (``flag=True``: shared state and CUDA
    work, but a timeout only interrupts Python code and cannot stop a function that catches
    it) or always in a killable worker process (``flag=False``, even without a timeout)."""
    wrapped = functools.partial(fn)
    functools.update_wrapper(wrapped, fn)  # keeps __name__ (the default label) and the docs
    setattr(wrapped, IN_PROCESS_ATTR, bool(flag))
    return wrapped


_warned_no_fork = False


def runs_isolated(fn: Any, timeout: float | None) -> bool:
    """Whether ``fn`` runs in a worker: by default exactly when a timeout is set."""
    global _warned_no_fork
    flag = in_process_flag(fn)
    isolated = timeout is not None if flag is None else not flag
    if isolated and not fork_available():
        if not _warned_no_fork:
            logger.warning("this platform cannot fork: reward functions run in the trainer's "
                           "process, where a timeout cannot stop a function that catches it")
            _warned_no_fork = True
        return False
    return isolated


