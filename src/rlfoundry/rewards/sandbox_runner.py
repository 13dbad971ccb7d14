"""The child side of the code-execution sandbox (run as ``python -I -S -B -c <source>``,
where the source is :mod:`rlfoundry.rewards.sandbox_jail` followed by this file).

It reads a job (marshal) on stdin; the trainer keeps every expected value, so nothing here
is secret from the program.

**Trusted part** (before any model-written code runs): the jail (namespaces and private
root, or a host directory with ``isolation: process``), then a fork for the program's
process, which takes its limits, identity and seccomp filter. The runner reports "ready" (or
why setup failed) on the *setup pipe*, which is closed before the program starts, so the
program can never write to it.

**The program's side** (untrusted from here on): it runs the program and each test and sends
*answers* on the answer pipe, one Python literal of plain data per line:
``{"c": check, "v": [values]}`` (the value of each assert's probe, encoded by :func:`encode`),
``{"t": test, "done": bool, "error": str}``, ``{"t": test, "out": stdout}``, then
``{"end": True, ...}`` with what went wrong (``error``, ``memory``, ``output``,
``violations``). The trainer judges the answers against expected values that never enter
this process; whatever is sent here can only supply answers or admit a failure. A Python
audit hook (optional) names blocked operations in failure details; it is not a security
boundary.
"""

import io
import marshal
import os
import signal
import sys

try:
    import sandbox_jail as jail  # inside the sandbox: put in place by the runner's bootstrap
except ImportError:  # imported as part of the package (tests, tools)
    from rlfoundry.rewards import sandbox_jail as jail

ANSWER = "__rlfoundry_answer__"
BLOCKED_MODULES = frozenset({"_ctypes", "_multiprocessing", "_posixsubprocess", "_socket",
                             "ctypes", "multiprocessing", "pty", "socket", "subprocess"})
BLOCKED_EVENTS = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.fork", "os.posix_spawn",
                  "os.spawn", "os.system", "os.kill", "os.killpg", "pty.", "resource.")

# ------------------------------------------------------------- the program's side: answers


def encode(value, depth=0):
    """A value as plain data the trainer can rebuild with standard types only (subclasses
    as their base type; anything else as ``["o", type name]``)."""
    if depth > 100:
        return ["o", "deeply nested value"]
    if value is None:
        return ["n"]
    if isinstance(value, bool):
        return ["b", bool.__bool__(value)]
    if isinstance(value, int):
        return ["i", int.__repr__(value)]
    if isinstance(value, float):
        return ["f", float.__repr__(value)]
    if isinstance(value, complex):
        return ["c", float.__repr__(value.real), float.__repr__(value.imag)]
    if isinstance(value, str):
        return ["s", str.__str__(value)]
    if isinstance(value, (bytes, bytearray)):
        return ["y", bytes(value).hex()]
    for kind, tag in ((list, "l"), (tuple, "t"), (set, "S"), (frozenset, "F")):
        if isinstance(value, kind):
            return [tag, [encode(v, depth + 1) for v in kind.__iter__(value)]]
    if isinstance(value, dict):
        return ["d", [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(value)]]
    name = type(value).__name__
    if name == "Decimal" and type(value).__module__ in ("decimal", "_decimal", "_pydecimal"):
        return ["D", str(value)]
    if name == "Fraction" and type(value).__module__ == "fractions":
        return ["Q", str(value.numerator), str(value.denominator)]
    return ["o", name]


class Answers:
    """One ``repr`` of a record of plain data per line (the trainer reads it with
    ``ast.literal_eval``; json would cost this process an import of ``re``)."""

    def __init__(self, fd):
        self.fd = fd

    def send(self, record):
        try:
            data = (repr(record) + "\n").encode("utf-8", "backslashreplace")
        except (ValueError, RecursionError) as e:
            data = (repr({**{k: v for k, v in record.items() if k in ("c", "t")},
                          "error": f"unsendable value: {type(e).__name__}"}) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]


class OutputLimit(BaseException):
    """The program printed more than the output limit (not swallowed by ``except Exception``)."""


class Violation(PermissionError):
    """The audit hook refused an operation."""


