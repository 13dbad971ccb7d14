"""Run untrusted Python (model-written code) in an OS-isolated, limited, killable process, and
judge it from outside.

**Verdicts.** Nothing the program's process says can turn into a pass: the trainer keeps the
expected values (:mod:`rlfoundry.rewards.sandbox_checks` splits each test), the sandbox
sends back only *answers* (the values of each assert's probe, the stdout of each stdin/stdout
test) on a pipe, and the trainer compares them. A program that patches the harness, prints a
fake result or exits early with status 0 just gives no (or wrong) answers.

**Isolation** (``mode``; the child side is :mod:`rlfoundry.rewards.sandbox_runner` with
:mod:`rlfoundry.rewards.sandbox_jail`):

- ``namespaces`` (the default): each program gets new mount, PID, network, IPC and UTS
  namespaces (plus a user namespace when the trainer is not root) and a root of its own:
  read-only ``/usr``, ``/lib*`` and the interpreter's prefix (``site-packages`` hidden), four
  ``/dev`` nodes, a fresh ``/proc`` of its PID namespace, and its working directory
  ``/sandbox`` and ``/tmp`` on one private tmpfs of ``tmp_mb``. No host file, socket, process or network is in view.
- ``process``: the weaker fallback for hosts without namespaces (refused unless asked for):
  a private host directory, file permissions as ``nobody`` (when root) and, where the kernel
  has Landlock, files limited to that directory and the interpreter's, no TCP, no abstract
  UNIX sockets or signals out; see docs/reliability.md for what is and is not isolated.

Both add resource limits (``RLIMIT_CPU``, ``RLIMIT_AS``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``,
``RLIMIT_NPROC``), a wall-clock kill of the whole process group (with a PID namespace, of
everything the program started), an output cap, a fresh environment, dropped privileges
(``nobody`` as root; no capabilities in a user namespace), ``no_new_privs`` and a seccomp
filter (ptrace, mount, namespaces, keyrings, BPF, io_uring, ...). A Python audit hook names
blocked operations in failure details; it is not a security boundary.
"""

from __future__ import annotations

import ast
import functools
import logging
import marshal
import os
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
from rlfoundry.rewards.sandbox_checks import PreparedTest, judge_tests, prepare_tests

logger = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("sandbox_runner.py")
JAIL = Path(__file__).with_name("sandbox_jail.py")
NOBODY = 65534
MODES = ("namespaces", "process")
OUTCOMES = ("passed", "failed", "error", "timeout", "memory", "output_limit", "blocked", "killed")
DEFAULT_PRELOAD = (  # what solutions commonly import; os, sys and io are loaded anyway
    "abc", "array", "base64", "bisect", "calendar", "cmath", "collections", "collections.abc",
    "contextlib", "copy", "dataclasses", "datetime", "decimal", "enum", "fractions", "functools",
    "graphlib", "hashlib", "heapq", "itertools", "json", "math", "numbers", "operator", "pprint",
    "queue", "random", "re", "statistics", "string", "struct", "textwrap", "time", "types",
    "typing", "unicodedata",
)
ANSWER_LINE_CAP = 1 << 22  # characters of one answer record read at most
SETUP_CAP = 1 << 14  # bytes read at most from the setup pipe
STDERR_TAIL = 1000  # characters of stderr quoted in a detail
GRACE = 0.2  # seconds a finished runner's leftover children may keep its pipes open
STOP_GRACE = 2.0  # seconds a runner gets to kill and reap its PID namespace before SIGKILL
MODE_HINT = ("set `isolation: process` in the code_execution reward's args "
             "(algorithm.rewards[i].args) to accept the weaker process sandbox; "
             "docs/reliability.md lists what it does not isolate")


