"""Attacks on the code-execution sandbox, each run as the hostile program *inside* it.

Every program first switches the in-process audit hook off through ``gc`` (the hook is not a
security boundary; ``test_gc_disables_the_audit_hook`` shows the trick works). Each attack
is run twice where that is cheap: with ``isolation: process`` (the weaker mode, roughly the
protection level the sandbox had before) to show the attack really works, and with the
default ``namespaces`` isolation, where it must fail. The programs report what they got only
through hidden-value checks (``assert steal() == <the secret>``), which the trainer judges.
"""

import os
import secrets
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import pytest

from rlfoundry.errors import DataError
from rlfoundry.rewards import REWARDS
from rlfoundry.rewards import sandbox as sandbox_module
from rlfoundry.rewards.sandbox import (
    DEFAULT_PRELOAD,
    Isolation,
    SandboxError,
    SandboxLimits,
    detect_isolation,
    run_program,
    run_programs,
)
from rlfoundry.rewards.sandbox_jail import landlock_abi

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs Linux")

LIMITS = SandboxLimits(timeout=4, memory_mb=256)
PRELOAD = DEFAULT_PRELOAD + ("socket", "glob", "encodings.idna")  # process mode: nobody
# cannot read a standard library under /root, so what the attacks use is imported first

# Finds the audit hook's closure through the garbage collector and sets its re-entrancy
# guard, so the hook returns at once for every event from then on.
UNHOOK = """
import gc as _gc
for _f in _gc.get_objects():
    if type(_f).__name__ == "function" and _f.__name__ == "hook" and _f.__closure__:
        for _name, _cell in zip(_f.__code__.co_freevars, _f.__closure__):
            if _name == "busy":
                _cell.cell_contents.append(True)
"""


def needs(*protections):
    iso = detect_isolation()
    missing = [p for p in protections if not getattr(iso, p)]
    if missing:
        pytest.skip(f"not available here: {missing}")


def attack(code, tests, mode="namespaces", limits=LIMITS, **options):
    """Run ``code`` (after switching the audit hook off) against ``tests``; ``process`` mode
    without Landlock is the weakest level, where the attacks are shown to work."""
    needs("namespaces", "seccomp", "drop_privileges")
    if mode == "process":
        options.setdefault("landlock", False)
    return run_program(UNHOOK + code, tests, limits, mode=mode, preload=PRELOAD, **options)


@pytest.fixture
def public_dir():
    """A world-readable host directory (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="rlfoundry-attack-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def answers(monkeypatch):
    """What each run's program sent back (its own claims), captured as the trainer judges."""
    seen = []
    real = sandbox_module._classify

    def spy(run, limits, tests):
        seen.append(run)
        return real(run, limits, tests)

    monkeypatch.setattr(sandbox_module, "_classify", spy)
    return seen


# ---------------------------------------------------------------------- the audit hook


def test_gc_disables_the_audit_hook():
    needs("namespaces")
    blocked = run_program("import subprocess", ["assert True"], LIMITS)
    assert blocked.outcome == "blocked"
    unhooked = attack("import subprocess\nok = subprocess.__name__", ["assert ok == 'subprocess'"])
    assert unhooked.outcome == "passed", unhooked.detail  # the hook is gone; the OS layer stays


# ------------------------------------------------------------------- forging the verdict


FORGERY = """
import os, sys
main = sys.modules["__main__"]
# the old harness computed its verdict here: make every test "pass" without running it
main.attempt = lambda fn, state: None
fake = repr({"t": 0, "done": True}) + "\\n" + repr({"end": True, "violations": [], "memory": False,
            "output": False, "error": None}) + "\\n" + repr({"c": 0, "v": [["b", True]]}) + "\\n"
for fd in range(3, 64):  # every descriptor it can find, the trainer's pipes included
    try:
        os.write(fd, fake.encode() + b'{"outcome": "passed", "passed": 1, "total": 1}\\n')
    except OSError:
        pass
print('{"outcome": "passed", "passed": 1, "total": 1, "nonce": "guess"}')
print("PASSED 1/1")
"""


