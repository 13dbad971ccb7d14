"""Run calls of user code in a forked process that can be killed (``algorithm.reward_timeout``).

:func:`run_forked` forks one worker that runs a list of jobs (zero-argument callables, e.g.
one reward call on the batch, or one per sample) in order and sends each job's return value
back over a pipe as soon as it is done. The parent gives every job ``timeout`` seconds,
counted from the previous job's reply; a job that runs longer gets its worker's whole process
group SIGKILLed -- no ``except BaseException`` or ignored SIGTERM can stop that -- and a new
worker is forked for the jobs after it. A worker that dies on its own (segfault,
``os._exit``, the OOM killer) is reported with its exit status, and the same happens.

Fork, not spawn: reward functions may be closures, lambdas or bound methods, which cannot be
pickled; a forked child simply has them. Only return values and failure descriptions (plain
data) cross the pipe. What the child changes (globals, caches, a closure's state) is not seen
by the parent. The child must not use CUDA: PyTorch refuses to initialise CUDA in a forked
child of a process that has, so such a call fails like any other exception. The child uses
one torch thread (OpenMP thread pools do not survive a fork), ignores nothing the parent set
for SIGINT/SIGTERM, runs in its own process group (a Ctrl-C reaches only the trainer, which
decides) and is SIGKILLed by the kernel if the trainer dies.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import os
import pickle
import select
import signal
import struct
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rlfoundry.errors import RLFoundryError
from rlfoundry.user_code import describe_exit, raise_site

_HEADER = struct.Struct("<Q")
_POLL_S = 0.05  # how often the parent checks that a silent worker is still alive
_PR_SET_PDEATHSIG = 1
# resolved once in the parent: the child must not take the dynamic loader's lock after fork
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class WorkerStartError(RLFoundryError):
    """No worker process could be started (out of memory or processes)."""


@dataclass(frozen=True)
class Raised:
    """A job raised (any ``BaseException``: ``sys.exit`` and ``KeyboardInterrupt`` included)."""

    type_name: str
    description: str  # "raised ValueError: ...", "called sys.exit(0)"
    site: str  # file:line in function, where it was raised
    traceback: str


@dataclass(frozen=True)
class Died:
    """The worker ended while running a job, without replying."""

    description: str  # "ended its worker process with exit status 0 (os._exit?)", "... SIGSEGV"


@dataclass(frozen=True)
class TimedOut:
    """A job ran past its time limit; its worker was killed."""

    seconds: float


Outcome = Any  # a job's return value, or Raised | Died | TimedOut


def fork_available() -> bool:
    return hasattr(os, "fork")


def run_forked(jobs: Sequence[Callable[[], Any]], timeout: float | None) -> Iterator[tuple[int, Outcome]]:
    """``(k, outcome)`` for each job ``k`` in order: its return value, or :class:`Raised`,
    :class:`Died` or :class:`TimedOut`. Closing the iterator early kills the worker."""
    k = 0
    while k < len(jobs):
        worker = _Worker(jobs, k)
        try:
            for k, outcome in worker.replies(timeout):
                yield k, outcome
                k += 1
        finally:
            worker.kill()


class _Worker:
    """One forked child running ``jobs[start:]``."""

    def __init__(self, jobs: Sequence[Callable[[], Any]], start: int) -> None:
        self.start = start
        self.count = len(jobs)
        reap_workers()
        _flush()  # nothing buffered before the fork is written twice
        parent = os.getpid()
        pid = -1
        try:
            read_fd, write_fd = os.pipe()
        except OSError as e:
            raise WorkerStartError(f"cannot start a reward worker process: {e}") from e
        gc.freeze()  # the child's collections skip the inherited objects (fewer copied pages)
        try:
            with warnings.catch_warnings():  # fork with threads (3.12+): the child only runs jobs
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError as e:
            os.close(read_fd)
            os.close(write_fd)
            raise WorkerStartError(
                f"cannot fork a reward worker process: {e}. Free memory or processes, or run the "
                f"rewards in the trainer (in_process: true; a timeout then cannot stop a function "
                f"that catches it)") from e
        finally:
            if pid != 0:
                gc.unfreeze()
        if pid == 0:  # child: never returns into the caller's stack
            code = 0
            try:
                os.close(read_fd)
                _child(jobs, start, write_fd, parent)
            except BaseException:
                code = 70
            finally:
                os._exit(code)
        os.close(write_fd)
        try:
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        except OSError:
            pass
        self.pid, self.fd = pid, read_fd
        self.poller = select.poll()  # not select(): the trainer may hold more than 1024 files
        self.poller.register(read_fd, select.POLLIN)
        self.status: int | None = None
        self.buffer = bytearray()

    def replies(self, timeout: float | None) -> Iterator[tuple[int, Outcome]]:
        k = self.start
        deadline = None if timeout is None else time.monotonic() + timeout
        eof = False
        while k < self.count:
            frame = self._frame()
            if frame is not None:
                yield k, pickle.loads(frame)
                k += 1
                deadline = None if timeout is None else time.monotonic() + timeout
                continue
            if eof:
                yield k, Died(self._death())
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                yield k, TimedOut(timeout)
                return
            wait = _POLL_S if deadline is None else min(_POLL_S, deadline - now)
            eof = self._read(wait)

    def _frame(self) -> bytes | None:
        if len(self.buffer) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self.buffer)
        if len(self.buffer) < _HEADER.size + size:
            return None
        frame = bytes(self.buffer[_HEADER.size:_HEADER.size + size])
        del self.buffer[:_HEADER.size + size]
        return frame

    def _read(self, wait: float) -> bool:
        """Read what arrives within ``wait`` seconds; True once no more will come."""
        if self.poller.poll(max(wait, 0.0) * 1000):  # readable, or the write end is closed
            chunk = os.read(self.fd, 1 << 20)
            if chunk:
                self.buffer += chunk
                return False
            return True
        if self.status is None:  # silent: is it still alive? (a grandchild may hold the pipe)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = status
        if self.status is not None:
            os.set_blocking(self.fd, False)
            try:
                while chunk := os.read(self.fd, 1 << 20):
                    self.buffer += chunk
            except BlockingIOError:
                pass
            return True
        return False

    def _death(self) -> str:
        if self.status is None:
            _, self.status = os.waitpid(self.pid, 0)
        code = os.waitstatus_to_exitcode(self.status)
        if code < 0:
            name = signal.Signals(-code).name
            why = {"SIGSEGV": "a crash in native code", "SIGKILL": "e.g. the out-of-memory killer",
                   "SIGABRT": "an abort in native code", "SIGBUS": "a crash in native code"}.get(name)
            return f"killed its worker process with {name}" + (f" ({why})" if why else "")
        return f"ended its worker process with exit status {code} (os._exit or a C-level exit)"

    def kill(self) -> None:
        """SIGKILL the worker's process group (its own children too). It is reaped later
        (:func:`reap_workers`): its exit, which unmaps the trainer-sized address space it
        inherited, then runs in parallel with training instead of before it."""
        try:  # also when the worker died by itself: what it started dies with its group
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except OSError:
                pass
            _unreaped.add(self.pid)
        os.close(self.fd)


_unreaped: set[int] = set()


def reap_workers(block: bool = False) -> None:
    """Collect the exit status of killed workers (``block``: wait for each; they are all
    SIGKILLed, so this is quick)."""
    for pid in list(_unreaped):
        try:
            done, _ = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere
            done = pid
        if done:
            _unreaped.discard(pid)


atexit.register(reap_workers, True)


def _child(jobs: Sequence[Callable[[], Any]], start: int, fd: int, parent: int) -> None:
    os.setpgid(0, 0)  # a Ctrl-C at the terminal goes to the trainer, not here
    _die_with_parent(parent)
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    torch = sys.modules.get("torch")
    if torch is not None:  # forked OpenMP pools hang; the DataLoader does the same
        torch.set_num_threads(1)
    for k in range(start, len(jobs)):
        try:
            outcome = jobs[k]()
        except BaseException as e:  # user code: sys.exit and KeyboardInterrupt included
            outcome = Raised(type(e).__name__, describe_exit(e), raise_site(e),
                             traceback.format_exc(limit=-8))
        _flush()  # before the reply: the parent may kill the worker as soon as it has it
        try:
            data = pickle.dumps(outcome)
        except Exception as e:
            data = pickle.dumps(Raised(type(e).__name__, f"returned a value that cannot be sent "
                                       f"back from the worker process ({e})", "", ""))
        _write_all(fd, _HEADER.pack(len(data)) + data)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this worker when the trainer dies (Linux)."""
    if _LIBC is not None:
        try:
            _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except AttributeError:
            pass
    if os.getppid() != parent:  # the trainer died before the request took effect
        os._exit(70)