class SandboxError(RLFoundryError):
    """The sandbox could not run a program at all (not the program's fault)."""


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program limits. ``cpu_seconds`` defaults to ``ceil(timeout)``; ``tmp_mb`` sizes the
    private tmpfs holding the working directory and ``/tmp`` in ``namespaces`` mode."""

    timeout: float = 5.0
    cpu_seconds: int | None = None
    memory_mb: int = 512
    max_processes: int = 1
    max_output_bytes: int = 1 << 16
    max_file_bytes: int = 1 << 20
    max_open_files: int = 64
    tmp_mb: int = 16

    def __post_init__(self) -> None:
        checks = {"timeout": self.timeout > 0, "memory_mb": self.memory_mb >= 32,
                  "max_processes": self.max_processes >= 1,
                  "max_output_bytes": self.max_output_bytes >= 1,
                  "max_file_bytes": self.max_file_bytes >= 0,
                  "max_open_files": self.max_open_files >= 8,
                  "cpu_seconds": self.cpu_seconds is None or self.cpu_seconds >= 1,
                  "tmp_mb": 1 <= self.tmp_mb <= 4096}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"code_execution: {name}={getattr(self, name)!r} is out of range "
                                  f"(timeout > 0, memory_mb >= 32, cpu_seconds >= 1, "
                                  f"max_processes >= 1, max_open_files >= 8, 1 <= tmp_mb <= 4096)")

    @property
    def cpu(self) -> int:
        return self.cpu_seconds or max(1, int(-(-self.timeout // 1)))

    def as_job(self) -> dict[str, int]:
        return {"cpu_seconds": self.cpu, "memory_bytes": self.memory_mb << 20,
                "max_processes": self.max_processes, "max_output_bytes": self.max_output_bytes,
                "max_file_bytes": self.max_file_bytes, "max_open_files": self.max_open_files,
                "tmp_bytes": self.tmp_mb << 20}


@dataclass(frozen=True)
class Isolation:
    """What the OS enforces on this machine (from :func:`detect_isolation`). ``namespaces``:
    the whole ``namespaces`` mode works (it also gives ``network_namespace`` and
    ``pid_namespace``); ``seccomp``: the syscall filter can be installed."""

    network_namespace: bool
    pid_namespace: bool
    drop_privileges: bool
    rlimits: bool
    stdlib_readable: bool
    notes: dict[str, str] = field(default_factory=dict)
    namespaces: bool = False
    seccomp: bool = False
    landlock: bool = False

    def describe(self) -> str:
        """One line: which protections work here and which do not."""
        parts = {
            "resource limits": self.rlimits,
            "uid nobody": self.drop_privileges,
            "private namespaces and root filesystem": self.namespaces,
            "seccomp filter": self.seccomp,
            "landlock (for isolation: process)": self.landlock,
        }
        on = [k for k, v in parts.items() if v]
        off = [k for k, v in parts.items() if not v]
        text = "code-execution sandbox: " + ", ".join(on)
        if off:
            text += "; not available here: " + ", ".join(off)
            text += "".join(f" ({k}: {v})" for k, v in self.notes.items())
        return text


@dataclass
class ExecutionResult:
    """How one program did: ``outcome`` (one of OUTCOMES), tests ``passed`` of ``total``,
    a ``detail`` for anything but a pass, the wall ``seconds`` and the runner's ``pid`` (also
    its process group id). ``outputs``: the stdout of each stdin/stdout test that ran, in
    order (capped at ``max_output_bytes`` characters; the python tool of
    :mod:`rlfoundry.environments.tools` reads it)."""

    outcome: str
    passed: int
    total: int
    detail: str | None
    seconds: float
    pid: int
    outputs: list[str] = field(default_factory=list)


@dataclass
class _Run:
    answers: list[dict[str, Any]]
    setup: str
    returncode: int
    timed_out: bool
    over_output: bool
    stderr_tail: str
    cpu_seconds: float
    seconds: float
    pid: int


@functools.lru_cache(maxsize=1)
def runner_source() -> str:
    """The ``-c`` source of a runner: the jail module is made importable as ``sandbox_jail``,
    then the runner runs as ``__main__`` (the interpreter runs isolated: ``-I -S -B``)."""
    jail = JAIL.read_text(encoding="utf-8")
    runner = RUNNER.read_text(encoding="utf-8")
    return (f"import sys, types\n"
            f"jail = types.ModuleType('sandbox_jail')\n"
            f"exec(compile({jail!r}, 'sandbox_jail.py', 'exec'), jail.__dict__)\n"
            f"sys.modules['sandbox_jail'] = jail\n"
            f"del jail, types\n"
            f"exec(compile({runner!r}, 'sandbox_runner.py', 'exec'))\n")


def sandbox_user() -> tuple[int, int]:
    """uid/gid to run programs as when the trainer is root: ``nobody`` (65534)."""
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except (ImportError, KeyError):
        return NOBODY, NOBODY


def _identity() -> tuple[int | None, int | None]:
    return sandbox_user() if os.geteuid() == 0 else (None, None)


@functools.lru_cache(maxsize=1)
def detect_isolation() -> Isolation:
    """Probe (once per process) which OS protections work here, in a throwaway runner that
    builds a sandbox root and installs the seccomp filter; logs the result."""
    if os.name != "posix" or not hasattr(os, "killpg") or not sys.platform.startswith("linux"):
        raise SandboxError("the code-execution sandbox needs Linux")
    uid, gid = _identity()
    job = {"probe": True, "uid": uid, "gid": gid, "limits": SandboxLimits().as_job()}
    run = _run_job(job, timeout=30.0, max_output=1 << 16, answer_cap=1 << 16)
    try:
        found = ast.literal_eval(run.setup)
        if not isinstance(found, dict):
            raise ValueError("not a dict")
    except (ValueError, SyntaxError) as e:
        raise SandboxError(f"the sandbox probe failed (exit code {run.returncode}): "
                           f"{run.stderr_tail or run.setup or 'no output'}") from e
    notes = {k[: -len("_error")]: str(v) for k, v in found.items() if k.endswith("_error")}
    ns = bool(found.get("namespaces"))
    iso = Isolation(ns, ns, uid is not None and bool(found.get("setuid")),
                    bool(found.get("rlimits")), True, notes, ns, bool(found.get("seccomp")),
                    bool(found.get("landlock")))
    (logger.info if ns and iso.seccomp else logger.warning)("%s", iso.describe())
    if not iso.rlimits:
        raise SandboxError(f"the sandbox cannot set resource limits here: {notes.get('rlimits')}")
    return iso


def check_mode(mode: str, iso: Isolation) -> None:
    """Refuse ``namespaces`` mode where namespaces do not work, naming the key to fall back."""
    if mode not in MODES:
        raise ConfigError(f"code_execution: isolation={mode!r} must be one of {', '.join(MODES)}")
    if mode == "namespaces" and not iso.namespaces:
        raise SandboxError(f"code_execution: OS isolation (namespaces) is not available on this "
                           f"host ({iso.notes.get('namespaces', 'unknown reason')}); {MODE_HINT}")


def run_program(code: str, tests: Sequence[Any], limits: SandboxLimits | None = None, *,
                audit_hook: bool = True, preload: Sequence[str] | None = None,
                isolation: Isolation | None = None, mode: str = "namespaces",
                seccomp: bool = True, landlock: bool = True) -> ExecutionResult:
    """Run ``code`` against ``tests`` in a fresh sandbox and judge it here.

    ``tests``: strings of Python run after the program in its namespace (``assert f(2) ==
    4``), and/or ``{"input", "output"}`` dicts (the program runs as ``__main__`` with that
    stdin and passes when its stdout equals ``output`` up to trailing whitespace). ``preload``:
    modules imported before the switch to ``nobody`` (default: none in ``namespaces`` mode,
    where the standard library is readable; DEFAULT_PRELOAD in ``process`` mode). ``mode``:
    ``namespaces`` or ``process`` (see the module docs; ``process`` adds Landlock where the
    kernel has it); ``seccomp=False``, ``landlock=False`` and ``audit_hook=False`` exist to
    test the other layers. Raises :class:`SandboxError` only
    when the sandbox itself fails; whatever the program does ends in an ExecutionResult.
    """
    limits = limits or SandboxLimits()
    iso = isolation or detect_isolation()
    check_mode(mode, iso)
    if seccomp and not iso.seccomp:
        raise SandboxError(f"code_execution: the seccomp filter cannot be installed here "
                           f"({iso.notes.get('seccomp', 'unknown reason')})")
    prepared = prepare_tests(list(tests))
    uid, gid = _identity()
    job = {"code": code, "limits": limits.as_job(), "uid": uid, "gid": gid, "isolation": mode,
           "seccomp": seccomp, "audit_hook": audit_hook,
           "landlock": landlock and mode == "process" and iso.landlock,
           "preload": list(_preload(preload, mode)),
           "tests": [{"stdin": t.stdin} if t.is_io else {"program": t.program} for t in prepared]}
    workdir = None
    try:
        if mode == "process":
            workdir = Path(tempfile.mkdtemp(prefix="rlfoundry-sandbox-"))
            if uid is not None:
                os.chown(workdir, uid, gid)
        job["workdir"] = str(workdir) if workdir else "/sandbox"
        io_bytes = sum(1 for t in prepared if t.is_io) * 2 * limits.max_output_bytes
        run = _run_job(job, limits.timeout, limits.max_output_bytes,
                       answer_cap=(4 << 20) + io_bytes)
    finally:
        if workdir is not None:
            _remove_workdir(workdir)
    if not run.setup and run.timed_out:  # the machine is too busy to start it in time
        return ExecutionResult("timeout", 0, len(prepared), f"wall-clock limit of "
                               f"{limits.timeout:g} s (the sandbox was still starting)",
                               run.seconds, run.pid)
    if not run.setup.startswith("ready"):
        raise SandboxError(f"the sandbox could not start the program: "
                           f"{run.setup.removeprefix('error: ') or run.stderr_tail or 'no reason given'}"
                           f" (runner exit code {run.returncode})")
    return _classify(run, limits, prepared)


def _preload(preload: Sequence[str] | None, mode: str) -> Sequence[str]:
    if preload is not None:
        return preload
    return DEFAULT_PRELOAD if mode == "process" else ()


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


def _environment(workdir: str) -> dict[str, str]:
    """The whole environment of a program: nothing is inherited from the trainer."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "HOME": workdir, "TMPDIR": workdir, "PYTHONHASHSEED": "0",
            "PYTHONIOENCODING": "utf-8"}


