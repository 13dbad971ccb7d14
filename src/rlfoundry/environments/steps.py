"""Run environment calls (``step``, ``final_reward``) concurrently, each with its own deadline.

Each call runs in a daemon thread of its own, at most ``workers`` at a time. A call that
passes its deadline is abandoned (a Python thread cannot be killed; a daemon thread never
holds the process up at exit) and reported as timed out, so one hung episode costs its own
reward, never the run. A call that raises (``sys.exit`` included) is reported with the
exception and the ``file:line`` it came from. The results are :class:`CallOutcome` records,
in the order of the calls; the episode runner turns failures into ``reward_error`` outcomes.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rlfoundry.data.prompts import check_messages
from rlfoundry.environments.base import EnvStep
from rlfoundry.errors import DataError
from rlfoundry.safe_text import short_repr
from rlfoundry.user_code import describe_exit, raise_site

DEFAULT_WORKERS = 16


@dataclass
class CallOutcome:
    """One call's result: ``value`` when it returned, else ``error`` (what went wrong, for
    the log) and ``reason`` (``exception``, ``timeout`` or ``bad_return``)."""

    value: Any = None
    error: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def run_calls(calls: list[Callable[[], Any]], timeout: float | None,
              workers: int = DEFAULT_WORKERS) -> list[CallOutcome]:
    """Run ``calls`` concurrently (``workers`` at a time); each may take ``timeout`` seconds
    (None: no limit) from its own start."""
    results: list[CallOutcome | None] = [None] * len(calls)
    finished: queue.Queue[tuple[int, CallOutcome]] = queue.Queue()
    pending = list(range(len(calls)))[::-1]
    started: dict[int, float] = {}

    def work(i: int) -> None:
        try:
            outcome = CallOutcome(value=calls[i]())
        except BaseException as e:  # noqa: BLE001 -- user code; sys.exit included, reported per sample
            outcome = CallOutcome(error=f"{describe_exit(e)} at {raise_site(e)}", reason="exception")
        finished.put((i, outcome))

    while pending or started:
        while pending and len(started) < max(1, workers):
            i = pending.pop()
            started[i] = time.monotonic()
            threading.Thread(target=work, args=(i,), daemon=True, name=f"env-call-{i}").start()
        wait = None
        if timeout is not None:
            wait = max(0.0, min(started.values()) + timeout - time.monotonic())
        try:
            i, outcome = finished.get(timeout=wait)
            if i in started:  # not already abandoned
                del started[i]
                results[i] = outcome
        except queue.Empty:
            now = time.monotonic()
            for i in [i for i, t in started.items() if now - t >= timeout]:
                del started[i]
                results[i] = CallOutcome(error=f"timed out after {timeout:g} s "
                                         "(environment.step_timeout)", reason="timeout")
    return [r if r is not None else CallOutcome(error="never ran", reason="exception") for r in results]


def check_env_step(value: Any) -> EnvStep:
    """``value`` if it is a well-formed :class:`EnvStep`, else :class:`DataError` saying what
    is wrong (the caller names the sample)."""
    if not isinstance(value, EnvStep):
        raise DataError(f"returned {type(value).__name__} ({short_repr(value)}), not an EnvStep")
    observation = check_messages(value.observation, "returned a bad observation", "observation")
    reward = check_reward(value.reward, "reward")
    if not isinstance(value.done, bool):
        raise DataError(f"returned done={short_repr(value.done)}; it must be True or False")
    if not isinstance(value.metrics, Mapping):
        raise DataError(f"returned metrics of type {type(value.metrics).__name__}; "
                        "it must be a dict of name -> number")
    metrics = {}
    for key, number in value.metrics.items():
        if not isinstance(key, str) or isinstance(number, bool) or not isinstance(number, (int, float)) \
                or not math.isfinite(float(number)):
            raise DataError(f"returned metrics[{short_repr(key)}] = {short_repr(number)}; "
                            "metrics must be finite numbers under string names")
        metrics[key] = float(number)
    return EnvStep(observation=observation, reward=reward, done=value.done, state=value.state,
                   metrics=metrics)


def check_reward(value: Any, what: str) -> float | None:
    """A reward: None or one finite number (bools count as 0/1); ``what`` names it."""
    if value is None:
        return None
    if not isinstance(value, (int, float)):
        raise DataError(f"returned {what} {short_repr(value)} ({type(value).__name__}); it must be "
                        "a number or None")
    if not math.isfinite(float(value)):
        raise DataError(f"returned {what} {value}; it must be finite")
    return float(value)