def test_monkeypatching_main_and_fake_answers_do_not_pass(answers):
    code = "def add(a, b):\n    return 0\n" + FORGERY
    r = attack(code, ["assert add(123456, 654321) == 777777"])
    assert (r.outcome, r.passed) == ("failed", 0), r.detail
    claims = sandbox_module._claims(answers[-1].answers)
    assert claims["ended"] and {"t": 0, "done": True} in answers[-1].answers  # forged inside
    assert "777777" not in repr(answers[-1].answers)  # the expected value never went in


def test_a_forged_setup_error_is_only_an_answer(answers):
    code = ("import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'error: pwned\\n')\n"
            "    except OSError:\n        pass\nx = 1")
    r = attack(code, ["assert x == 1"])
    assert r.outcome == "passed", r.detail  # not a SandboxError: the setup pipe was closed


def test_exiting_early_with_status_zero_does_not_pass(answers):
    r = attack("import os\nos._exit(0)\ndef add(a, b):\n    return a + b",
               ["assert add(2, 3) == 5"])
    assert answers[-1].returncode == 0  # an exit-status protocol would have called this a pass
    assert (r.outcome, r.passed) == ("error", 0) and "before its tests finished" in r.detail


def test_stdin_stdout_answers_are_compared_by_the_trainer(answers):
    r = attack(FORGERY + "print('wrong')", [{"input": "2\n", "output": "4\n"}])
    assert (r.outcome, r.passed) == ("failed", 0), r.detail
    assert "4" not in repr([a for a in answers[-1].answers if "t" in a])


def test_answering_every_guess_does_not_pass():
    code = ("import os\nguesses = ''.join(repr({'c': 0, 'v': [['i', str(g)]]}) + '\\n' "
            "for g in range(2000)).encode()\nfor fd in range(3, 64):\n    try:\n"
            "        os.write(fd, guesses)\n    except OSError:\n        pass\n"
            "def add(a, b):\n    return 0")
    r = attack(code, ["assert add(600, 700) == 1300"])  # every value sent for a check must hold
    assert (r.outcome, r.passed) == ("failed", 0), r.detail


def test_an_always_equal_object_does_not_pass():
    needs("namespaces")
    code = ("class Equal:\n    def __eq__(self, other):\n        return True\n"
            "class Int(int):\n    def __eq__(self, other):\n        return True\n"
            "def add(a, b):\n    return Equal()\ndef mul(a, b):\n    return Int(0)")
    # compared inside the sandbox (an open check), the object fools the comparison ...
    assert run_program(code, ["assert (add(1, 2) == 3) == True"], LIMITS).outcome == "passed"
    # ... compared in the trainer, as plain data, it does not
    r = run_program(code, ["assert add(1, 2) == 3"], LIMITS)
    assert r.outcome == "failed" and "object of type Equal" in r.detail
    r = run_program(code, ["assert mul(2, 3) == 6"], LIMITS)
    assert r.outcome == "failed" and "(got 0)" in r.detail


def test_open_checks_can_be_refused():
    fn = REWARDS.get("code_execution")
    out = fn(["p"], ["def f(x):\n    return x"], tests=[["assert f(2) == 2", "assert f(2)"]],
             timeout=3)
    assert list(out) == [1.0]
    with pytest.raises(DataError, match=r"sample 0: tests\[0\]: `assert f\(2\)`.*open_checks: allow"):
        fn(["p"], ["x = 1"], tests=[["assert f(2)"]], open_checks="reject")


# ------------------------------------------------------------------ reading host secrets


def test_reading_a_world_readable_host_file(public_dir):
    secret = f"host-secret-{secrets.token_hex(8)}"
    path = public_dir / "secret.txt"
    path.write_text(secret)
    path.chmod(0o644)
    code = f"def steal():\n    return open({str(path)!r}).read()"
    tests = [f"assert steal() == {secret!r}"]
    assert attack(code, tests, mode="process").outcome == "passed"  # it works without namespaces
    r = attack(code, tests)
    assert r.outcome == "failed" and "FileNotFoundError" in r.detail