def _run_job(job: dict[str, Any], timeout: float, max_output: int, answer_cap: int) -> _Run:
    answer_r, answer_w = os.pipe()
    setup_r, setup_w = os.pipe()
    job = {**job, "answer_fd": answer_w, "setup_fd": setup_w}
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-B", "-c", runner_source()],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(answer_w, setup_w), cwd="/", env=_environment(job.get("workdir", "/sandbox")),
            start_new_session=True)
    except BaseException:
        os.close(answer_r)
        os.close(setup_r)
        raise
    finally:
        os.close(answer_w)
        os.close(setup_w)
    try:
        _feed(proc, marshal.dumps(job))
        got = _collect(proc, answer_r, setup_r, timeout, max_output, answer_cap)
    finally:
        _stop(proc, relay=job.get("isolation") == "namespaces")
        os.close(answer_r)
        os.close(setup_r)
        returncode, cpu = _reap(proc)
    answers, setup, timed_out, over, tail = got
    return _Run(_parse_answers(answers), setup.decode("utf-8", "replace"), returncode,
                timed_out, over, tail, cpu, time.monotonic() - start, proc.pid)


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


def _collect(proc: subprocess.Popen, answer_fd: int, setup_fd: int, timeout: float,
             max_output: int, answer_cap: int) -> tuple[bytes, bytes, bool, bool, str]:
    """Read the answer and setup pipes and (counting bytes) stdout/stderr until all close, the
    wall time runs out or the output passes its cap. Returns (answers, setup, timed out,
    output exceeded, stderr tail)."""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "out")
    sel.register(proc.stderr, selectors.EVENT_READ, "err")
    sel.register(answer_fd, selectors.EVENT_READ, "answer")
    sel.register(setup_fd, selectors.EVENT_READ, "setup")
    deadline = time.monotonic() + timeout
    running = True  # False once the runner has exited and only leftovers hold the pipes
    answers, setup, tail, printed = bytearray(), bytearray(), bytearray(), 0

    def result(timed_out: bool, over: bool) -> tuple[bytes, bytes, bool, bool, str]:
        return bytes(answers), bytes(setup), timed_out, over, _text(tail)

    try:
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                return result(running, False)
            for key, _ in sel.select(min(left, 0.05)):
                data = os.read(key.fd, 1 << 16)
                if not data:
                    sel.unregister(key.fileobj)
                elif key.data == "answer":
                    answers += data
                elif key.data == "setup":
                    setup += data[: max(0, SETUP_CAP - len(setup))]
                else:
                    printed += len(data)
                    if key.data == "err":
                        tail = (tail + data)[-STDERR_TAIL:]
            if printed > max_output or len(answers) > answer_cap:
                return result(False, True)
            if running and _exited(proc.pid):  # leftovers get a short grace, then die
                deadline, running = min(deadline, time.monotonic() + GRACE), False
        return result(False, False)
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


