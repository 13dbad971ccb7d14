"""Run untrusted Python (model-written code) in a separate, limited, killable process.

Each program runs in a fresh ``python -S -s -B`` process (standard library only) started in a
new session, with a minimal environment (no variable of the trainer's is inherited), inside
a private temporary directory that is also its ``HOME`` and ``TMPDIR`` and is deleted
afterwards. The child side is :mod:`rlfoundry.rewards.sandbox_runner`.

What enforces each limit (see :func:`detect_isolation` for what this machine allows):

==========================  =====================================================  ========
limit                       mechanism                                              kind
==========================  =====================================================  ========
wall time                   the parent kills the whole process group (SIGKILL)     OS
CPU time                    ``RLIMIT_CPU`` (SIGXCPU, then SIGKILL one second on)   OS
memory                      ``RLIMIT_AS`` (allocations fail: MemoryError)          OS
output (stdout + stderr)    the parent reads at most ``max_output_bytes``, kills   OS
file size                   ``RLIMIT_FSIZE`` (SIGXFSZ)                             OS
open files                  ``RLIMIT_NOFILE``                                      OS
processes (fork bombs)      ``RLIMIT_NPROC`` after dropping root to ``nobody``     OS [1]
leftover processes          a PID namespace (all die with its init), else the      OS [2]
                            process group kill
network                     an empty network namespace (no interface is up)        OS [2]
files outside its dir       file permissions as ``nobody``                         OS [1]
secrets in the environment  a fresh minimal environment                            OS
all of the above, again     a Python audit hook: sockets, subprocesses, fork,      best
                            exec, kill, ctypes, file access outside its            effort
                            directory are refused and recorded
==========================  =====================================================  ========

[1] only when the trainer runs as root (``RLIMIT_NPROC`` does not bind root, and root may
write anywhere); as another user the limit counts all of that user's processes and files are
protected by that user's own permissions. [2] when the kernel lets this process create
namespaces (root, or unprivileged user namespaces); otherwise only the audit hook blocks the
network, and a program that escapes its process group could outlive its sample.

The audit hook runs inside the same interpreter as the program, so a determined program can
get around it (and could tamper with its own verdict): it is defense in depth, and grading
integrity is best effort. The OS mechanisms do not depend on the program's cooperation.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlfoundry.errors import ConfigError, RLFoundryError

logger = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("sandbox_runner.py")
NOBODY = 65534
OUTCOMES = ("passed", "failed", "error", "timeout", "memory", "output_limit", "blocked", "killed")
DEFAULT_PRELOAD = (  # what solutions commonly import; os, sys and io are loaded anyway
    "abc", "array", "base64", "bisect", "calendar", "cmath", "collections", "collections.abc",
    "contextlib", "copy", "dataclasses", "datetime", "decimal", "enum", "fractions", "functools",
    "graphlib", "hashlib", "heapq", "itertools", "json", "math", "numbers", "operator", "pprint",
    "queue", "random", "re", "statistics", "string", "struct", "textwrap", "time", "types",
    "typing", "unicodedata",
)
RESULT_CAP = 1 << 16  # bytes of verdict read at most
STDERR_TAIL = 1000  # characters of stderr quoted in a detail
GRACE = 0.2  # seconds a finished runner's leftover children may keep its pipes open
STOP_GRACE = 2.0  # seconds a runner gets to kill and reap its PID namespace before SIGKILL


class SandboxError(RLFoundryError):
    """The sandbox could not run a program at all (not the program's fault)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits. ``cpu_seconds`` defaults to ``ceil(timeout)``."""

    timeout: float = 5.0
    cpu_seconds: int | None = None
    memory_mb: int = 512
    max_processes: int = 1
    max_output_bytes: int = 1 << 16
    max_file_bytes: int = 1 << 20
    max_open_files: int = 64

    def __post_init__(self) -> None:
        checks = {"timeout": self.timeout > 0, "memory_mb": self.memory_mb >= 32,
                  "max_processes": self.max_processes >= 1,
                  "max_output_bytes": self.max_output_bytes >= 1,
                  "max_file_bytes": self.max_file_bytes >= 0,
                  "max_open_files": self.max_open_files >= 8,
                  "cpu_seconds": self.cpu_seconds is None or self.cpu_seconds >= 1}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"code_execution: {name}={getattr(self, name)!r} is out of range "
                                  f"(timeout > 0, memory_mb >= 32, cpu_seconds >= 1, "
                                  f"max_processes >= 1, max_open_files >= 8)")

    @property
    def cpu(self) -> int:
        return self.cpu_seconds or max(1, int(-(-self.timeout // 1)))

    def as_job(self) -> dict[str, int]:
        return {"cpu_seconds": self.cpu, "memory_bytes": self.memory_mb << 20,
                "max_processes": self.max_processes, "max_output_bytes": self.max_output_bytes,
                "max_file_bytes": self.max_file_bytes, "max_open_files": self.max_open_files}


@dataclass(frozen=True)
class Isolation:
    """What the OS enforces on this machine (from :func:`detect_isolation`)."""

    network_namespace: bool
    pid_namespace: bool
    drop_privileges: bool
    rlimits: bool
    stdlib_readable: bool
    notes: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: OS-enforced protections, and the ones missing here."""
        parts = {
            "resource limits (CPU, memory, file size, open files)": self.rlimits,
            "process limit and file permissions as uid nobody": self.drop_privileges,
            "no network (network namespace)": self.network_namespace,
            "no leftover processes (PID namespace)": self.pid_namespace,
        }
        on = [k for k, v in parts.items() if v]
        off = [k for k, v in parts.items() if not v]
        text = "OS-enforced: wall-time kill, output cap, clean environment, " + ", ".join(on)
        if off:
            text += "; not available here (audit hook only): " + ", ".join(off)
        return text


@dataclass
class ExecutionResult:
    """How one program did: ``outcome`` (one of OUTCOMES), tests ``passed`` of ``total``,
    a ``detail`` for anything but a pass, the wall ``seconds`` and the runner's ``pid`` (also
    its process group id)."""

    outcome: str
    passed: int
    total: int
    detail: str | None
    seconds: float
    pid: int


@dataclass
class _Run:
    verdict: dict[str, Any] | None
    returncode: int
    timed_out: bool
    over_output: bool
    stderr_tail: str
    cpu_seconds: float
    seconds: float
    pid: int


@functools.lru_cache(maxsize=1)
def runner_source() -> str:
    return RUNNER.read_text(encoding="utf-8")


def sandbox_user() -> tuple[int, int]:
    """uid/gid to run programs as when the trainer is root: ``nobody`` (65534)."""
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return NOBODY, NOBODY


@functools.lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    """Probe (once per process) which OS protections work here, by asking a throwaway runner
    to try each; logs the result."""
    if os.name != "posix" or not hasattr(os, "killpg"):
        raise SandboxError("the code-execution sandbox needs a POSIX system (Linux)")
    uid, gid = sandbox_user()
    job = {"probe": True, "tests": [], "uid": uid, "gid": gid,
           "limits": SandboxLimits().as_job(), "nonce": secrets.token_hex(8)}
    workdir = Path(tempfile.mkdtemp(prefix="rlfoundry-probe-"))
    try:
        run = _run_job(job, workdir, timeout=30.0, max_output=RESULT_CAP)
    finally:
        _remove_workdir(workdir)
    v = run.verdict
    if v is None:
        raise SandboxError(f"the sandbox probe failed (exit code {run.returncode}): "
                           f"{run.stderr_tail or 'no output'}")
    notes = {k[: -len("_error")]: str(val) for k, val in v.items() if k.endswith("_error")}
    found = Isolation(bool(v.get("network_namespace")), bool(v.get("pid_namespace")),
                      bool(v.get("drop_privileges")), bool(v.get("rlimits")),
                      bool(v.get("stdlib_readable")), notes)
    missing = not (found.network_namespace and found.pid_namespace
                   and (found.drop_privileges or os.geteuid() != 0))
    (logger.warning if missing else logger.info)("code-execution sandbox: %s", found.describe())
    if not found.rlimits:
        raise SandboxError(f"the sandbox cannot set resource limits here: {notes.get('rlimits')}")
    return found


def run_program(code: str, tests: Sequence[Any], limits: SandboxLimits | None = None, *,
                audit_hook: bool = True, preload: Sequence[str] = DEFAULT_PRELOAD,
                isolation: Isolation | None = None) -> ExecutionResult:
    """Run ``code`` against ``tests`` in a fresh sandboxed process.

    ``tests``: strings of Python run after the program in its namespace (``assert f(2) ==
    4``; a test passes when it raises nothing), and/or ``{"input", "output"}`` dicts (the
    program runs as ``__main__`` with that stdin; it passes when its stdout equals
    ``output`` up to trailing whitespace). Raises :class:`SandboxError` only when the sandbox
    itself fails; everything the program does ends in an :class:`ExecutionResult`.
    """
    limits = limits or SandboxLimits()
    iso = isolation or detect_isolation()
    uid, gid = sandbox_user()
    drop = iso.drop_privileges
    job = {
        "code": code, "tests": list(tests), "limits": limits.as_job(),
        "uid": uid if drop else None, "gid": gid if drop else None,
        "network_namespace": iso.network_namespace, "pid_namespace": iso.pid_namespace,
        "audit_hook": audit_hook, "preload": list(preload), "nonce": secrets.token_hex(16),
    }
    workdir = Path(tempfile.mkdtemp(prefix="rlfoundry-sandbox-"))
    try:
        if drop:
            os.chown(workdir, uid, gid)
        job["workdir"] = str(workdir)
        run = _run_job(job, workdir, limits.timeout, limits.max_output_bytes)
    finally:
        _remove_workdir(workdir)
    return _classify(run, limits, len(job["tests"]))


def run_programs(programs: Sequence[tuple[str, Sequence[Any]]], limits: SandboxLimits | None = None,
                 *, workers: int | None = None, **options: Any) -> list[ExecutionResult]:
    """:func:`run_program` over ``(code, tests)`` pairs, at most ``workers`` at a time
    (default: the CPU count, at most 8); results in input order."""
    if not programs:
        return []
    detect_isolation()  # probe once, before the threads start
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=min(workers, len(programs)),
                            thread_name_prefix="sandbox") as pool:
        futures = [pool.submit(run_program, code, tests, limits, **options)
                   for code, tests in programs]
        return [f.result() for f in futures]


# ------------------------------------------------------------------------ the child process


def _environment(workdir: Path) -> dict[str, str]:
    """The whole environment of a program: nothing is inherited from the trainer."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": str(workdir), "TMPDIR": str(workdir), "PYTHONHASHSEED": "0",
            "PYTHONIOENCODING": "utf-8"}


def _run_job(job: dict[str, Any], workdir: Path, timeout: float, max_output: int) -> _Run:
    read_fd, write_fd = os.pipe()
    job = {**job, "result_fd": write_fd}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-s", "-B", "-c", runner_source()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(write_fd,), cwd=workdir, env=_environment(workdir),
            start_new_session=True)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    try:
        _feed(proc, json.dumps(job).encode())
        verdict_bytes, timed_out, over, tail = _collect(proc, read_fd, timeout, max_output)
    finally:
        _stop(proc, relay=bool(job.get("pid_namespace")))
        os.close(read_fd)
        returncode, cpu = _reap(proc)
    return _Run(_parse_verdict(verdict_bytes, job["nonce"]), returncode, timed_out, over,
                tail, cpu, time.monotonic() - start, proc.pid)


