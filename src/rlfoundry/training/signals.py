"""SIGTERM/SIGINT -> "stop after this step": a flag the training loop polls between steps.

The first signal only records a request (the loop finishes the step it is in, writes a
checkpoint and raises :class:`~rlfoundry.errors.TrainingInterrupted`); the handler that was
there before is put back at once, so a second signal acts as it normally would (Ctrl-C again
raises ``KeyboardInterrupt`` at once; a second SIGTERM kills the process). Every handler is
restored when the ``with`` block ends, so using a trainer from Python leaves no handlers
behind. Signals can only be caught in the main thread; elsewhere this does nothing.

Under torchrun a stop signal often arrives twice: a terminal's Ctrl-C or a scheduler signals
the whole process group, so each worker gets the signal itself *and* the copy torchrun
forwards when it shuts its workers down. A repeat of the same signal within
``LAUNCHER_ECHO_S`` seconds is therefore taken for that echo (still one request); a later
one acts as it normally would.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from rlfoundry.user_code import note_interrupt

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
LAUNCHER_ECHO_S = 5.0  # under torchrun: a repeat within this time is the launcher's copy


class StopRequest:
    """Context manager: ``signum`` becomes the number of the first stop signal received."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._clock = clock
        self._first_at: float | None = None
        self._echo_window = LAUNCHER_ECHO_S if _under_launcher() else 0.0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self
        for s in self.signals:
            previous = signal.getsignal(s)
            if previous is signal.SIG_IGN:  # e.g. SIGINT of a background job: keep ignoring it
                continue
            self._previous[s] = previous
            signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT:  # tells a real Ctrl-C from user code raising KeyboardInterrupt
            note_interrupt()
        now = self._clock()
        if self.signum is not None and self._echo_window:  # torchrun: kept our handler
            if now - self._first_at < self._echo_window:
                return  # the launcher's forwarded copy of the same stop
            signal.signal(signum, self._previous.pop(signum, signal.SIG_DFL))  # a real repeat:
            os.kill(os.getpid(), signum)  # act as it normally would
            return
        if self.signum is None:
            self.signum, self._first_at = signum, now
        if not self._echo_window:
            signal.signal(signum, self._previous.pop(signum, signal.SIG_DFL))
        notice = (f"\nreceived {signal.Signals(signum).name}: stopping after the current step and "
                  f"writing a checkpoint (send it again to stop at once)\n")
        # os.write on fd 2, not print: the handler may run while the progress bar is writing
        try:
            os.write(2, notice.encode())
        except OSError:  # no stderr to tell; the request itself is recorded above
            pass

    _handle.notes_interrupts = True  # type: ignore[attr-defined]

    def __exit__(self, *exc) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous.clear()


def _under_launcher() -> bool:
    """Whether torchrun (an elastic agent) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_WORLD_SIZE" in os.environ
