"""Tools: schemas from signatures, the calculator under attack, and failing tools (raising,
hanging, printing without end, returning non-text) as per-call outcomes, never crashes."""

import os
import sys
import time

import pytest

from rlfoundry.environments import TOOLS, ToolCall, register_tool, run_tool_call
from rlfoundry.environments.builtin_tools import calculator
from rlfoundry.environments.tools import ToolFailure, make_tool, resolve_tools
from rlfoundry.errors import ConfigError


def run(name, tools=None, _timeout=5.0, **arguments):
    tools = tools or {name: TOOLS.get(name)}
    return run_tool_call(ToolCall(name, arguments), tools, timeout=_timeout, max_output_chars=2000)


# ------------------------------------------------------------------ schemas and the registry


def lookup(word: str, limit: int = 3, *, dictionary: str = "en") -> str:
    """Look a word up.

    Longer text that is not part of the description.

    Args:
        word: the word
        limit: how many senses
            to show
    """
    return f"{dictionary}:{word}:{limit}"


def test_schema_comes_from_the_signature_and_docstring_and_settings_are_hidden():
    tool = make_tool(lookup)
    assert tool.schema() == {"type": "function", "function": {
        "name": "lookup", "description": "Look a word up.",
        "parameters": {"type": "object", "required": ["word"], "properties": {
            "word": {"type": "string", "description": "the word"},
            "limit": {"type": "integer", "description": "how many senses to show"}}}}}
    configured = tool.configured({"dictionary": "fr"}, "environment.args.tool_options.lookup")
    assert configured(word="chat") == "fr:chat:3"
    with pytest.raises(ConfigError, match=r"tool_options.lookup.dictonary: .*did you mean 'dictionary'"):
        tool.configured({"dictonary": "fr"}, "environment.args.tool_options.lookup")


def test_arguments_are_checked_against_the_schema():
    tools = {"lookup": make_tool(lookup)}
    assert run("lookup", tools, word="x").text == "en:x:3"
    assert run("lookup", tools, wrod="x").reason == "bad_arguments"
    assert "did you mean 'word'" in run("lookup", tools, wrod="x").text
    assert run("lookup", tools).reason == "bad_arguments"
    assert "must be integer" in run("lookup", tools, word="x", limit="3").text
    assert run("lookup", tools, word="x", limit=True).reason == "bad_arguments"


def test_unknown_tool_names_the_available_ones():
    result = run("calculater", {"calculator": TOOLS.get("calculator")}, expression="1")
    assert result.reason == "unknown_tool" and "did you mean 'calculator'" in result.text


def test_resolve_tools_errors_name_the_config_key():
    with pytest.raises(ConfigError, match=r"environment.args.tools\[1\]: unknown tool 'pyton'"):
        resolve_tools(["calculator", "pyton"], None, "environment.args")
    with pytest.raises(ConfigError, match="tool_options.python: 'python' is not in"):
        resolve_tools(["calculator"], {"python": {}}, "environment.args")


# ------------------------------------------------------------------ the calculator


@pytest.mark.parametrize("expression, value", [
    ("1+2*3", "7"), ("(12+7)*3", "57"), ("7/2", "3.5"), ("8/2", "4"), ("-2**3", "-8"),
    ("2**-1", "0.5"), ("17//5 + 17%5", "5"), ("4821+397", "5218"), ("2**1000 // 2**999", "2"),
    ("(" * 99 + "1" + ")" * 99, "1"), ("-" * 199 + "1", "-1"),
])
def test_calculator_computes(expression, value):
    assert calculator(expression) == value


@pytest.mark.parametrize("expression, expect", [
    ("9**9**9**9", "too large"),                  # would never finish with eval
    ("10**100000", "too large"),
    ("(10**1000)**1000", "too large"),
    ("99999999999**400", "too large"),
    ("(2**4000)*(2**4000)", "too large"),
    ("1e308*10", "not a finite number"),
    ("(1).__class__", "attribute access"),
    ("().__class__.__bases__[0].__subclasses__()", "not allowed"),
    ("__import__('os').system('echo pwned')", "function calls"),
    ("x+1", "unknown name 'x'"),
    ("open", "unknown name 'open'"),
    ("'a'*10", "only numbers"),
    ("True+1", "only numbers"),
    ("[1]*10**9", "List"),
    ("lambda: 1", "lambdas"),
    ("1/0", "division by zero"),
    ("0**-1", "division by zero"),
    ("(-8)**0.5", "not a real number"),
    ("1+", "not an arithmetic expression"),
    ("1+" * 150 + "1", "more than 200"),
])
def test_calculator_refuses_attacks_quickly_with_a_reason(expression, expect):
    start = time.perf_counter()
    result = run("calculator", expression=expression)
    assert result.reason == "raised" and expect in result.text, result
    assert result.text.startswith("error: calculator: ")
    assert time.perf_counter() - start < 1.0


