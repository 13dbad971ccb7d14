"""The hermes tool-call parser: several calls, malformed JSON, unknown tools, tags in strings."""

import json

import pytest

from rlfoundry.environments import (
    TOOL_PARSERS,
    ParsedTurn,
    ToolCall,
    parse_hermes,
    register_tool_parser,
)
from rlfoundry.environments.tool_calls import MAX_CALLS_PER_TURN, get_tool_parser
from rlfoundry.errors import ConfigError


def call(name, **arguments):
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def test_no_call_is_an_answer():
    turn = parse_hermes("  the answer is 42 ")
    assert not turn.has_calls and turn.text == "the answer is 42"


def test_several_calls_in_order_with_the_text_around_them():
    text = "first " + call("calculator", expression="1+2") + " then\n" + call("python", code="print(3)")
    turn = parse_hermes(text)
    assert [c.name for c in turn.calls] == ["calculator", "python"]
    assert turn.calls[0].arguments == {"expression": "1+2"} and turn.calls[1].index == 1
    assert turn.errors == [] and turn.text == "first  then"


def test_arguments_as_a_json_string_and_whitespace_inside_the_tags():
    turn = parse_hermes('<tool_call>\n {"name": "calculator", "arguments": "{\\"expression\\": \\"2*3\\"}"}\n</tool_call>')
    assert turn.calls == [ToolCall("calculator", {"expression": "2*3"}, 0)]


def test_closing_tag_inside_a_json_string_does_not_end_the_call():
    code = "print('</tool_call>')\nprint('<tool_call>{\"name\": \"evil\"}</tool_call>')"
    turn = parse_hermes(call("python", code=code) + " done")
    assert len(turn.calls) == 1 and turn.calls[0].arguments["code"] == code
    assert turn.errors == [] and turn.text == "done"


@pytest.mark.parametrize("body, expect", [
    ('{"name": "calculator", "arguments": {"expression": "1+1"}', "not valid JSON"),  # unclosed }
    ("{name: calculator}", "not valid JSON"),
    ('{"arguments": {"x": 1}}', 'missing "name"'),
    ('{"name": "calculator", "arguments": [1, 2]}', '"arguments" must be an object'),
    ('{"name": "calculator", "arguments": "{not json"}', "arguments are not valid JSON"),
    ('["calculator"]', "expected a JSON object"),
    ('{"name": "calculator", "arguments": {}} trailing', "must be followed by </tool_call>"),
])
def test_malformed_calls_are_errors_for_the_model_and_later_calls_still_parse(body, expect):
    turn = parse_hermes(f"<tool_call>{body}</tool_call>" + call("calculator", expression="5"))
    assert len(turn.errors) == 1 and expect in turn.errors[0].message
    assert turn.errors[0].message.startswith("call 0")
    assert [c.arguments for c in turn.calls] == [{"expression": "5"}] and turn.calls[0].index == 1
    assert [type(x).__name__ for x in turn.in_order()] == ["CallError", "ToolCall"]


def test_unclosed_tag_at_the_end_is_an_error_not_a_crash():
    turn = parse_hermes('sure <tool_call>{"name": "calcul')
    assert turn.has_calls and not turn.calls and "not valid JSON" in turn.errors[0].message


def test_too_many_calls_in_one_turn_are_cut_with_an_error():
    turn = parse_hermes(call("calculator", expression="1") * (MAX_CALLS_PER_TURN + 5))
    assert len(turn.calls) == MAX_CALLS_PER_TURN
    assert len(turn.errors) == 1 and "more than" in turn.errors[0].message


def test_a_registered_parser_is_found_by_name_and_unknown_names_are_config_errors():
    @register_tool_parser("test_colon")
    def colon(text):  # "calc: 1+2" -> one call
        name, _, rest = text.partition(": ")
        return ParsedTurn([ToolCall(name, {"expression": rest})]) if rest else ParsedTurn(text=text)

    assert get_tool_parser("test_colon")("calc: 1+2").calls[0].arguments == {"expression": "1+2"}
    assert "test_colon" in TOOL_PARSERS.names()
    with pytest.raises(ConfigError, match="did you mean 'hermes'"):
        get_tool_parser("hermse")


# --- the `tags` format: <tool>argument</tool> ----------------------------------------------


def test_tags_calls_take_the_body_as_the_tools_one_argument_and_other_markup_stays_text():
    from rlfoundry.environments import parse_tags

    turn = parse_tags("<think>7 is prime</think> <calculator>(a - b) % 7</calculator> and "
                      "<python>\nfor i in range(2):\n    print(i)\n</python> done")
    assert [(c.name, c.arguments, c.index) for c in turn.calls] == [
        ("calculator", {"expression": "(a - b) % 7"}, 0),
        ("python", {"code": "for i in range(2):\n    print(i)"}, 1)]  # indentation kept
    assert not turn.errors and turn.text == "<think>7 is prime</think>  and  done"
    assert not parse_tags("the answer is <b>4</b>").has_calls


def test_tags_unclosed_and_multi_argument_tools_are_errors_for_the_model():
    from rlfoundry.environments import TOOLS, parse_tags, register_tool

    turn = parse_tags("<calculator>1+1</calculator><calculator>2*")
    assert turn.calls[0].arguments == {"expression": "1+1"}
    assert "never closed" in turn.errors[0].message and turn.errors[0].index == 1

    @register_tool("test_two_args", isolated=False)
    def two(x: int, y: int) -> str:
        """Add.

        Args:
            x: first
            y: second
        """
        return str(x + y)

    try:
        turn = parse_tags("<test_two_args>1</test_two_args>")
        assert not turn.calls and "takes 2 arguments (x, y)" in turn.errors[0].message
    finally:
        TOOLS._entries.pop("test_two_args")


def test_tags_parser_runs_in_the_tools_environment():
    from rlfoundry.environments import ENVIRONMENTS

    env = ENVIRONMENTS.get("tools")(tools=["calculator"], parser="tags")
    start = env.reset({"prompt": "a=3, b=4. (a+b) mod 5?", "variables": {"a": 3, "b": 4}, "answer": "2"})
    step = env.step(start.state, "<calculator>(a+b)%5</calculator>")
    assert step.observation == [{"role": "tool", "name": "calculator", "content": "2"}]
    assert not step.done and step.metrics["tool_calls"] == 1 and step.metrics["tool_errors"] == 0
    final = env.step(step.state, "2")
    assert final.done and final.reward == 1.0