def _parse_answers(data: bytes) -> list[dict[str, Any]]:
    """The records on the answer pipe, one Python literal of plain data per line, read with
    ``ast.literal_eval`` (which builds values, never runs code); anything else is ignored:
    it is only answers."""
    found = []
    for line in data.decode("utf-8", "replace").split("\n"):
        if not line.startswith("{") or len(line) > ANSWER_LINE_CAP:
            continue
        try:
            record = ast.literal_eval(line)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


# --------------------------------------------------------------------------- the verdict


def _signal_of(returncode: int) -> int | None:
    """The signal that ended the program: runners report a signal as a negative exit code,
    or as 128 + the signal when relayed by a PID-namespace init."""
    if returncode < 0:
        return -returncode
    if returncode > 128 and returncode - 128 in {s.value for s in signal.Signals}:
        return returncode - 128
    return None


def _claims(answers: list[dict[str, Any]]) -> dict[str, Any]:
    """What the program's side admits went wrong (it can only hurt its own score)."""
    claims: dict[str, Any] = {"violations": [], "memory": False, "output": False, "error": None,
                              "ended": False}
    for record in answers:
        if record.get("end") is not True:
            continue
        claims["ended"] = True
        violations = record.get("violations")
        if isinstance(violations, list):
            claims["violations"] += [str(v)[:300] for v in violations]
        claims["memory"] |= record.get("memory") is True
        claims["output"] |= record.get("output") is True
        if record.get("error") and claims["error"] is None:
            claims["error"] = str(record["error"])[:500]
    return claims