def test_calculator_uses_only_the_variables_bound_for_the_problem():
    assert calculator("a * b % 7", variables={"a": 3889, "b": 4884}) == str(3889 * 4884 % 7)
    bound = TOOLS.get("calculator").configured({"variables": {"a": 2}}, "t")
    for expression, expect in [("a + b", "unknown name 'b'; the names bound for this problem: a"),
                               ("__builtins__", "unknown name '__builtins__'"),
                               ("a.real", "attribute access"), ("abs(a)", "function calls")]:
        result = run_tool_call(ToolCall("calculator", {"expression": expression}), {"calculator": bound})
        assert result.reason == "raised" and expect in result.text, result
    with pytest.raises(ToolFailure, match="must be a number"):
        calculator("a", variables={"a": "__import__('os')"})


# ------------------------------------------------------------------ failing user tools


@register_tool("test_raises", override=True)
def raises(x: int) -> str:
    """Raises."""
    raise ValueError(f"bad x {x}")


@register_tool("test_hangs", override=True)
def hangs() -> str:
    """Hangs, ignoring signals and exceptions."""
    while True:
        try:
            time.sleep(10)
        except BaseException:
            pass


@register_tool("test_prints", override=True)
def prints() -> str:
    """Prints 1 GB, a megabyte at a time."""
    chunk = "x" * (1 << 20)
    for _ in range(1024):
        print(chunk)
    return "done"


@register_tool("test_object", override=True)
def returns_object() -> str:
    """Returns something that is not text."""
    return {"a": [1, 2]}


@register_tool("test_huge", override=True)
def returns_huge() -> str:
    """Returns a long string."""
    return "y" * 100_000


@register_tool("test_exits", override=True)
def exits() -> str:
    """Ends its process."""
    os._exit(3)


@register_tool("test_prints_and_returns", override=True)
def prints_and_returns() -> int:
    """Prints a line, returns a number."""
    print("working")
    return 7


@pytest.mark.parametrize("name, reason, expect", [
    ("test_raises", "raised", "ValueError: bad x 1"),
    ("test_prints", "output_limit", "printed more than 2000 characters"),
    ("test_object", "not_text", "returned dict, not text"),
    ("test_huge", "output_limit", "100000 characters"),
    ("test_exits", "died", "exit status 3"),
])
def test_failing_tools_give_a_clear_outcome(name, reason, expect):
    args = {"x": 1} if name == "test_raises" else {}
    result = run(name, **args)
    assert result.reason == reason and expect in result.text, result
    assert result.text.startswith(f"error: {name}: ")


def test_a_hanging_tool_is_killed_at_its_timeout():
    start = time.perf_counter()
    result = run("test_hangs", _timeout=0.5)
    assert result.reason == "timeout" and "0.5 s" in result.text
    assert time.perf_counter() - start < 5


def test_what_a_tool_prints_is_captured_not_leaked(capfd):
    result = run("test_prints_and_returns")
    assert result.ok and result.text == "working\n7"
    assert "working" not in capfd.readouterr().out


# ------------------------------------------------------------------ the python tool (sandbox)


@pytest.fixture(scope="module")
def sandboxed():
    from rlfoundry.rewards.sandbox import SandboxError, detect_isolation

    try:
        iso = detect_isolation()
    except SandboxError as e:
        pytest.skip(f"no sandbox here: {e}")
    mode = "namespaces" if iso.namespaces else "process"
    return resolve_tools(["python"], {"python": {"isolation": mode, "timeout": 2.0}}, "args")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")
@pytest.mark.parametrize("code, reason, expect", [
    ("print(sum(range(10)))", None, "45\n"),
    ("x = 1", None, ""),
    ("print('partial')\nraise KeyError('k')", "raised", "partial\nKeyError"),
    ("while True:\n    pass", "timeout", "limit"),
    ("import time\ntime.sleep(60)", "timeout", "limit"),
    ("for _ in range(1024):\n    print('x' * (1 << 20))", "output_limit", "more than"),
    ("print('x' * 10**9)", "raised", "MemoryError"),
    ("import socket\nsocket.socket().connect(('1.1.1.1', 80))", "raised", ""),
    ("def f(:", "raised", "SyntaxError"),
])
def test_python_tool_outcomes(sandboxed, code, reason, expect):
    result = run_tool_call(ToolCall("python", {"code": code}), sandboxed, timeout=20.0)
    assert result.reason == reason and expect in result.text, result
