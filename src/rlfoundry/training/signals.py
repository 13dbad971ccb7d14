"""SIGTERM/SIGINT -> "stop after this step": a flag the training loop polls between steps.

The first signal only records a request (the loop finishes the step it is in, writes a
checkpoint and raises :class:`~rlfoundry.errors.TrainingInterrupted`); the handler that was
there before is put back at once, so a second signal acts as it normally would (Ctrl-C again
raises ``KeyboardInterrupt`` at once; a second SIGTERM kills the process). Every handler is
restored when the ``with`` block ends, so using a trainer from Python leaves no handlers
behind. Signals can only be caught in the main thread; elsewhere this does nothing.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType

from rlfoundry.user_code import note_interrupt

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequest:
    """Context manager: ``signum`` becomes the number of the first stop signal received."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS) -> None:
        self.signals = signals
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

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
        if self.signum is None:
            self.signum = signum
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