def _classify(run: _Run, limits: SandboxLimits, tests: list[PreparedTest]) -> ExecutionResult:
    total = len(tests)

    outputs = [r["out"] for r in run.answers
               if isinstance(r.get("t"), int) and isinstance(r.get("out"), str)]

    def result(outcome: str, detail: str | None, passed: int = 0) -> ExecutionResult:
        return ExecutionResult(outcome, passed, total, detail, run.seconds, run.pid,
                               outputs[: total])

    claims = _claims(run.answers)
    passed, detail = judge_tests(tests, run.answers)
    if run.over_output:
        return result("output_limit", f"printed more than {limits.max_output_bytes} bytes")
    if claims["violations"]:
        return result("blocked", f"blocked by the sandbox: {claims['violations'][0]}")
    raised = claims["error"] and f"the program raised {claims['error']}"
    if claims["memory"]:
        return result("memory", raised or detail or "MemoryError")
    if claims["output"]:
        return result("output_limit", raised or detail or "printed too much")
    if run.timed_out:
        return result("timeout", f"wall-clock limit of {limits.timeout:g} s")
    sig = _signal_of(run.returncode)
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and run.cpu_seconds >= limits.cpu):
        return result("timeout", f"CPU time limit of {limits.cpu} s")
    if sig == signal.SIGXFSZ:
        return result("output_limit", f"file size limit of {limits.max_file_bytes} bytes")
    if sig is not None:
        return result("killed", f"killed by {signal.Signals(sig).name}")
    if claims["error"] is not None:
        return result("error", f"the program raised {claims['error']}"
                      if not claims["error"].startswith("SyntaxError") else claims["error"])
    if passed == total:
        return result("passed", None, passed)
    if not claims["ended"]:
        return result("error", f"the program ended (exit code {run.returncode}) before its tests "
                               f"finished{': ' + run.stderr_tail[-300:] if run.stderr_tail else ''}",
                      passed)
    return result("failed", detail, passed)


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
