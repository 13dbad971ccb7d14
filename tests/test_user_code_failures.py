"""User code that hangs, exits or crashes: rewards, plugins, losses (issue #15, items 7-8).

Rewards under ``reward_timeout`` run in a forked worker that is SIGKILLed at the limit, so a
reward that swallows the timeout cannot hold the run up; exits, interrupts and crashes raised
by user code are errors naming the function; a real Ctrl-C still stops everything.
"""

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from rlfoundry.errors import ConfigError
from rlfoundry.plugins import import_plugins
from rlfoundry.rewards import RewardError, compute_rewards, in_process, resolve_rewards
from rlfoundry.rewards.worker import reap_workers
from rlfoundry.user_code import UserCodeError

IDS = ["x.jsonl:1#0", "x.jsonl:1#1", "x.jsonl:2#0"]
COMPLETIONS = ["ok", "bad", "ok"]
HANG_S = 20.0  # a "hang" ends by itself after this long, so the old code fails instead of hanging
TIMEOUT = 0.5
MARGIN = 2.0  # fork, kill and scheduling on a busy 2-core machine


def _children() -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        out |= {int(p) for p in (task / "children").read_text().split()}
    return out


@pytest.fixture
def no_leftover_workers():
    before = _children()
    yield
    reap_workers(block=True)  # workers are SIGKILLed at once but reaped lazily
    assert _children() <= before, "a reward worker process was left behind"


def _hang_on_bad(completions):
    if "bad" in completions:
        end = time.monotonic() + HANG_S
        while time.monotonic() < end:
            pass


def swallows_base_exception(prompts, completions, **kw):
    while True:
        try:
            _hang_on_bad(completions)
            return [1.0] * len(completions)
        except BaseException:  # the old SIGALRM timeout raised in here and was swallowed
            continue


def swallows_exception(prompts, completions, **kw):
    while True:
        try:
            _hang_on_bad(completions)
            return [1.0] * len(completions)
        except Exception:
            continue


def ignores_sigterm(prompts, completions, **kw):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    _hang_on_bad(completions)
    return [1.0] * len(completions)


def run(fn, on_error, timeout=TIMEOUT, label="f"):
    return compute_rewards([(label, fn, 1.0)], ["p"] * 3, COMPLETIONS, on_error=on_error,
                           sample_ids=IDS, timeout=timeout)


@pytest.mark.parametrize("fn", [swallows_base_exception, swallows_exception, ignores_sigterm])
@pytest.mark.parametrize("policy, expected", [("zero", 0.0), ("skip", None)])
def test_reward_that_defeats_the_timeout_is_killed(fn, policy, expected, no_leftover_workers):
    start = time.monotonic()
    result = run(fn, policy)
    elapsed = time.monotonic() - start
    # the batch call and then the bad sample's call each get TIMEOUT seconds
    assert elapsed < 2 * TIMEOUT + MARGIN, f"took {elapsed:.1f} s"
    values = result.per_function["f"].tolist()
    assert values[0] == values[2] == 1.0
    assert values[1] == 0.0 if expected == 0.0 else values[1] != values[1]
    assert result.reasons["f"] == [None, "timeout", None]
    assert result.num_errors == {"f": 1}


def test_timeout_raise_policy_names_function_and_sample(no_leftover_workers):
    start = time.monotonic()
    with pytest.raises(RewardError) as info:
        run(swallows_base_exception, "raise")
    assert time.monotonic() - start < 2 * TIMEOUT + MARGIN
    message = str(info.value)
    assert f"reward 'f' timed out after {TIMEOUT:g} s on sample 'x.jsonl:1#1'" in message
    assert "test_user_code_failures:swallows_base_exception" in message


def calls_sys_exit(prompts, completions, **kw):
    if "bad" in completions:
        sys.exit(0)
    return [1.0] * len(completions)


def calls_os_exit(prompts, completions, **kw):
    if "bad" in completions:
        os._exit(0)
    return [1.0] * len(completions)


def raises_keyboard_interrupt(prompts, completions, **kw):
    if "bad" in completions:
        raise KeyboardInterrupt
    return [1.0] * len(completions)


