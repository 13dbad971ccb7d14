"""The child side of the code-execution sandbox: stdlib only, never imported by the trainer.

:mod:`rlfoundry.rewards.sandbox` starts ``python -S -s -B -c <this file's source>`` in a new
session with a minimal environment, writes a JSON job to its stdin and reads one JSON verdict
from the file descriptor ``result_fd``. In order, this process

1. enters new network and PID namespaces when asked (``unshare``; a user namespace too when
   not root); with a PID namespace it forks an init process (PID 1) that forks the worker,
   so every process the program leaves behind dies with the namespace, and it stays as the
   parent that reaps init (SIGTERM to it kills the namespace);
2. imports ``preload`` modules (the program may not be able to read the standard library
   once it runs as another user), sets resource limits (CPU time, address space, file size,
   open files, no core dumps), changes into its private directory, drops root privileges
   to ``uid``/``gid``, then limits processes (``RLIMIT_NPROC`` binds only for non-root);
3. installs an audit hook (best effort, defense in depth) that blocks sockets, process
   creation, signals to other processes, ``ctypes``, and file access outside the private
   directory (reads of the standard library excepted), recording every blocked attempt;
4. runs the program and its tests and writes the verdict, tagged with the job's ``nonce``.

A verdict: ``{"nonce", "outcome", "passed", "total", "detail"}`` with ``outcome`` one of
``passed``, ``failed``, ``error`` (the program raised or does not compile), ``blocked``,
``memory``, ``output_limit``, or ``sandbox_error`` (this runner could not set up; the
trainer reports it instead of scoring). ``{"probe": true}`` jobs only report which of the
isolation steps work here.
"""

import io
import json
import os
import resource
import signal
import sys

CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

BLOCKED_MODULES = frozenset({
    "_ctypes", "_multiprocessing", "_posixsubprocess", "_socket", "_ssl", "ctypes",
    "multiprocessing", "pty", "socket", "ssl", "subprocess",
})
BLOCKED_EVENT_PREFIXES = (
    "socket.", "ctypes.", "subprocess.", "os.exec", "os.fork", "os.posix_spawn", "os.spawn",
    "os.system", "os.kill", "os.killpg", "os.setns", "os.unshare", "pty.", "resource.",
    "signal.pthread_kill", "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.", "poplib.",
    "imaplib.", "nntplib.", "telnetlib.", "syslog.",
)
READ_PATH_EVENTS = frozenset({"os.listdir", "os.scandir", "glob.glob", "glob.glob/2", "os.chdir",
                              "os.getxattr", "os.listxattr"})
WRITE_PATH_EVENTS = frozenset({
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
    "os.symlink", "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.mkfifo",
    "os.mknod", "os.setxattr", "os.removexattr", "shutil.rmtree", "shutil.copyfile",
    "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move", "shutil.chown",
    "shutil.make_archive", "shutil.unpack_archive", "sqlite3.connect",
})
DEVICES = {"/dev/null": True, "/dev/zero": False, "/dev/urandom": False, "/dev/random": False}


class SandboxViolation(PermissionError):
    """The audit hook blocked an operation (recorded even if the program catches this)."""


class OutputLimit(BaseException):
    """The program printed more than the output limit (a BaseException: not swallowed by
    ``except Exception``)."""


# ----------------------------------------------------------------------------- isolation


def unshare(flags):
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(ctypes.c_int(flags)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare: {os.strerror(err)}")


def namespace_flags(job):
    flags = (CLONE_NEWNET if job["network_namespace"] else 0)
    flags |= (CLONE_NEWPID if job["pid_namespace"] else 0)
    if flags and os.geteuid() != 0:
        flags |= CLONE_NEWUSER  # unprivileged users may create namespaces inside their own
    return flags


def set_limits(job):
    limits = job["limits"]
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["max_file_bytes"],) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2)


def drop_privileges(job):
    uid, gid = job["uid"], job["gid"]
    if uid is None or os.geteuid() != 0:
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        raise OSError(f"could not drop privileges to uid {uid}")


def limit_processes(job):
    n = job["limits"]["max_processes"]
    resource.setrlimit(resource.RLIMIT_NPROC, (n, n))


