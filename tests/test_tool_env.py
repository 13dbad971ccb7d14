"""The ``tools`` environment: reset/step on its own, the tool list in the chat template, and
the tool task's data rendering exactly as episodes render."""

import json

import pytest

from rlfoundry.environments import ENVIRONMENTS, ToolEnvironment, register_tool
from rlfoundry.errors import ConfigError, DataError


def call(name, **arguments):
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


@register_tool("test_env_boom", override=True)
def boom() -> str:
    """Always fails."""
    raise RuntimeError("boom")


def test_registered_and_built_from_yaml_args():
    env = ENVIRONMENTS.get("tools")(tools=["calculator"], answer_check="math")
    assert isinstance(env, ToolEnvironment)
    assert [t["function"]["name"] for t in env.tools] == ["calculator"]
    assert ToolEnvironment(tools=[]).tools == []


@pytest.mark.parametrize("args, match", [
    ({"tools": ["calculater"]}, r"environment.args.tools\[0\]: unknown tool 'calculater'"),
    ({"tools": "calculator"}, "must be a list of tool names"),
    ({"parser": "json"}, "environment.args.parser: unknown tool call parser 'json'"),
    ({"answer_check": "fuzzy"}, "answer_check must be one of"),
    ({"timeout": 0}, "timeout must be > 0"),
    ({"tool_options": {"calculator": {"precision": 3}}}, "has no setting 'precision'"),
])
def test_bad_args_are_config_errors_naming_the_key(args, match):
    with pytest.raises(ConfigError, match=match):
        ToolEnvironment(**args)


def test_an_episode_calls_then_answers():
    env = ToolEnvironment(tools=["calculator", "test_env_boom"])
    start = env.reset({"prompt": "4821+397=", "answer": "5218"})
    assert start.messages == [{"role": "user", "content": "4821+397="}]
    step = env.step(start.state, "let me see " + call("calculator", expression="4821+397")
                    + '<tool_call>{"name": oops}</tool_call>' + call("test_env_boom")
                    + call("search", q="x"))
    assert not step.done and step.reward is None
    assert [m["content"] for m in step.observation] == [
        "5218", step.observation[1]["content"], "error: test_env_boom: RuntimeError: boom",
        step.observation[3]["content"]]
    assert step.observation[1]["content"].startswith("error: call 1: not valid JSON")
    assert "unknown tool 'search'" in step.observation[3]["content"]
    assert all(m["role"] == "tool" for m in step.observation)
    assert step.metrics == {"tool_calls": 4.0, "tool_errors": 3.0, "tool_errors/parse_error": 1.0,
                            "tool_errors/raised": 1.0, "tool_errors/unknown_tool": 1.0}
    done = env.step(step.state, " 5218 ")
    assert done.done and done.reward == 1.0 and done.observation == []
    assert env.final_reward(done.state, [None, 1.0]) == 1.0
    assert env.step(env.reset({"prompt": "1+1=", "answer": "2"}).state, "3").reward == 0.0


def test_cut_off_episode_scores_zero_and_no_answer_column_scores_none():
    env = ToolEnvironment()
    state = env.reset({"prompt": "1+1=", "answer": "2"}).state
    env.step(state, call("calculator", expression="1+1"))
    assert env.final_reward(state, [None]) == 0.0  # still calling tools at max_turns
    free = env.reset({"prompt": [{"role": "user", "content": "hi"}]}).state
    assert env.step(free, "hello").reward is None
    assert ToolEnvironment(answer_check="none").step(
        env.reset({"prompt": "1", "answer": "1"}).state, "1").reward is None


def test_a_row_without_a_prompt_is_a_data_error():
    with pytest.raises(DataError, match="needs a 'prompt' column"):
        ToolEnvironment().reset({"question": "1+1"})