class CappedText(io.StringIO):
    def __init__(self, limit, state):
        super().__init__()
        self.limit, self.state, self.size = limit, state, 0

    def write(self, s):
        self.size += len(s)
        if self.size > self.limit:
            self.state["output"] = True
            raise OutputLimit(f"printed more than {self.limit} characters")
        return super().write(s)


READ_PATH_EVENTS = frozenset({"os.listdir", "os.scandir", "glob.glob", "glob.glob/2", "os.chdir"})
WRITE_PATH_EVENTS = frozenset({
    "os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
    "os.symlink", "os.truncate", "os.utime", "os.mkfifo", "os.mknod", "shutil.rmtree",
    "shutil.copyfile", "shutil.copytree", "shutil.move", "sqlite3.connect"})
HOOK_DEVICES = {"/dev/null": True, "/dev/zero": False, "/dev/urandom": False,
                "/dev/random": False}


def make_hook(workdir, read_roots, violations):
    """Names refused operations in failure details: sockets, processes, signals, ctypes,
    files outside the working directory (standard library reads excepted). Defense in
    depth and diagnostics only: the program can switch it off, the OS layer stays."""
    busy = []

    def allowed(raw, write):
        try:
            path = os.path.realpath(os.path.abspath(os.fsdecode(raw)))
        except (TypeError, ValueError):
            return True  # a descriptor, say: the kernel checks it
        if path in HOOK_DEVICES:
            return HOOK_DEVICES[path] or not write
        inside = [r for r in read_roots if path == r or path.startswith(r.rstrip("/") + "/")]
        mine = path == workdir or path.startswith(workdir.rstrip("/") + "/")
        return mine or (bool(inside) and not write)

    def reason_for(event, args):
        if event == "import":
            name = str(args[0]) if args else ""
            return f"import {name}" if name.split(".")[0] in BLOCKED_MODULES else None
        if event.startswith(BLOCKED_EVENTS):
            return event
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            if isinstance(path, int):
                return None
            write = any(c in str(mode) for c in "wax+") if mode else bool(
                (flags or 0) & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
            if not allowed(path, write):
                return f"open {os.fsdecode(path)!r} for {'writing' if write else 'reading'}"
        elif event in READ_PATH_EVENTS or event in WRITE_PATH_EVENTS:
            for arg in args:
                if isinstance(arg, (str, bytes, os.PathLike)) and not allowed(
                        arg, event in WRITE_PATH_EVENTS):
                    return f"{event} {os.fsdecode(arg)!r}"
        return None

    def hook(event, args):
        if busy:
            return
        busy.append(True)
        try:
            reason = reason_for(event, args)
        finally:
            busy.pop()
        if reason is not None:
            violations.append(reason)
            raise Violation(f"blocked by the sandbox: {reason}")

    return hook


def attempt(fn, state):
    try:
        fn()
        return None
    except Violation as e:
        return str(e)
    except MemoryError:
        state["memory"] = True
        return "MemoryError"
    except OutputLimit as e:
        return f"OutputLimit: {e}"
    except SystemExit as e:
        return None if e.code in (None, 0) else f"SystemExit({e.code!r})"
    except BaseException as e:  # the program's own exceptions are part of its answers
        return f"{type(e).__name__}: {str(e)[:200]}"


def run_tests(job, answers, state):
    tests = job["tests"]
    try:
        solution = compile(job["code"], "solution.py", "exec")
    except (SyntaxError, ValueError) as e:
        state["error"] = f"{type(e).__name__}: {e}"
        return
    compiled = [compile(t["program"], f"<test {i}>", "exec") if "program" in t else t
                for i, t in enumerate(tests)]
    if job["audit_hook"]:
        roots = sorted({os.path.dirname(os.__file__), sys.base_prefix, sys.prefix})
        sys.addaudithook(make_hook(os.path.realpath(job["workdir"]), roots, state["violations"]))

    def answer(check, *values):
        answers.send({"c": check, "v": [encode(v) for v in values]})

    namespace = {"__name__": "solution", "__builtins__": __builtins__}
    if any("program" in t for t in tests):
        state["error"] = attempt(lambda: exec(solution, namespace), state)
    for i, test in enumerate(compiled):
        if state["violations"] or state["memory"] or state["output"] or (
                state["error"] and not isinstance(test, dict)):
            break
        if isinstance(test, dict):
            out, error = run_io(solution, test["stdin"], job["limits"]["max_output_bytes"], state)
            answers.send({"t": i, "out": out, "error": error})
        else:
            namespace[ANSWER] = answer
            error = attempt(lambda t=test: exec(t, namespace), state)
            answers.send({"t": i, "done": error is None, "error": error})


def run_io(solution, stdin, limit, state):
    out = CappedText(limit, state)
    saved = sys.stdin, sys.stdout
    sys.stdin, sys.stdout = io.StringIO(stdin), out
    try:
        error = attempt(lambda: exec(solution, {"__name__": "__main__",
                                                "__builtins__": __builtins__}), state)
    finally:
        sys.stdin, sys.stdout = saved
    return out.getvalue(), error


def run_program(job):
    """The program's process: run it and its tests, send the answers, exit."""
    me = os.getpid()
    answers = Answers(job["answer_fd"])
    state = {"violations": [], "memory": False, "output": False, "error": None}
    run_tests(job, answers, state)
    if os.getpid() == me:  # a forked copy of the program must not answer for it
        try:
            sys.stdout.flush()
        except BaseException:  # the program may have replaced or closed stdout
            pass
        answers.send({"end": True, **state})
    os._exit(0)


# ---------------------------------------------------------------------------- processes


def exit_like(status):
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.WEXITSTATUS(status))


