"""Tool calls inside real episodes (the episode runner with a scripted model): failing tools
are per-call outcomes, a failing step follows reward_error, and the tool list and tool
messages are rendered with the chat template and masked out of the model's tokens."""

import json

import pytest

from rlfoundry.environments import EpisodeRunner, EpisodeSettings, ToolEnvironment, register_tool
from rlfoundry.environments.tool_calls import register_tool_parser
from rlfoundry.errors import EnvironmentStepError
from rlfoundry.rollout.base import Rollout, SamplingParams


def call(name, **arguments):
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


@register_tool("test_ep_raises", override=True)
def ep_raises() -> str:
    """Raises."""
    raise ZeroDivisionError("division by zero")


@register_tool("test_ep_hangs", override=True)
def ep_hangs() -> str:
    """Hangs."""
    import time

    time.sleep(60)
    return "never"


@register_tool("test_ep_floods", override=True)
def ep_floods() -> str:
    """Prints 1 GB."""
    for _ in range(1024):
        print("z" * (1 << 20))
    return "never"


@register_tool("test_ep_object", override=True)
def ep_object() -> str:
    """Returns a set."""
    return {1, 2}


class ScriptedModel:
    """A rollout backend that 'writes' ``script[question][turn]`` (question: the user message;
    turn: how many tool turns the context already has)."""

    def __init__(self, tokenizer, script):
        self.tokenizer, self.script, self.eos_ids = tokenizer, script, [tokenizer.eos_token_id]
        self.contexts = []

    def generate(self, prompts, num_samples, params, generator):
        ids, index = [], []
        for p, prompt in enumerate(prompts):
            text = self.tokenizer.decode(prompt, skip_special_tokens=False)
            self.contexts.append(text)
            question = text.split("<|user|>")[1].split("<|eos|>")[0]
            turn = text.count("<|tool|>") and text.count("<|assistant|>") - 1
            reply = self.script[question][turn]
            for _ in range(num_samples):
                ids.append(self.tokenizer(reply, add_special_tokens=False)["input_ids"]
                           + [self.tokenizer.eos_token_id])
                index.append(p)
        return Rollout(index, [prompts[i] for i in index], ids, [[0.0] * len(x) for x in ids],
                       [False] * len(ids))

    def sync_weights(self, model):
        pass


def run(tokenizer, env, script, on_error="zero", rows=None):
    rows = rows or [{"prompt": q, "answer": a} for q, (a, _) in script.items()]
    model = ScriptedModel(tokenizer, {q: turns for q, (_, turns) in script.items()})
    runner = EpisodeRunner(env, model, tokenizer, SamplingParams(max_new_tokens=200),
                           EpisodeSettings(max_turns=3, on_error=on_error, step_timeout=30))
    return runner.run(rows, [f"row {i}" for i in range(len(rows))], 1), model


SCRIPT = {
    "q0": ("3", [call("test_ep_raises"), "3"]),
    "q1": ("3", [call("test_ep_hangs"), "3"]),
    "q2": ("3", [call("test_ep_floods"), "wrong"]),
    "q3": ("3", [call("test_ep_object"), "3"]),
    "q4": ("7", [call("calculator", expression="3+4") + call("calculator", expression="1/0"), "7"]),
    "q5": ("3", ["3"]),
}


@pytest.mark.parametrize("on_error", ["zero", "skip"])
def test_failing_tools_are_answered_and_every_episode_finishes(tokenizer, on_error):
    env = ToolEnvironment(tools=["calculator", "test_ep_raises", "test_ep_hangs", "test_ep_floods",
                                 "test_ep_object"], timeout=1.0, max_output_chars=500)
    rollout, model = run(tokenizer, env, SCRIPT, on_error)
    eps = rollout.episodes
    assert [e.outcome for e in eps] == ["done"] * 6
    assert [e.env_reward for e in eps] == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0]
    tool_text = [[m["content"] for m in e.messages if m["role"] == "tool"] for e in eps]
    assert tool_text[0] == ["error: test_ep_raises: ZeroDivisionError: division by zero"]
    assert tool_text[1] == ["error: test_ep_hangs: timed out after 1 s (stopped)"]
    assert tool_text[2] == ["error: test_ep_floods: printed more than 500 characters"]
    assert tool_text[3] == ["error: test_ep_object: the tool returned set, not text"]
    assert tool_text[4] == ["7", "error: calculator: division by zero"]
    assert [e.metrics.get("tool_calls", 0) for e in eps] == [1, 1, 1, 1, 2, 0]
    assert [e.metrics.get("tool_errors", 0) for e in eps] == [1, 1, 1, 1, 1, 0]
    assert eps[1].metrics["tool_errors/timeout"] == 1 and eps[2].metrics["tool_errors/output_limit"] == 1
    # the tool list is in the first prompt, the tool message rendered by the template and masked
    assert model.contexts[0].startswith("<|system|>tools: calculator test_ep_raises")
    i = 4
    text = tokenizer.decode(rollout.completion_ids[i], skip_special_tokens=False)
    assert "<|eos|><|tool|>7<|eos|><|tool|>error: calculator: division by zero<|eos|><|assistant|>7" in text
    env_part = [t for t, m in zip(rollout.completion_ids[i], rollout.model_mask[i]) if m == 0]
    assert tokenizer.decode(env_part, skip_special_tokens=False) == \
        "<|tool|>7<|eos|><|tool|>error: calculator: division by zero<|eos|><|assistant|>"


@register_tool_parser("test_ep_crashing", override=True)
def crashing_parser(text):
    if "crash" in text:
        raise RuntimeError("parser bug")
    from rlfoundry.environments import parse_hermes

    return parse_hermes(text)


@pytest.mark.parametrize("on_error, reward", [("zero", 0.0), ("skip", None)])
def test_a_step_that_raises_follows_reward_error_and_the_others_go_on(tokenizer, on_error, reward):
    env = ToolEnvironment(parser="test_ep_crashing")
    script = {"a": ("2", ["crash"]), "b": ("2", [call("calculator", expression="1+1"), "2"])}
    rollout, _ = run(tokenizer, env, script, on_error)
    bad, good = rollout.episodes
    assert bad.outcome == "error" and "parser bug" in bad.error and "row 0" in bad.error
    assert (bad.env_reward == 0.0) if reward == 0.0 else bad.env_reward != bad.env_reward  # NaN
    assert good.outcome == "done" and good.env_reward == 1.0


def test_a_step_that_raises_stops_the_run_under_reward_error_raise(tokenizer):
    env = ToolEnvironment(parser="test_ep_crashing")
    with pytest.raises(EnvironmentStepError, match="parser bug.*row 0"):
        run(tokenizer, env, {"a": ("2", ["crash"])}, "raise")


def test_episodes_still_calling_tools_at_max_turns_score_zero(tokenizer):
    env = ToolEnvironment()
    loop = call("calculator", expression="1+1")
    rollout, _ = run(tokenizer, env, {"a": ("2", [loop, loop, loop])})
    (ep,) = rollout.episodes
    assert ep.outcome == "max_turns" and ep.turns == 3 and ep.env_reward == 0.0
    assert rollout.truncated == [True]