def test_tiny_template_lists_tools_only_when_given(tokenizer):
    messages = [{"role": "user", "content": "1+1="}]
    plain = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert plain == "<|user|>1+1=<|eos|><|assistant|>"  # unchanged without tools
    shown = tokenizer.apply_chat_template(messages, tools=ToolEnvironment(tools=["calculator", "python"]).tools,
                                          tokenize=False, add_generation_prompt=True)
    assert shown == "<|system|>tools: calculator python<|eos|>" + plain


@pytest.mark.parametrize("parser", ["tags", "hermes"])
def test_sft_rows_render_like_the_episode_they_teach(tokenizer, parser):
    from rlfoundry.data import PromptDataset
    from rlfoundry.data.prompts import tokenize_prompt
    from rlfoundry.data.synthetic import builtin_dataset

    rows = builtin_dataset("tool_modulo_sft", "train", 4, noise=0.0, parser=parser)
    env = ToolEnvironment(parser=parser)
    first, answer = PromptDataset.from_rows(rows[:2])
    problem = builtin_dataset("tool_modulo", "train", 1)[0]
    state = env.reset({"prompt": rows[0]["prompt"], "answer": None, "variables": problem["variables"]})
    conversation = [*state.messages, {"role": "assistant", "content": rows[0]["completion"]},
                    *env.step(state.state, rows[0]["completion"]).observation]
    expect = tokenizer.apply_chat_template(conversation, tools=env.tools, tokenize=False,
                                           add_generation_prompt=True)
    assert tokenizer.decode(tokenize_prompt(tokenizer, answer)) == expect
    assert rows[1]["completion"] == conversation[-1]["content"]  # the tool's result
    assert tokenizer.decode(tokenize_prompt(tokenizer, first)).startswith("<|system|>tools: calculator")
    direct = builtin_dataset("tool_modulo_sft", "train", 2, tools=False)
    assert "tools" not in direct[0] and direct[0]["completion"].isdigit()


def test_noisy_demonstrations_skip_the_tool_and_guess():
    from rlfoundry.data.synthetic import builtin_dataset

    rows = builtin_dataset("tool_modulo_sft", "train", 600, noise=0.5)
    calls = [r for r in rows if r["completion"].startswith("<calculator>")]
    answers = [r for r in rows if r["prompt"][-1]["role"] == "tool"]
    guesses = [r for r in rows if r["prompt"][-1]["role"] == "user" and r["completion"].isdigit()]
    assert len(calls) == len(answers) and len(calls) + len(answers) + len(guesses) == 600
    assert all(r["completion"] == r["prompt"][-1]["content"] for r in answers)  # after a call: right
    assert all(r["completion"] == r["prompt"][0]["content"][2] for r in guesses)  # first digit of a
    assert 0.4 < len(guesses) / (len(guesses) + len(calls)) < 0.6


def test_tool_modulo_has_disjoint_splits_and_the_calculator_answers_it():
    from rlfoundry.data.synthetic import builtin_dataset
    from rlfoundry.data.tool_arith import tool_call_text

    train = {r["prompt"][0]["content"] for r in builtin_dataset("tool_modulo", "train", 500)}
    held = {r["prompt"][0]["content"] for r in builtin_dataset("tool_modulo", "eval", 100)}
    assert not train & held
    env = ToolEnvironment(parser="tags")
    for row in builtin_dataset("tool_modulo", "eval", 20):
        a, b = row["variables"]["a"], row["variables"]["b"]
        assert 1000 <= a <= 4999 and row["prompt"][0]["content"].startswith(f"a={a}, b={b}. (a")
        state = env.reset(row)
        told = env.step(state.state, tool_call_text(row["expression"])).observation[0]["content"]
        assert told == row["answer"] and len(told) == 1  # the tool computes the answer from the row
        assert env.step(state.state, told).reward == 1.0
    unbound = env.step(env.reset({"prompt": "x", "answer": "1"}).state, tool_call_text("a % 7"))
    assert "unknown name 'a'" in unbound.observation[0]["content"]