def probe(job):
    """Which isolation steps work here (each tried in this throwaway process)."""
    found = {}
    for name, flag in (("network_namespace", CLONE_NEWNET), ("pid_namespace", CLONE_NEWPID)):
        try:
            unshare(flag | (CLONE_NEWUSER if os.geteuid() != 0 else 0))
            found[name] = True
        except OSError as e:
            found[name] = False
            found[name + "_error"] = str(e)
    try:
        set_limits(job)
        found["rlimits"] = True
    except (OSError, ValueError) as e:
        found["rlimits"] = False
        found["rlimits_error"] = str(e)
    found["drop_privileges"] = False
    if job["uid"] is not None and os.geteuid() == 0:
        try:
            drop_privileges(job)
            found["drop_privileges"] = True
        except OSError as e:
            found["drop_privileges_error"] = str(e)
    found["stdlib_readable"] = os.access(os.path.dirname(os.__file__), os.R_OK | os.X_OK)
    return found


# ----------------------------------------------------------------------------- audit hook


def inside(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def make_hook(workdir, read_roots, violations):
    busy = []

    def allowed(raw, write):
        try:
            path = os.path.realpath(os.path.abspath(os.fsdecode(raw)))
        except (TypeError, ValueError):
            return True  # not a path (a descriptor, say): the kernel checks it
        if path in DEVICES:
            return DEVICES[path] or not write
        if inside(path, workdir):
            return True
        return not write and any(inside(path, root) for root in read_roots)

    def check(event, args):
        if event == "import":
            name = args[0] if args else ""
            return f"import {name}" if str(name).split(".")[0] in BLOCKED_MODULES else None
        if event.startswith(BLOCKED_EVENT_PREFIXES):
            return event
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            if isinstance(path, int):
                return None
            write = any(c in str(mode) for c in "wax+") if mode else bool(
                (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if not allowed(path, write):
                return f"open {os.fsdecode(path)!r} for {'writing' if write else 'reading'}"
            return None
        if event in READ_PATH_EVENTS or event in WRITE_PATH_EVENTS:
            write = event in WRITE_PATH_EVENTS
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not allowed(arg, write):
                    return f"{event} {os.fsdecode(arg)!r}"
        return None

    def hook(event, args):
        if busy:
            return
        busy.append(True)
        try:
            reason = check(event, args)
        finally:
            busy.pop()
        if reason is not None:
            violations.append(reason)
            raise SandboxViolation(f"blocked by the sandbox: {reason}")

    return hook


# ----------------------------------------------------------------------------- running


class CappedText(io.StringIO):
    """stdout for one stdin/stdout test: at most ``limit`` characters."""

    def __init__(self, limit, state):
        super().__init__()
        self.limit, self.state, self.size = limit, state, 0

    def write(self, s):
        self.size += len(s)
        if self.size > self.limit:
            self.state["output"] = True
            raise OutputLimit(f"printed more than {self.limit} characters")
        return super().write(s)


def attempt(fn, state):
    """Run user code; None if it finished, else a short description of what it raised."""
    try:
        fn()
        return None
    except SandboxViolation as e:
        return str(e)
    except MemoryError:
        state["memory"] = True
        return "MemoryError"
    except OutputLimit as e:
        return f"OutputLimit: {e}"
    except SystemExit as e:
        return None if e.code in (None, 0) else f"SystemExit({e.code!r})"
    except BaseException as e:  # the program's own exceptions are its verdict
        return f"{type(e).__name__}: {str(e)[:200]}"


def same_output(got, want):
    def lines(text):
        out = [line.rstrip() for line in str(text).replace("\r\n", "\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    return lines(got) == lines(want)


def run_tests(solution, tests, limit, state):
    """(passed, detail, solution_error) for assert tests (strings run after the program, in
    its namespace) and stdin/stdout tests ({"input", "output"}, a fresh run each)."""
    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    solution_error = None
    if any(not isinstance(t, dict) for t in tests):  # assert tests run in the program's namespace
        solution_error = attempt(lambda: exec(solution, namespace), state)
    passed, detail = 0, None
    for i, test in enumerate(tests):
        if state["violations"] or state["memory"] or state["output"]:
            break
        if not isinstance(test, dict):
            if solution_error is not None:
                break
            error = attempt(lambda t=test: exec(t, namespace), state)
        else:
            error = run_io_test(solution, test, limit, state)
        if error is None:
            passed += 1
        elif detail is None:
            detail = f"test {i}: {error}"
    return passed, detail, solution_error


def run_io_test(solution, test, limit, state):
    out = CappedText(limit, state)
    saved = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = io.StringIO(test["input"]), out
    try:
        error = attempt(lambda: exec(solution, {"__name__": "__main__",
                                                "__builtins__": __builtins__}), state)
    finally:
        sys.stdin, sys.stdout = saved
    if error is None and not same_output(out.getvalue(), test["output"]):
        error = f"wrong output {out.getvalue()[:80]!r}, expected {str(test['output'])[:80]!r}"
    return error


def verdict_of(passed, total, detail, solution_error, state):
    if state["violations"]:
        return "blocked", state["violations"][0]
    if state["memory"]:
        return "memory", detail or solution_error or "MemoryError"
    if state["output"]:
        return "output_limit", detail or "printed too much"
    if solution_error is not None:
        return "error", f"the program raised {solution_error}"
    if passed == total:
        return "passed", None
    return "failed", detail


def worker(job):
    """Set up limits and identity, run the program, return the verdict dict."""
    for name in job["preload"]:
        __import__(name)
    read_roots = sorted({os.path.dirname(os.__file__), sys.base_prefix, sys.prefix})
    set_limits(job)
    os.chdir(job["workdir"])
    drop_privileges(job)
    limit_processes(job)
    tests = job["tests"]
    try:
        solution = compile(job["code"], "solution.py", "exec")
    except (SyntaxError, ValueError) as e:
        return {"outcome": "error", "passed": 0, "total": len(tests),
                "detail": f"{type(e).__name__}: {e}"}
    compiled = [compile(t, f"<test {i}>", "exec") if isinstance(t, str) else t
                for i, t in enumerate(tests)]
    state = {"violations": [], "memory": False, "output": False}
    if job["audit_hook"]:
        sys.addaudithook(make_hook(os.path.realpath(job["workdir"]), read_roots,
                                   state["violations"]))
    passed, detail, solution_error = run_tests(solution, compiled, job["limits"]["max_output_bytes"],
                                               state)
    outcome, detail = verdict_of(passed, len(tests), detail, solution_error, state)
    return {"outcome": outcome, "passed": passed, "total": len(tests), "detail": detail}


def report(job, verdict):
    data = (json.dumps({**verdict, "nonce": job["nonce"]}) + "\n").encode()
    view = memoryview(data)
    while view:
        view = view[os.write(job["result_fd"], view):]


def run_worker(job):
    """The worker process: compute and report the verdict, then exit at once."""
    me = os.getpid()
    try:
        verdict = worker(job)
    except BaseException as e:  # setup failed, or the program broke this runner
        verdict = {"outcome": "sandbox_error", "passed": 0, "total": len(job["tests"]),
                   "detail": f"{type(e).__name__}: {e}"}
    if os.getpid() == me:  # a forked copy of the program must not report
        try:
            sys.stdout.flush()
        except BaseException:  # the program may have replaced or closed stdout
            pass
        report(job, verdict)
    os._exit(0)


def exit_like(status):
    """Exit with a child's wait status: its exit code, or 128 + the signal that killed it."""
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))


def run_as_init(job):
    """PID 1 of the new namespace: fork the worker, reap everything, exit like the worker."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    child = os.fork()
    if child == 0:
        run_worker(job)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if pid == child:
            exit_like(status)


def main():
    job = json.loads(sys.stdin.buffer.read())
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    if job.get("probe"):
        report(job, probe(job))
        os._exit(0)
    try:
        flags = namespace_flags(job)
        if flags:
            unshare(flags)
    except OSError as e:
        report(job, {"outcome": "sandbox_error", "passed": 0, "total": len(job["tests"]),
                     "detail": str(e)})
        os._exit(1)
    if not job["pid_namespace"]:
        run_worker(job)
    # The trainer stops a run with SIGTERM to this process, which kills the namespace's init
    # (and so everything in it) and reaps it: no process is orphaned, not even as a zombie.
    init = {}
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(init["pid"], signal.SIGKILL)
                  if "pid" in init else os._exit(128 + signum))
    init["pid"] = os.fork()  # the first child is PID 1 of the new PID namespace
    if init["pid"] == 0:
        run_as_init(job)
    _, status = os.waitpid(init["pid"], 0)
    exit_like(status)


if __name__ == "__main__":
    main()
