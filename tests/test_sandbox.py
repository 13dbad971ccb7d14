"""The code-execution sandbox against hostile completions: none may harm the trainer or the
host; each gets the configured reward and a reason."""

import os
import socket

import pytest

from rlfoundry.errors import DataError
from rlfoundry.rewards import REWARDS, compute_rewards, extract_code
from rlfoundry.rewards.code_execution import parse_tests
from rlfoundry.rewards.sandbox import (
    DEFAULT_PRELOAD,
    SandboxLimits,
    detect_isolation,
    run_program,
)

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the sandbox needs Linux")

FAST = {"timeout": 1.5, "memory_mb": 256}


def score(code, tests, **options):
    """(reward, reason, detail) of one completion through the registered reward."""
    fn = REWARDS.get("code_execution")
    out = fn(["p"], [f"```python\n{code}\n```"], tests=[tests], **{**FAST, **options})
    return out[0], out.reasons[0], out.details[0]


def group_gone(pid):
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False


# ------------------------------------------------------------------------- honest programs


def test_passing_failing_and_partial_credit():
    code = "def add(a, b):\n    return a + b if a < 5 else 0"
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(7, 1) == 8"]
    assert score(code, tests[:2]) == (1.0, "passed", None)
    reward, reason, detail = score(code, tests)
    assert (reward, reason) == (0.0, "failed") and detail.startswith("test 2: AssertionError")
    assert score(code, tests, partial_credit=True)[0] == pytest.approx(2 / 3)


def test_stdin_stdout_tests_and_apps_format():
    code = "n = int(input())\nprint(n * 2)"
    assert score(code, [{"input": "3\n", "output": "6\n"}, {"input": "5", "output": "10  "}])[1] == "passed"
    assert score(code, {"inputs": ["1", "2"], "outputs": ["2", "5"]})[:2] == (0.0, "failed")


def test_syntax_error_and_exception_are_errors_with_failure_reward():
    reward, reason, detail = score("def f(:", ["assert True"], failure_reward=-0.5)
    assert (reward, reason) == (-0.5, "error") and "SyntaxError" in detail
    reward, reason, detail = score("raise ValueError('boom')", ["assert True"], failure_reward=None)
    assert (reward, reason) == (None, "error") and "ValueError: boom" in detail


def test_rows_without_tests_get_no_reward():
    fn = REWARDS.get("code_execution")
    out = fn(["p", "q"], ["x = 1", "x = 2"], tests=[None, ["assert x == 2"]], **FAST)
    assert list(out) == [None, 1.0] and out.reasons == ["no_tests", "passed"]


def test_extract_code_takes_the_last_python_block():
    text = "Plan:\n```python\nx = 1\n```\nBetter:\n```py\nx = 2\n```\n```bash\nrm -rf /\n```"
    assert extract_code(text) == "x = 2\n"
    assert extract_code("```python\ny = 3\n") == "y = 3\n"  # cut off mid-block
    assert extract_code("z = 4") == "z = 4"


@pytest.mark.parametrize("bad, match", [
    (5, "must be a list"),
    ([3], r"tests\[0\] must be an assert string"),
    (["assert (("], r"tests\[0\] is not valid Python"),
    ({"inputs": ["1"], "outputs": []}, "1 inputs but 0 outputs"),
])
def test_malformed_tests_name_the_sample(bad, match):
    with pytest.raises(DataError, match=match):
        parse_tests(bad, "sample 3")


def test_malformed_tests_go_through_the_reward_error_policy():
    fns = [("code_execution", REWARDS.get("code_execution"), 1.0)]
    result = compute_rewards(fns, ["p", "q"], ["x = 1", "x = 1"], {"tests": [["assert x == 1"], [7]]},
                             on_error="skip", sample_ids=["a.jsonl:1#0", "a.jsonl:2#0"])
    assert result.per_function["code_execution"][0] == 1.0
    assert result.reasons["code_execution"] == ["passed", "exception"]
    assert "tests[0] must be an assert string" in result.details["code_execution"][1]