def test_reading_host_proc():
    host_init = Path("/proc/1/cmdline").read_bytes()
    mine = Path(f"/proc/{os.getpid()}/cmdline").read_bytes()
    code = ("def cmdline(pid):\n    try:\n        return open(f'/proc/{pid}/cmdline', 'rb').read()\n"
            "    except OSError as e:\n        return type(e).__name__")
    tests = [f"assert cmdline(1) == {host_init!r}", f"assert cmdline({os.getpid()}) == {mine!r}"]
    assert attack(code, tests, mode="process").outcome == "passed"
    r = attack(code, tests)
    assert (r.outcome, r.passed) == ("failed", 0), r.detail
    # its /proc is its own PID namespace's: its own process, nothing of the host
    r = attack("import os\npids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())",
               ["assert max(pids) < 10", "assert os.getpid() < 10"])
    assert r.outcome == "passed", r.detail


def test_reading_the_runs_trainer_state(public_dir):
    state = public_dir / "run" / "checkpoint-000001" / "trainer_state.pt"
    state.parent.mkdir(parents=True)
    token = secrets.token_hex(8)
    state.write_bytes(f"fake trainer state {token}".encode())
    for p in (state.parent.parent, state.parent):
        p.chmod(0o755)
    state.chmod(0o644)
    code = f"def steal():\n    return open({str(state)!r}, 'rb').read()"
    tests = [f"assert steal() == {state.read_bytes()!r}"]
    assert attack(code, tests, mode="process").outcome == "passed"
    r = attack(code, tests)
    assert r.outcome == "failed" and "FileNotFoundError" in r.detail


def test_the_filesystem_view_is_minimal_and_read_only():
    code = """
import os, sys
top = set(os.listdir('/'))
def writable(path):
    try:
        open(os.path.join(path, 'x'), 'w').close()
        return True
    except OSError:
        return False
prefix_parts = os.path.realpath(sys.base_prefix).strip('/').split('/')
"""
    allowed = {"bin", "dev", "lib", "lib32", "lib64", "libx32", "proc", "sandbox", "sbin", "tmp",
               "usr", "etc", sys_top()}
    tests = [f"assert top <= {allowed!r}", "assert writable('/sandbox') is True",
             "assert writable('/tmp') is True", "assert writable('/') is False",
             "assert writable('/usr') is False", "assert writable(sys.base_prefix) is False",
             "assert set(os.listdir('/dev')) == {'null', 'zero', 'random', 'urandom', 'fd', "
             "'stdin', 'stdout', 'stderr'}"]
    r = attack(code, tests)
    assert r.outcome == "passed", r.detail


def sys_top():
    return os.path.realpath(sys.base_prefix).strip("/").split("/")[0]


# ---------------------------------------------------------------- writing where it should not


def test_files_written_to_tmp_do_not_persist():
    name = f"/tmp/rlfoundry-attack-{secrets.token_hex(8)}"
    code = (f"open({name!r}, 'w').write('persisted')\nopen('left-behind', 'w').write('x')\n"
            f"import os\nwd = os.getcwd()")
    try:
        assert attack(code, ["assert True"], mode="process").outcome == "passed"
        assert os.path.exists(name)  # without namespaces it lands on the host
        os.remove(name)
        r = attack(code, ["assert True", "assert wd == '/sandbox'"])
        assert r.outcome == "passed", r.detail
        assert not os.path.exists(name)
    finally:
        if os.path.exists(name):
            os.remove(name)


VICTIM = """
import os, time
def intruded():
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        if os.path.exists('pwned'):
            return open('pwned').read()
        time.sleep(0.02)
    return None
"""
INTRUDER = """
import glob, os, time
def attack():
    hits = 0
    end = time.monotonic() + WAIT
    while time.monotonic() < end:
        for d in glob.glob('/tmp/*/') + glob.glob('/*/'):  # host sample dirs, or siblings of its own
            if os.path.realpath(d) in (os.getcwd(), '/tmp'):
                continue
            try:
                with open(os.path.join(d, 'pwned'), 'w') as f:
                    f.write('pwned-by-another-sample')
                hits += 1
            except OSError:
                pass
        if hits:
            return hits
        time.sleep(0.02)
    return hits
"""


