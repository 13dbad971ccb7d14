"""A reward function that raises or hangs gets the configured policy (raise | zero | skip),
with the sample id in the message."""

import threading
import time

import pytest

from rlfoundry.rewards import RewardError, RewardTimeout, call_with_timeout, compute_rewards

IDS = ["math.jsonl:1#0", "math.jsonl:1#1", "math.jsonl:2#0"]


def raises_on_bad(prompts, completions, **kw):
    if "bad" in completions:
        raise ValueError("cannot parse")
    return [1.0] * len(completions)


def hangs_on_bad(prompts, completions, **kw):
    if "bad" in completions:
        time.sleep(30)
    return [1.0] * len(completions)


def run(fn, on_error, timeout=None):
    return compute_rewards([("f", fn, 1.0)], ["p"] * 3, ["ok", "bad", "ok"], on_error=on_error,
                           sample_ids=IDS, timeout=timeout)


@pytest.mark.parametrize("fn, timeout, what", [(raises_on_bad, None, "raised ValueError: cannot parse"),
                                               (hangs_on_bad, 0.3, "timed out after 0.3 s")])
def test_raise_policy_names_function_sample_and_cause(fn, timeout, what):
    with pytest.raises(RewardError) as info:
        run(fn, "raise", timeout)
    message = str(info.value)
    assert f"reward 'f' {what} on sample 'math.jsonl:1#1' (index 1; 1 of 3 failed)" in message
    assert "algorithm.reward_error" in message


@pytest.mark.parametrize("fn, timeout, reason", [(raises_on_bad, None, "exception"),
                                                 (hangs_on_bad, 0.3, "timeout")])
@pytest.mark.parametrize("policy, expected", [("zero", 0.0), ("skip", None)])
def test_zero_and_skip_policies(fn, timeout, reason, policy, expected, caplog):
    result = run(fn, policy, timeout)
    values = result.per_function["f"].tolist()
    assert values[0] == values[2] == 1.0
    assert (values[1] == 0.0) if expected == 0.0 else values[1] != values[1]  # NaN = no reward
    assert result.num_errors == {"f": 1}
    assert result.reasons["f"] == [None, reason, None]
    assert result.summary()[f"reward/f/{reason}"] == 1.0
    assert "math.jsonl:1#1" in caplog.text


def test_timeout_interrupts_in_the_main_thread_and_restores_the_alarm():
    import signal

    start = time.monotonic()
    with pytest.raises(RewardTimeout):
        call_with_timeout(time.sleep, 0.2, 30)
    assert time.monotonic() - start < 5
    assert signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0
    assert call_with_timeout(lambda x: x + 1, 0.5, 1) == 2


def test_timeout_outside_the_main_thread_abandons_the_call():
    outcome = {}

    def worker():
        try:
            call_with_timeout(time.sleep, 0.2, 3)
        except RewardTimeout as e:
            outcome["error"] = e

    t = threading.Thread(target=worker)
    start = time.monotonic()
    t.start()
    t.join()
    assert isinstance(outcome["error"], RewardTimeout) and time.monotonic() - start < 2.5


def test_grpo_applies_reward_timeout_from_config(tmp_path):
    from tests.test_grpo_trainer import config, trainer64

    name = "tests.test_reward_failures:hangs_on_odd_answers"
    cfg = config(tmp_path, {"rewards": [{"name": name}], "reward_timeout": 0.1,
                            "reward_error": "zero"}, max_steps=1)
    metrics = trainer64(cfg).train()
    assert metrics[f"reward/{name}/timeout"] >= 4  # the first prompt of this batch: answer 117


def hangs_on_odd_answers(prompts, completions, answer, **kw):
    if any(int(a) % 2 for a in answer):
        time.sleep(30)
    return [1.0] * len(completions)