# ------------------------------------------------------------------------ hostile programs

HOSTILE = {
    # name: (code, tests, expected reason)
    "infinite loop": ("while True:\n    pass", ["assert True"], "timeout"),
    "sleeps forever": ("import time\ntime.sleep(600)", ["assert True"], "timeout"),
    "fork bomb": ("import os\nwhile True:\n    os.fork()", ["assert True"], "blocked"),
    "subprocess": ("import subprocess\nsubprocess.run(['id'])", ["assert True"], "blocked"),
    "memory bomb": ("x = bytearray(10 ** 11)", ["assert True"], "memory"),
    "growing memory": ("a = []\nwhile True:\n    a.append(' ' * 10 ** 6)", ["assert True"], "memory"),
    "huge stdout": ("while True:\n    print('x' * 10000)", ["assert True"], "output_limit"),
    "huge stdout via fd": ("import os\nwhile True:\n    os.write(1, b'x' * 65536)", ["assert True"],
                           "output_limit"),
    "huge stdout in io test": ("print('y' * 10 ** 6)", [{"input": "", "output": "y"}], "output_limit"),
    "socket": ("import socket\nsocket.create_connection(('127.0.0.1', 1), timeout=1)", ["assert True"],
               "blocked"),
    "ctypes": ("import ctypes\nctypes.CDLL(None).system(b'id')", ["assert True"], "blocked"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_program_gets_failure_reward_and_reason(name):
    code, tests, reason = HOSTILE[name]
    reward, got, detail = score(code, tests, failure_reward=-1.0)
    assert (reward, got) == (-1.0, reason), detail
    assert detail


def test_files_outside_its_directory_survive(tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("precious")
    for code in (f"import os\nos.remove({str(sentinel)!r})",
                 f"open({str(sentinel)!r}, 'w').write('gone')",
                 f"import os\nos.rename({str(sentinel)!r}, 'stolen.txt')",
                 "open('/tmp/rlfoundry_sandbox_was_here', 'w').write('x')"):
        reward, reason, detail = score(code, ["assert True"])
        assert (reward, reason) == (0.0, "blocked"), (code, detail)
    assert sentinel.read_text() == "precious"
    assert not os.path.exists("/tmp/rlfoundry_sandbox_was_here")


def test_its_own_directory_is_writable_and_private():
    code = ("import os\nopen('scratch.txt', 'w').write('ok')\n"
            "assert os.getcwd() == os.environ['HOME'] == os.environ['TMPDIR']\n"
            "assert oct(os.stat('.').st_mode)[-3:] == '700'")
    reward, reason, detail = score(code, ["assert open('scratch.txt').read() == 'ok'"])
    assert reason == "passed", detail


def test_environment_secrets_are_not_inherited(monkeypatch):
    monkeypatch.setenv("RLFOUNDRY_TEST_SECRET", "hunter2")
    code = "import os\nleak = os.environ.get('RLFOUNDRY_TEST_SECRET')\nkeys = sorted(os.environ)"
    assert score(code, ["assert leak == 'hunter2'"])[:2] == (0.0, "failed")
    allowed = "{'HOME', 'LANG', 'LC_ALL', 'PATH', 'PYTHONHASHSEED', 'PYTHONIOENCODING', 'TMPDIR'}"
    assert score(code, [f"assert set(keys) <= {allowed}"])[1] == "passed"
    # nor readable from the parent's /proc entry
    code = f"data = open('/proc/{os.getpid()}/environ', 'rb').read()"
    assert score(code, ["assert b'hunter2' in data"])[:2] == (0.0, "blocked")


def test_the_trainer_survives_and_no_process_is_left():
    r = run_program("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)",
                    ["assert True"], SandboxLimits(**FAST))
    assert r.outcome == "blocked" and group_gone(r.pid)
    r = run_program("while True:\n    pass", ["assert True"], SandboxLimits(**FAST))
    assert r.outcome == "timeout" and group_gone(r.pid) and sandbox_processes() == []


def test_a_batch_runs_in_parallel_with_mixed_outcomes():
    fn = REWARDS.get("code_execution")
    completions = ["x = 1", "while True: pass", "import socket", "x = 2"]
    out = fn(["p"] * 4, completions, tests=[["assert x == 1"]] * 4, workers=4, **FAST)
    assert list(out) == [1.0, 0.0, 0.0, 0.0]
    assert out.reasons == ["passed", "timeout", "blocked", "failed"]


# ------------------------------------------------------------- the OS layer on its own

def require(protection, why):
    if not getattr(detect_isolation(), protection):
        pytest.skip(why)


def os_only(code, tests, mode="namespaces", **options):
    """Run with the audit hook off: only the OS protections stand."""
    return run_program(code, tests, SandboxLimits(**{**FAST, **options}), audit_hook=False,
                       preload=DEFAULT_PRELOAD + ("socket",), mode=mode)


def test_os_layer_stops_a_fork_bomb():
    require("drop_privileges", "needs root to run programs as nobody")
    r = os_only("import os\nwhile True:\n    os.fork()", ["assert True"])
    assert r.outcome == "error" and "Resource temporarily unavailable" in r.detail
    assert group_gone(r.pid)


def test_os_layer_protects_files(tmp_path):  # tmp_path is root's; the program runs as nobody
    require("drop_privileges", "needs root to run programs as nobody")
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("precious")
    r = os_only(f"import os\nos.remove({str(sentinel)!r})", ["assert True"], mode="process")
    assert r.outcome == "error" and "PermissionError" in r.detail
    r = os_only(f"import os\nos.remove({str(sentinel)!r})", ["assert True"])
    assert r.outcome == "error" and "FileNotFoundError" in r.detail  # not in its view at all
    assert sentinel.read_text() == "precious"


def test_os_layer_has_no_network():
    require("network_namespace", "no network namespaces here")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.2)
    port = server.getsockname()[1]
    for host in ("127.0.0.1", "8.8.8.8"):
        r = os_only(f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(({host!r}, {port}))",
                    ["assert True"])
        assert r.outcome == "error" and "unreachable" in r.detail, r.detail
    with pytest.raises(socket.timeout):
        server.accept()  # nothing ever connected
    server.close()


def test_os_layer_kills_escaped_processes():
    require("pid_namespace", "no PID namespaces here")
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(600)"
    r = os_only(code, ["assert True"], max_processes=4)
    assert r.outcome == "passed"  # the child left its process group and outlived the program
    assert group_gone(r.pid) and sandbox_processes() == []


def sandbox_processes():
    """Processes still running the sandbox runner (its source is on their command line)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"child side of the code-execution sandbox" in f.read():
                    found.append(pid)
        except OSError:  # exited while we looked
            continue
    return found


@pytest.mark.slow
def test_grpo_counts_and_logs_sandbox_reasons(tmp_path, capsys):
    from rlfoundry.algorithms.grpo import GRPOTrainer

    rows = [{"prompt": f"def f():\n    return {k}\n", "tests": [f"assert f() == {k}"]} for k in range(4)]
    cfg = {"algorithm": {"name": "grpo", "group_size": 4, "sampling": {"max_new_tokens": 6},
                         "rewards": [{"name": "code_execution", "args": {"timeout": 2, "workers": 2}}]},
           "data": {"train": rows},
           "training": {"output_dir": str(tmp_path), "batch_size": 4, "max_steps": 1},
           "logging": {"tensorboard": False, "progress_bar": False}}
    metrics = GRPOTrainer(config=cfg).train()
    counts = {k: v for k, v in metrics.items() if k.startswith("reward/code_execution/")}
    assert sum(counts.values()) == 16 and set(counts) <= {f"reward/code_execution/{o}" for o in
                                                          ("passed", "failed", "error")}
    assert counts["reward/code_execution/error"] >= 1  # a random-init model writes no Python
    out = capsys.readouterr().out
    assert "step 1: reward 'code_execution' on <python>[row " in out and ": error (" in out
    assert out.count("step 1: reward 'code_execution'") == 3  # the first few, not all 16