def raises_generator_exit(prompts, completions, **kw):
    if "bad" in completions:
        raise GeneratorExit("closed")
    return [1.0] * len(completions)


def segfaults(prompts, completions, **kw):
    if "bad" in completions:
        ctypes.string_at(0)
    return [1.0] * len(completions)


WORKER_CASES = [
    (calls_sys_exit, "exception", "called sys.exit(0)"),
    (calls_os_exit, "crashed", "ended its worker process with exit status 0"),
    (raises_keyboard_interrupt, "exception", "raised KeyboardInterrupt"),
    (raises_generator_exit, "exception", "raised GeneratorExit: closed"),
    (segfaults, "crashed", "killed its worker process with SIGSEGV"),
]


@pytest.mark.parametrize("fn, reason, what", WORKER_CASES)
def test_exits_and_crashes_in_the_worker_are_errors_of_the_function(fn, reason, what,
                                                                    no_leftover_workers):
    with pytest.raises(RewardError) as info:
        run(fn, "raise", label="my_reward")
    message = str(info.value)
    assert message.startswith(f"reward 'my_reward' {what}")
    assert "on sample 'x.jsonl:1#1' (index 1; 1 of 3 failed)" in message
    assert f"test_user_code_failures:{fn.__name__}" in message
    result = run(fn, "zero", label="my_reward")
    assert result.per_function["my_reward"].tolist() == [1.0, 0.0, 1.0]
    assert result.reasons["my_reward"] == [None, reason, None]
    assert result.details["my_reward"][1].startswith(what)


@pytest.mark.parametrize("fn, what", [(calls_sys_exit, "called sys.exit(0)"),
                                      (raises_keyboard_interrupt, "raised KeyboardInterrupt"),
                                      (raises_generator_exit, "raised GeneratorExit: closed")])
def test_exits_in_process_are_errors_of_the_function(fn, what):
    with pytest.raises(RewardError) as info:
        run(fn, "raise", timeout=None)
    message = str(info.value)
    assert f"reward 'f' {what} on sample 'x.jsonl:1#1'" in message
    assert f"test_user_code_failures.py:{fn.__code__.co_firstlineno + 2} in {fn.__name__}" in message
    result = run(fn, "skip", timeout=None)
    assert result.reasons["f"] == [None, "exception", None]


@pytest.mark.parametrize("fn", [calls_os_exit, segfaults])
def test_in_process_false_isolates_without_a_timeout(fn, no_leftover_workers):
    result = run(in_process(fn, False), "zero", timeout=None)
    assert result.reasons["f"] == [None, "crashed", None]


GRANDCHILD = {"pid_file": None}


