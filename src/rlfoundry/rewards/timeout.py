"""A time limit for one call of a reward function (``algorithm.reward_timeout``).

In the main thread the limit is a ``SIGALRM`` timer whose handler raises
:class:`RewardTimeout` inside the function, so a Python loop or a ``sleep`` is interrupted and
unwinds normally; code stuck inside a C extension is interrupted only when it returns to
Python. Where a timer cannot be used (another thread, or a ``SIGALRM`` handler or timer
already installed by someone else) the call runs in a daemon thread that is abandoned when
the limit passes: the caller goes on at once, but the hung call keeps running in the
background, so prefer the main thread. Either way a function that catches
:class:`RewardTimeout` (``except Exception``) is not stopped: this is only the limit of
rewards marked ``in_process``; :func:`~rlfoundry.rewards.compute_rewards` runs every other
reward under a timeout in a worker process it kills (:mod:`rlfoundry.rewards.worker`). For
untrusted code use the ``code_execution`` reward, which runs each sample in a sandbox.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class RewardTimeout(Exception):
    """A reward function call ran longer than its time limit."""


def call_with_timeout(fn: Callable[..., Any], timeout: float | None, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, raising :class:`RewardTimeout` after ``timeout`` seconds
    (``None``: no limit)."""
    if timeout is None:
        return fn(*args, **kwargs)
    if timeout <= 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    if _can_use_alarm():
        return _call_with_alarm(fn, timeout, args, kwargs)
    return _call_in_thread(fn, timeout, args, kwargs)


def _can_use_alarm() -> bool:
    return (hasattr(signal, "setitimer")
            and threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGALRM) in (signal.SIG_DFL, None)
            and signal.getitimer(signal.ITIMER_REAL)[0] == 0)


def _call_with_alarm(fn, timeout: float, args, kwargs) -> Any:
    def on_alarm(signum, frame):
        raise RewardTimeout(f"timed out after {timeout:g} s")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return fn(*args, **kwargs)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def _call_in_thread(fn, timeout: float, args, kwargs) -> Any:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller below
            outcome["error"] = e

    worker = threading.Thread(target=run, name="reward-call", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        logger.warning("a reward call passed its %g s limit outside the main thread; it keeps "
                       "running in the background", timeout)
        raise RewardTimeout(f"timed out after {timeout:g} s (the call was abandoned)")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