def _feed(proc: subprocess.Popen, payload: bytes) -> None:
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
    except BrokenPipeError:  # the runner died before reading its job; its exit status says why
        logger.debug("sandbox runner %d exited before reading its job", proc.pid)


def _exited(pid: int) -> bool:
    """Whether the runner has exited (without reaping it, so its rusage stays readable)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _collect(proc: subprocess.Popen, result_fd: int, timeout: float, max_output: int
             ) -> tuple[bytes, bool, bool, str]:
    """Read the verdict pipe and (counting bytes) stdout/stderr until all close, the wall
    time runs out or the output passes ``max_output``. Returns (verdict bytes, timed out,
    output exceeded, stderr tail)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    sel.register(result_fd, selectors.EVENT_READ, "result")
    deadline = time.monotonic() + timeout
    running = True  # False once the runner has exited and only leftovers hold the pipes
    verdict, tail, printed = bytearray(), bytearray(), 0
    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return bytes(verdict), running, False, _text(tail)
            for key, _ in sel.select(min(left, 0.05)):
                data = os.read(key.fd, 1 << 16)
                if not data:
                    sel.unregister(key.fileobj)
                elif key.data == "result":
                    verdict += data[: max(0, RESULT_CAP - len(verdict))]
                else:
                    printed += len(data)
                    if key.data == "err":
                        tail = (tail + data)[-STDERR_TAIL:]
            if printed > max_output:
                return bytes(verdict), False, True, _text(tail)
            if running and _exited(proc.pid):  # leftovers get a short grace, then die
                deadline, running = min(deadline, time.monotonic() + GRACE), False
        return bytes(verdict), False, False, _text(tail)
    finally:
        sel.close()


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace").strip()