def dies_while_a_grandchild_holds_the_pipe(prompts, completions, **kw):
    if "bad" in completions:
        pid = os.fork()
        if pid == 0:  # inherits the reply pipe, so the worker's death brings no EOF
            time.sleep(HANG_S)
            os._exit(0)
        Path(GRANDCHILD["pid_file"]).write_text(str(pid))
        os._exit(3)
    return [1.0] * len(completions)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_worker_death_is_seen_even_when_a_grandchild_keeps_the_pipe_open(tmp_path,
                                                                       no_leftover_workers):
    GRANDCHILD["pid_file"] = tmp_path / "grandchild.pid"
    start = time.monotonic()
    result = run(in_process(dies_while_a_grandchild_holds_the_pipe, False), "zero", timeout=None)
    assert time.monotonic() - start < MARGIN
    assert result.reasons["f"] == [None, "crashed", None]
    assert "exit status 3" in result.details["f"][1]
    grandchild = int(GRANDCHILD["pid_file"].read_text())  # in the worker's process group,
    deadline = time.monotonic() + MARGIN                   # which is killed with it
    while _running(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(grandchild)


class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text")


def raises_unprintable_or_huge(prompts, completions, **kw):
    if "bad" in completions:
        raise Unprintable()
    if "huge" in completions:
        raise ValueError("x" * 1_000_000)
    return [1.0] * len(completions)


@pytest.mark.parametrize("timeout", [None, TIMEOUT])
def test_unprintable_and_huge_exception_texts_are_contained(timeout):
    result = compute_rewards([("f", raises_unprintable_or_huge, 1.0)], ["p"] * 3,
                             ["ok", "bad", "huge"], on_error="skip", timeout=timeout)
    details = result.details["f"]
    assert details[1] == "raised Unprintable: <unprintable: its str() raised RuntimeError>"
    assert details[2].startswith("raised ValueError: xxx") and len(details[2]) < 2100
    assert details[2].endswith("(998000 more characters)")


def test_worker_runs_closures_lambdas_and_bound_methods_and_keeps_scores(no_leftover_workers):
    from rlfoundry.rewards import Scores

    class Judge:
        def __init__(self, bonus):
            self.bonus = bonus

        def score(self, prompts, completions, **kw):
            return Scores([self.bonus] * len(completions), ["judged"] * len(completions))

    offset = 0.25
    fns = [("lambda", lambda p, c, **kw: [len(x) + offset for x in c], 1.0),
           ("method", Judge(2.0).score, 1.0)]
    result = compute_rewards(fns, ["p"] * 3, COMPLETIONS, timeout=5.0)
    assert result.per_function["lambda"].tolist() == [2.25, 3.25, 2.25]
    assert result.per_function["method"].tolist() == [2.0, 2.0, 2.0]
    assert result.reasons["method"] == ["judged"] * 3


def torch_reward(prompts, completions, **kw):
    import torch

    x = torch.randn(128, 128)
    return [float((x @ x).sum() * 0) + torch.get_num_threads() for _ in completions]


def test_torch_works_in_the_worker_after_the_trainer_used_a_thread_pool(no_leftover_workers):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(256, 256)
        (x @ x).sum()  # the trainer's OpenMP pool is up when the worker is forked
        result = compute_rewards([("t", torch_reward, 1.0)], ["p"] * 2, ["a", "b"], timeout=30.0)
        assert result.per_function["t"].tolist() == [1.0, 1.0]  # one thread in the worker
        assert torch.get_num_threads() == 2  # the trainer's setting is untouched
    finally:
        torch.set_num_threads(before)


def test_malformed_return_in_the_worker_is_still_a_bug_not_a_sample_failure():
    with pytest.raises(RewardError, match="returned 2 values for 3 samples"):
        compute_rewards([("f", lambda p, c, **kw: [1.0, 2.0], 1.0)], ["p"] * 3, COMPLETIONS,
                        on_error="zero", timeout=5.0)


def test_in_process_opt_out_from_yaml_keeps_state_in_the_trainer():
    [(label, fn, _)] = resolve_rewards([{"name": f"{__name__}:counting", "in_process": True}])
    COUNT["calls"] = 0
    compute_rewards([(label, fn, 1.0)], ["p"] * 3, COMPLETIONS, timeout=5.0)
    assert COUNT["calls"] == 1  # ran here: its state changed
    [(label, fn, _)] = resolve_rewards([f"{__name__}:counting"])
    compute_rewards([(label, fn, 1.0)], ["p"] * 3, COMPLETIONS, timeout=5.0)
    assert COUNT["calls"] == 1  # ran in a worker: the trainer's copy is untouched


COUNT = {"calls": 0}


def counting(prompts, completions, **kw):
    COUNT["calls"] += 1
    return [1.0] * len(completions)


def _sigint_soon(delay=0.3):
    pid = os.getpid()
    timer = threading.Timer(delay, lambda: os.kill(pid, signal.SIGINT))
    timer.start()
    return timer


def sleeps(prompts, completions, **kw):
    time.sleep(HANG_S)
    return [1.0] * len(completions)


@pytest.mark.parametrize("timeout", [None, 5.0])  # in this process / in a worker
def test_a_real_ctrl_c_still_stops_reward_scoring(timeout, no_leftover_workers):
    start = time.monotonic()
    timer = _sigint_soon()
    with pytest.raises(KeyboardInterrupt):
        compute_rewards([("f", sleeps, 1.0)], ["p"] * 3, COMPLETIONS, on_error="zero",
                        timeout=timeout)
    timer.join()
    assert time.monotonic() - start < HANG_S / 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_first_ctrl_c_in_training_waits_for_the_worker_then_stops(no_leftover_workers):
    """Under the trainer's StopRequest the first SIGINT only asks to stop after the step:
    the reward still finishes and is not counted as its failure."""
    from rlfoundry.training.signals import StopRequest

    def slow(prompts, completions, **kw):
        time.sleep(1.0)
        return [1.0] * len(completions)

    with StopRequest() as stop:
        timer = _sigint_soon()
        result = compute_rewards([("f", slow, 1.0)], ["p"] * 3, COMPLETIONS, timeout=5.0)
        timer.join()
    assert stop.signum == signal.SIGINT
    assert result.per_function["f"].tolist() == [1.0, 1.0, 1.0]


# ---------------------------------------------------------------- plugins and losses


@pytest.mark.parametrize("body, what", [("sys.exit(0)", "called sys.exit(0)"),
                                        ("raise KeyboardInterrupt", "raised KeyboardInterrupt")])
def test_plugin_that_exits_at_import_is_a_config_error(tmp_path, body, what):
    plugin = tmp_path / f"exiting_plugin_{abs(hash(body))}.py"
    plugin.write_text(f"import sys\nX = 1\n{body}\n")
    with pytest.raises(ConfigError) as info:
        import_plugins([str(plugin)])
    message = str(info.value)
    assert f"'{plugin}' {what} at {plugin}:3 in <module>" in message
    assert f"rlfoundry_plugin_{plugin.stem}" not in sys.modules


def test_entry_point_plugin_that_exits_is_a_config_error(monkeypatch):
    import importlib.metadata

    class ExitingEntryPoint:
        name, value = "bad", "bad_pkg.plugin"

        def load(self):
            sys.exit(3)

    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group: [ExitingEntryPoint()] if group == "rlfoundry.plugins" else [])
    with pytest.raises(ConfigError, match=r"plugin entry point 'bad = bad_pkg.plugin' \(group "
                       r"rlfoundry.plugins\) called sys.exit\(3\) at .* in load"):
        import_plugins([])