def test_a_sample_cannot_write_into_another_samples_directory():
    def programs(wait):  # both run at once; each stops as soon as the intrusion happened
        return [(f"{UNHOOK}WAIT = {wait}{VICTIM}", ["assert intruded() == 'pwned-by-another-sample'"]),
                (f"{UNHOOK}WAIT = {wait}{INTRUDER}", ["assert attack() == 0"])]

    needs("namespaces", "seccomp", "drop_privileges")
    limits = SandboxLimits(timeout=10, memory_mb=256)
    weak = run_programs(programs(7), limits, workers=2, mode="process", preload=PRELOAD,
                        landlock=False)
    assert [r.outcome for r in weak] == ["passed", "failed"], [r.detail for r in weak]
    strong = run_programs(programs(1.5), limits, workers=2, preload=PRELOAD)
    assert [r.outcome for r in strong] == ["failed", "passed"], [r.detail for r in strong]


def test_the_private_tmpfs_is_size_limited():
    code = """
import os
def fill():
    written = 0
    try:
        for i in range(200):
            with open(f'/tmp/f{i}', 'wb') as f:
                f.write(b'x' * 500_000)
            written += 500_000
    except OSError as e:
        return written, e.errno
    return written, 0
"""
    r = attack(code, ["assert fill()[1] == 28", "assert fill()[0] <= 4_000_000"],
               limits=SandboxLimits(timeout=4, memory_mb=256, tmp_mb=4))
    assert r.outcome == "passed", r.detail  # ENOSPC at 4 MB


# ------------------------------------------------------------------- sockets and network