def report_setup(job, error=None):
    """Tell the trainer the sandbox is ready (or why not) and close the pipe for good."""
    text = "ready" if error is None else f"error: {error}"
    try:
        os.write(job["setup_fd"], text.encode()[:4000])
    finally:
        os.close(job["setup_fd"])


def start_program(job):
    """Fork the program's process (setup errors go to the setup pipe), close the setup
    pipe, and return the program's pid. The program starts only after the setup report is
    written, so the trainer never sees its output (or its flood) before "ready"."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        os.close(job["setup_fd"])
        try:
            jail.become_program(job)
            error = b""
        except BaseException as e:
            error = f"{type(e).__name__}: {e}".encode()[:2000] or b"?"
        os.write(ready_w, error or b"ok")
        os.close(ready_w)
        if error:
            os._exit(1)
        go = os.read(go_r, 1)
        os.close(go_r)
        if go != b"g":
            os._exit(1)
        run_program(job)
    os.close(ready_w)
    os.close(go_r)
    answer = os.read(ready_r, 4096)
    os.close(ready_r)
    report_setup(job, None if answer == b"ok" else (answer.decode(errors="replace") or
                                                    "the program's process died in setup"))
    os.write(go_w, b"g")
    os.close(go_w)
    return pid


def run_as_init(job):
    """PID 1 of the new namespaces: build the root, start the program, reap everything, and
    exit like the program (which ends every process left in the namespace)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        jail.build_root(job)
        jail.libc.prctl(jail.PR_SET_DUMPABLE, 0, 0, 0, 0)
    except BaseException as e:
        report_setup(job, f"{type(e).__name__}: {e}")
        os._exit(1)
    child = start_program(job)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if pid == child:
            exit_like(status)


def main():
    job = marshal.loads(sys.stdin.buffer.read())  # from the trainer: trusted
    os.dup2(os.open(os.devnull, os.O_RDWR), 0)
    if job.get("probe"):
        try:
            os.write(job["setup_fd"], repr(jail.probe(job)).encode())
        finally:
            os._exit(0)
    if job["isolation"] == "process":
        child = start_program(job)
        _, status = os.waitpid(child, 0)
        exit_like(status)
    try:
        jail.enter_namespaces(job)
    except (jail.SetupError, OSError) as e:
        report_setup(job, f"{type(e).__name__}: {e}")
        os._exit(1)
    # The trainer stops a run with SIGTERM to this process, which kills the namespace's init
    # (and so everything in it) and reaps it: nothing is orphaned, not even as a zombie.
    init = {}
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(init["pid"], signal.SIGKILL)
                  if "pid" in init else os._exit(128 + signum))
    init["pid"] = os.fork()
    if init["pid"] == 0:
        run_as_init(job)
    os.close(job["setup_fd"])
    _, status = os.waitpid(init["pid"], 0)
    exit_like(status)


if __name__ == "__main__":
    main()