def test_plugin_exit_via_cli_is_a_nonzero_exit_with_a_message(tmp_path):
    (tmp_path / "bad_plugin.py").write_text("import sys\nsys.exit(0)\n")
    out = subprocess.run([sys.executable, "-m", "rlfoundry", "list", "--plugins", "./bad_plugin.py"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "plugins: './bad_plugin.py' called sys.exit(0) at" in out.stderr
    assert "Traceback" not in out.stderr


EXITING_LOSS = textwrap.dedent('''
    import sys
    from rlfoundry.algorithms.loss_functions import LossFunctionRegistry
    from rlfoundry.algorithms.loss_functions.dpo import DPOLossFn

    @LossFunctionRegistry.register("exiting_dpo")
    class ExitingDPO(DPOLossFn):
        def __call__(self, batch, model_outputs):
            raise SystemExit(0)
''')


@pytest.mark.slow
def test_loss_raising_system_exit_fails_the_cli_run_naming_the_loss(tmp_path):
    (tmp_path / "my_losses.py").write_text(EXITING_LOSS)
    (tmp_path / "run.yaml").write_text(textwrap.dedent(f"""
        plugins: [./my_losses.py]
        model: {{name_or_path: "builtin:tiny"}}
        data: {{train: "builtin:sort_preferences", train_size: 16, eval_size: 8}}
        algorithm: {{loss: {{type: exiting_dpo}}}}
        training: {{max_steps: 2, batch_size: 4, output_dir: {tmp_path / "run"}}}
        logging: {{tensorboard: false, progress_bar: false}}
    """))
    out = subprocess.run([sys.executable, "-m", "rlfoundry", "train", "run.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert ("the loss 'exiting_dpo' (rlfoundry_plugin_my_losses:ExitingDPO) called "
            "sys.exit(0)") in out.stderr, out.stderr
    assert "my_losses.py:9 in __call__" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_loss_exiting_while_it_is_built_fails_the_cli_run(tmp_path):
    (tmp_path / "init_exit.py").write_text(textwrap.dedent('''
        import sys
        from rlfoundry.algorithms.loss_functions import LossFunctionRegistry

        @LossFunctionRegistry.register("init_exit")
        class InitExit:
            def __init__(self, cfg):
                sys.exit(0)
    '''))
    out = subprocess.run([sys.executable, "-m", "rlfoundry", "train", "plugins=[./init_exit.py]",
                          "algorithm.loss.type=init_exit", f"training.output_dir={tmp_path / 'run'}"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert "user code called sys.exit(0) at" in out.stderr and "init_exit.py:8 in __init__" in out.stderr


def swallows_on_odd_answers(prompts, completions, answer, **kw):
    while True:
        try:
            if any(int(a) % 2 for a in answer):
                end = time.monotonic() + HANG_S
                while time.monotonic() < end:
                    pass
            return [1.0] * len(completions)
        except Exception:
            continue


@pytest.mark.slow
def test_grpo_run_survives_a_reward_that_swallows_the_timeout(tmp_path):
    from tests.test_grpo_trainer import config, trainer64

    cfg = config(tmp_path, {"rewards": [{"name": f"{__name__}:swallows_on_odd_answers"}],
                            "reward_timeout": 0.2, "reward_error": "zero"}, max_steps=1)
    start = time.monotonic()
    metrics = trainer64(cfg).train()
    assert time.monotonic() - start < HANG_S
    assert metrics[f"reward/{__name__}:swallows_on_odd_answers/timeout"] >= 4


def test_loss_hook_raising_keyboard_interrupt_is_a_user_code_error(tmp_path):
    from rlfoundry.algorithms.loss_functions.grpo import GRPOLossFn
    from tests.test_grpo_trainer import config, trainer64

    class InterruptingLoss(GRPOLossFn):
        def on_step_start(self, step, total):
            raise KeyboardInterrupt

    cfg = config(tmp_path, max_steps=1)
    trainer = trainer64(cfg, loss_fn=InterruptingLoss({}))
    with pytest.raises(UserCodeError, match=r"step 1: the loss 'grpo' \(\S*test_user_code_"
                       r"failures:.*InterruptingLoss\) raised KeyboardInterrupt at .* in on_step_start"):
        trainer.train()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---------------------------------------------------------------- Ctrl-C during a GRPO run


def ctrl_c_during_reward(prompts, completions, **kw):
    """Runs in the worker: the user presses Ctrl-C (SIGINT to the trainer) ``CTRL_C["times"]``
    times while this reward works, on the first step only."""
    if CTRL_C["sent"] is None or Path(CTRL_C["sent"]).exists():
        return [1.0] * len(completions)
    Path(CTRL_C["sent"]).write_text(str(os.getpid()))
    for _ in range(CTRL_C["times"]):
        os.kill(os.getppid(), signal.SIGINT)
        time.sleep(0.3)
    time.sleep(CTRL_C["then_sleep"])
    return [1.0] * len(completions)


CTRL_C = {"sent": None, "times": 1, "then_sleep": 0.5}


def _grpo_with_ctrl_c(tmp_path, times, then_sleep):
    from tests.test_grpo_trainer import config, trainer64

    CTRL_C.update(sent=str(tmp_path / "sent"), times=times, then_sleep=then_sleep)
    cfg = config(tmp_path, {"rewards": [{"name": f"{__name__}:ctrl_c_during_reward"}],
                            "reward_timeout": 60.0}, max_steps=3)
    return trainer64(cfg)


def test_first_ctrl_c_during_a_worker_reward_finishes_the_step_and_stops(tmp_path,
                                                                         no_leftover_workers):
    from rlfoundry.errors import TrainingInterrupted

    trainer = _grpo_with_ctrl_c(tmp_path, times=1, then_sleep=0.5)
    with pytest.raises(TrainingInterrupted) as info:
        trainer.train()
    assert info.value.step == 1 and info.value.signum == signal.SIGINT
    rows = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and '"reward_mean": 1.0' in rows[0]  # the reward was not cut short
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_second_ctrl_c_during_a_worker_reward_stops_at_once_and_kills_it(tmp_path,
                                                                         no_leftover_workers):
    trainer = _grpo_with_ctrl_c(tmp_path, times=2, then_sleep=HANG_S)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert time.monotonic() - start < HANG_S / 2
    worker = int((tmp_path / "sent").read_text())
    reap_workers(block=True)
    assert not _running(worker)
    assert not (tmp_path / "metrics.jsonl").exists() or not (tmp_path / "metrics.jsonl").read_text()
