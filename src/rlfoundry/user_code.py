"""Exits and interrupts raised by user code (rewards, plugins, losses, hooks) become errors.

``sys.exit()``, ``raise KeyboardInterrupt`` or a stray ``GeneratorExit`` inside a user function
would otherwise end a run with exit status 0 and no message (or a bare traceback). Here they
are turned into :class:`UserCodeError` naming the function and the line. A *real* Ctrl-C must
still stop the run, so every SIGINT that rlfoundry's handlers see is counted
(:func:`note_interrupt`): a ``KeyboardInterrupt`` is taken as raised by the code itself only
when no SIGINT arrived while the code ran and the SIGINT handler in place is one that counts
(ours, or Python's default, which :func:`watching_interrupts` swaps for a counting one
meanwhile); otherwise it is a real Ctrl-C and propagates.
"""

from __future__ import annotations

import functools
import os
import signal
import sysconfig
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any

from rlfoundry.errors import RLFoundryError

EXITS: tuple[type[BaseException], ...] = (SystemExit, KeyboardInterrupt, GeneratorExit)

_sigints = 0


class UserCodeError(RLFoundryError):
    """User code (a plugin, loss, hook or reward) exited or raised an interrupt; the message
    names it, the line and what it did."""


def note_interrupt() -> None:
    """Count one real SIGINT (called by rlfoundry's SIGINT handlers)."""
    global _sigints
    _sigints += 1


def _counting_handler(signum: int, frame: FrameType | None) -> None:
    note_interrupt()
    raise KeyboardInterrupt


_counting_handler.notes_interrupts = True  # type: ignore[attr-defined]


@dataclass(frozen=True)
class InterruptWatch:
    """What was known when user code started: the SIGINT count and whether it is reliable."""

    count: int
    reliable: bool

    def is_real(self, error: BaseException) -> bool:
        """Whether ``error`` is a real Ctrl-C (not one raised by the user code itself)."""
        if not isinstance(error, KeyboardInterrupt):
            return False
        return not self.reliable or _sigints != self.count


@contextmanager
def watching_interrupts() -> Iterator[InterruptWatch]:
    """Count the SIGINTs that arrive while the block runs (main thread: Python's default
    handler is replaced by a counting one meanwhile). Off the main thread no signal can raise
    ``KeyboardInterrupt``, so one seen there always comes from the code itself."""
    if threading.current_thread() is not threading.main_thread():
        yield InterruptWatch(_sigints, True)
        return
    current = signal.getsignal(signal.SIGINT)
    if current is signal.default_int_handler:
        signal.signal(signal.SIGINT, _counting_handler)
        try:
            yield InterruptWatch(_sigints, True)
        finally:
            if signal.getsignal(signal.SIGINT) is _counting_handler:
                signal.signal(signal.SIGINT, signal.default_int_handler)
        return
    # a handler that counts (StopRequest) or ignores SIGINT: reliable; someone else's: unknown
    reliable = current is signal.SIG_IGN or getattr(current, "notes_interrupts", False)
    yield InterruptWatch(_sigints, bool(reliable))


MAX_MESSAGE = 2000  # characters of a user exception's text kept in our messages


def describe_exit(error: BaseException) -> str:
    """``called sys.exit(0)``, ``raised KeyboardInterrupt``, ``raised ValueError: msg``, ...
    (the text shortened to :data:`MAX_MESSAGE` characters; one whose ``str`` fails is named)."""
    if isinstance(error, SystemExit):
        return f"called sys.exit({_shorten(_text(error.code, repr))})"
    text = _shorten(_text(error, str))
    return f"raised {type(error).__name__}" + (f": {text}" if text else "")


def _text(value: Any, how: Callable[[Any], str]) -> str:
    try:
        return how(value)
    except Exception as e:  # user code's __str__/__repr__
        return f"<unprintable: its {how.__name__}() raised {type(e).__name__}>"


def _shorten(text: str) -> str:
    if len(text) <= MAX_MESSAGE:
        return text
    return f"{text[:MAX_MESSAGE]}... ({len(text) - MAX_MESSAGE} more characters)"


def origin(fn: Any) -> str:
    """``module:qualname`` of a function, bound method, partial or callable object."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    target = getattr(fn, "__func__", fn)  # bound method -> function
    if not hasattr(target, "__qualname__"):  # a callable instance
        target = type(target)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}:{getattr(target, '__qualname__', repr(target))}"


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({os.path.realpath(paths[k]) + os.sep for k in ("stdlib", "purelib", "platlib")})


def raise_site(error: BaseException) -> str:
    """``file:line in function`` of the innermost frame of ``error``'s traceback that is not in
    the standard library or an installed package (``sys.exit`` may be wrapped by one, e.g.
    wandb's exit hook), else of the innermost frame."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    libraries = _library_dirs()
    own = [f for f in frames if not os.path.realpath(f.filename).startswith(libraries)]
    last = (own or frames)[-1]
    return f"{last.filename}:{last.lineno} in {last.name}"


def blame(error: BaseException, suspects: Sequence[tuple[str, Any]], default: str) -> str:
    """The label of the suspect (a ``(label, object)`` pair) whose module holds the innermost
    frame of ``error``'s traceback, else ``default``."""
    modules = [(label, getattr(obj, "__module__", None) or type(obj).__module__)
               for label, obj in suspects]
    for frame, _ in reversed(list(traceback.walk_tb(error.__traceback__))):
        name = frame.f_globals.get("__name__")
        for label, module in modules:
            if name == module:
                return label
    return default


@contextmanager
def exits_as_errors(what: str | Callable[[BaseException], str], hint: str = "") -> Iterator[None]:
    """Run the block; an exit or interrupt raised by the code in it (not a real Ctrl-C)
    becomes :class:`UserCodeError`: "<what> called sys.exit(0) at file:line in f. <hint>".
    ``what`` may be a function of the error, to name the culprit from its traceback."""
    with watching_interrupts() as watch:
        try:
            yield
        except EXITS as e:
            if watch.is_real(e):
                raise
            name = what(e) if callable(what) else what
            raise UserCodeError(f"{name} {describe_exit(e)} at {raise_site(e)}"
                                + (f". {hint}" if hint else "")) from e