def _stop(proc: subprocess.Popen, relay: bool) -> None:
    """End whatever is still running. With a PID namespace, SIGTERM asks the runner to kill the
    namespace and reap its init, so nothing is orphaned; then SIGKILL sweeps the process group
    (everything, if the runner did not exit within STOP_GRACE)."""
    if relay and not _exited(proc.pid):
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while not _exited(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)
    _kill_group(proc.pid)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # the whole group has already exited
        pass


def _reap(proc: subprocess.Popen) -> tuple[int, float]:
    """Wait for the runner; its exit code (negative: killed by that signal) and the CPU
    seconds it and its reaped children used."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None and not stream.closed:
            stream.close()
    return proc.returncode, usage.ru_utime + usage.ru_stime


def _parse_verdict(data: bytes, nonce: str) -> dict[str, Any] | None:
    """The last line on the verdict pipe that is JSON with the job's nonce (a program that
    writes to the pipe does not know the nonce)."""
    for line in reversed(data.decode("utf-8", "replace").splitlines()):
        try:
            verdict = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(verdict, dict) and verdict.get("nonce") == nonce:
            return verdict
    return None


def _signal_of(returncode: int) -> int | None:
    """The signal that ended the program: runners report a signal as a negative exit code,
    or as 128 + the signal when relayed by a PID-namespace init."""
    if returncode < 0:
        return -returncode
    if returncode > 128 and returncode - 128 in {s.value for s in signal.Signals}:
        return returncode - 128
    return None


def _classify(run: _Run, limits: SandboxLimits, total: int) -> ExecutionResult:
    def result(outcome: str, detail: str | None, passed: int = 0) -> ExecutionResult:
        return ExecutionResult(outcome, passed, total, detail, run.seconds, run.pid)

    v = run.verdict
    if v is not None and v.get("outcome") == "sandbox_error":
        raise SandboxError(f"the sandbox could not run the program: {v.get('detail')}")
    if run.over_output:
        return result("output_limit", f"printed more than {limits.max_output_bytes} bytes")
    if v is not None and v.get("outcome") in OUTCOMES:
        return result(v["outcome"], v.get("detail"), int(v.get("passed", 0)))
    if run.timed_out:
        return result("timeout", f"wall-clock limit of {limits.timeout:g} s")
    sig = _signal_of(run.returncode)
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and run.cpu_seconds >= limits.cpu):
        return result("timeout", f"CPU time limit of {limits.cpu} s")
    if sig == signal.SIGXFSZ:
        return result("output_limit", f"file size limit of {limits.max_file_bytes} bytes")
    if sig is not None:
        return result("killed", f"killed by {signal.Signals(sig).name}")
    return result("error", f"the program ended without a verdict (exit code {run.returncode})"
                           f"{': ' + run.stderr_tail[-300:] if run.stderr_tail else ''}")


def _remove_workdir(path: Path) -> None:
    """Delete a program's directory, even where it removed its own permissions."""

    def make_writable(func, target, exc_info):
        parent = os.path.dirname(target)
        os.chmod(parent, stat.S_IRWXU)
        if os.path.isdir(target) and not os.path.islink(target):
            os.chmod(target, stat.S_IRWXU)
        func(target)

    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=make_writable)
    else:
        shutil.rmtree(path, onerror=make_writable)