@pytest.fixture
def unix_server(public_dir):
    path = str(public_dir / "host.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(8)
    server.settimeout(0.3)
    yield path, server
    server.close()


def connections(server):
    got = 0
    while True:
        try:
            conn, _ = server.accept()
        except (TimeoutError, BlockingIOError):
            return got
        conn.close()
        got += 1


def test_host_unix_socket_via_socket_and_ctypes(unix_server):
    path, server = unix_server
    code = f"""
import ctypes, socket, struct
def via_socket():
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect({path!r})
        return 'connected'
    except OSError as e:
        return type(e).__name__
def via_ctypes():
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.socket(1, 1, 0)
    addr = struct.pack('H108s', 1, {path.encode()!r})
    return libc.connect(fd, addr, len(addr))
"""
    tests = ["assert via_socket() == 'connected'", "assert via_ctypes() == 0"]
    assert attack(code, tests, mode="process").outcome == "passed"
    assert connections(server) == 2  # both got through without namespaces
    r = attack(code, tests)
    assert (r.outcome, r.passed) == ("failed", 0), r.detail
    assert connections(server) == 0


def test_abstract_unix_socket():
    name = f"\0rlfoundry-attack-{secrets.token_hex(6)}"
    server = socket.socket(socket.AF_UNIX)
    server.bind(name)
    server.listen(4)
    server.settimeout(0.3)
    code = (f"import socket\ndef reach():\n    s = socket.socket(socket.AF_UNIX)\n    try:\n"
            f"        s.connect({name!r})\n        return 'connected'\n    except OSError as e:\n"
            f"        return type(e).__name__")
    try:
        assert attack(code, ["assert reach() == 'connected'"], mode="process").outcome == "passed"
        assert connections(server) == 1
        r = attack(code, ["assert reach() == 'connected'"])
        assert r.outcome == "failed" and connections(server) == 0
    finally:
        server.close()


def test_network_to_localhost():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.3)
    port = server.getsockname()[1]
    code = (f"import socket\ndef reach():\n    try:\n"
            f"        socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            f"        return 'connected'\n    except OSError as e:\n        return str(e)")
    try:
        assert attack(code, ["assert reach() == 'connected'"], mode="process").outcome == "passed"
        assert connections(server) == 1
        r = attack(code, ["assert reach() == 'connected'"])
        assert r.outcome == "failed" and "unreachable" in r.detail
        assert connections(server) == 0
    finally:
        server.close()


# ------------------------------------------------------------------------ resource bombs


def test_fork_bomb_is_bounded_and_leaves_nothing():
    code = ("import os\ndef bomb():\n    n = 0\n    for _ in range(200):\n        try:\n"
            "            if os.fork() == 0:\n                import time\n"
            "                time.sleep(600)\n            n += 1\n        except OSError:\n"
            "            pass\n    return n")
    r = attack(code, ["assert bomb() == 0"])  # max_processes=1: no fork at all
    assert r.outcome == "passed", r.detail
    r = attack(code, ["assert bomb() < 8"],
               limits=SandboxLimits(timeout=4, memory_mb=256, max_processes=8))
    assert r.outcome == "passed", r.detail
    assert not _sandboxed_sleepers()  # the namespace took every child with it


def _sandboxed_sleepers():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/status").read_text().count("\nUid:\t65534") and \
                    b"code-execution sandbox" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def test_memory_bomb():
    r = attack("x = bytearray(10 ** 10)", ["assert True"])
    assert r.outcome == "memory", r.detail


# ----------------------------------------------------------------------------- seccomp


SYSCALLS = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def call(name, *args):
    result = getattr(libc, name)(*args)
    return 0 if result == 0 else ctypes.get_errno()
"""


@pytest.mark.parametrize("call, without", [
    ("call('ptrace', 0, 0, 0, 0)", 0),  # PTRACE_TRACEME works without the filter
    ("call('unshare', 0x10000000)", None),  # a user namespace
    ("call('mount', b'none', b'/tmp', b'tmpfs', 0, None)", None),
    ("call('syscall', 425, 1, None)", None),  # io_uring_setup
])
def test_seccomp_refuses(call, without):
    r = attack(SYSCALLS, [f"assert {call} == 1"])  # EPERM
    assert r.outcome == "passed", r.detail
    if without is not None:
        assert attack(SYSCALLS, [f"assert {call} == {without}"], seccomp=False).outcome == "passed"


def test_init_cannot_be_signalled_or_read():
    code = ("import os\ndef poke():\n    out = []\n    for f in (lambda: os.kill(1, 9),\n"
            "              lambda: open('/proc/1/mem', 'rb').read(1)):\n        try:\n"
            "            f()\n            out.append('ok')\n        except OSError as e:\n"
            "            out.append(type(e).__name__)\n    return out")
    r = attack(code, ["assert 'ok' not in poke()"])
    assert r.outcome == "passed", r.detail


# ------------------------------------------------------------------- hosts without namespaces


def test_without_namespaces_the_default_refuses_and_names_the_key(monkeypatch):
    weak = Isolation(False, False, True, True, True, {"namespaces": "unshare: EPERM"}, False, True)
    monkeypatch.setattr(sandbox_module, "detect_isolation", lambda: weak)
    monkeypatch.setattr(sys.modules["rlfoundry.rewards.code_execution"], "detect_isolation",
                        lambda: weak)
    fn = REWARDS.get("code_execution")
    with pytest.raises(SandboxError, match=r"namespaces\) is not available.*isolation: process"):
        fn(["p"], ["x = 1"], tests=[["assert x == 1"]])
    with pytest.raises(SandboxError, match="isolation: process"):
        run_program("x = 1", ["assert x == 1"], isolation=weak)


def test_the_process_fallback_runs_when_asked():
    needs("seccomp")
    fn = REWARDS.get("code_execution")
    out = fn(["p", "q"], ["x = 1", "x = 2"], tests=[["assert x == 1"]] * 2, isolation="process",
             timeout=3)
    assert list(out) == [1.0, 0.0] and out.reasons == ["passed", "failed"]


def test_a_timeout_while_the_sandbox_starts_is_a_timeout():
    needs("namespaces")
    r = run_program("x = 1", ["assert x == 1"], SandboxLimits(timeout=0.001))
    assert r.outcome == "timeout" and "still starting" in r.detail


def test_timeouts_kill_the_namespace():
    r = attack("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)\n"
               "while True:\n    pass", ["assert True"],
               limits=SandboxLimits(timeout=1, memory_mb=256, max_processes=4))
    assert r.outcome == "timeout"
    try:
        os.killpg(r.pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive and not _sandboxed_sleepers()  # the setsid child died with the namespace


def test_the_user_namespace_path_for_non_root_trainers(monkeypatch, public_dir):
    """A trainer that is not root gets a user namespace (root inside, no capabilities for
    the program); forced here so that the path is tested on a root machine too."""
    needs("namespaces", "seccomp")
    real = sandbox_module._run_job
    monkeypatch.setattr(sandbox_module, "_run_job", lambda job, *a, **k: real(
        {**job, "user_namespace": True, "uid": None, "gid": None}, *a, **k))
    secret = public_dir / "secret.txt"
    secret.write_text("host secret")
    secret.chmod(0o644)
    code = (UNHOOK + SYSCALLS + "status = open('/proc/self/status').read()\n"
            "caps = status.split('CapEff:')[1].split()[0]\n"
            "def read(path):\n    try:\n        return open(path).read()\n"
            "    except OSError as e:\n        return type(e).__name__")
    tests = ["assert os.getuid() == 0", "assert caps == '0000000000000000'",
             f"assert read({str(secret)!r}) == 'FileNotFoundError'",
             "assert call('ptrace', 0, 0, 0, 0) == 1", "assert call('unshare', 0x10000000) == 1",
             "assert 'sandbox' in os.listdir('/') and 'work' not in os.listdir('/')"]
    r = run_program(code, tests, LIMITS, preload=PRELOAD)
    assert (r.outcome, r.passed) == ("passed", len(tests)), r.detail


def test_landlock_hardens_the_process_fallback(public_dir):
    needs("landlock")
    secret = public_dir / "secret.txt"
    secret.write_text("host secret")
    secret.chmod(0o644)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(4)
    tcp.settimeout(0.3)
    tmp_file = f"/tmp/rlfoundry-attack-{secrets.token_hex(8)}"
    abstract = f"\0rlfoundry-attack-{secrets.token_hex(6)}"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(abstract)
    listener.listen(4)
    listener.settimeout(0.3)
    code = f"""
import os, socket
def attempt(fn):
    try:
        fn()
        return 'ok'
    except OSError as e:
        return type(e).__name__
def unix(address):
    s = socket.socket(socket.AF_UNIX)
    s.connect(address)
read_host = attempt(lambda: open({str(secret)!r}).read())
read_proc = attempt(lambda: open('/proc/1/cmdline').read())
write_tmp = attempt(lambda: open({tmp_file!r}, 'w').write('x'))
tcp = attempt(lambda: socket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=1))
abstract = attempt(lambda: unix({abstract!r}))
own = attempt(lambda: open('mine.txt', 'w').write('x'))
"""
    abi = landlock_abi()  # TCP rules came with ABI 4, scoped abstract sockets with ABI 6
    checked = ["read_host", "read_proc", "write_tmp"] + ["tcp"] * (abi >= 4) + ["abstract"] * (
        abi >= 6)
    tests = ["assert own == 'ok'"] + [f"assert {name} == 'ok'" for name in checked]
    try:
        weak = attack(code, tests, mode="process")
        assert (weak.outcome, weak.passed) == ("passed", len(tests)), weak.detail  # all work
        os.remove(tmp_file)
        connections(tcp), connections(listener)
        r = attack(code, tests, mode="process", landlock=True)
        assert r.passed == 1, r.detail  # only its own directory
        assert not os.path.exists(tmp_file)
        assert connections(tcp) == 0 and connections(listener) == 0
    finally:
        tcp.close()
        listener.close()
        if os.path.exists(tmp_file):
            os.remove(tmp_file)
