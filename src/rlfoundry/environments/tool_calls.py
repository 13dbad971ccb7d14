"""Find the tool calls in a model turn: the ``hermes`` format and a registry of parsers.

The built-in format (``hermes``, as Hermes and Qwen chat templates teach their models) is one
JSON object per call between tags, several calls per turn allowed::

    Let me compute it. <tool_call>{"name": "calculator", "arguments": {"expression": "12*7"}}</tool_call>

``arguments`` may also be a JSON string holding the object (some models write it so).
A parser returns a :class:`ParsedTurn`: the calls it understood, a :class:`CallError` for each
one it could not (malformed JSON, no name, arguments that are not an object, an unclosed
tag...) and the text outside the calls. The environment answers every error with a tool
message saying what was wrong, so a malformed call costs the model a turn, never the run.

The JSON between the tags is read with a decoder that stops at the end of the first complete
value, so a ``</tool_call>`` *inside* a JSON string (``{"code": "print('</tool_call>')"}``)
does not end the call early; the call ends where its JSON ends, and the closing tag must
follow it.

Register another format with :func:`register_tool_parser` (a function ``text -> ParsedTurn``)
and pick it in YAML with ``environment.args.parser: <name>``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rlfoundry.registry import Registry

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"
MAX_CALLS_PER_TURN = 16  # calls beyond this in one turn are errors (one each, counted)


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: the tool's ``name`` and its keyword ``arguments``."""

    name: str
    arguments: dict[str, Any]
    index: int = 0  # its position among the turn's calls (errors included)


@dataclass(frozen=True)
class CallError:
    """A call the parser found but could not read; ``message`` is shown to the model."""

    message: str
    index: int = 0
    name: str | None = None


@dataclass
class ParsedTurn:
    """A model turn split into calls, unreadable calls, and the text around them."""

    calls: list[ToolCall] = field(default_factory=list)
    errors: list[CallError] = field(default_factory=list)
    text: str = ""

    @property
    def has_calls(self) -> bool:
        """Whether the turn tried to call anything (readable or not)."""
        return bool(self.calls or self.errors)

    def in_order(self) -> list[ToolCall | CallError]:
        """Calls and errors in the order the model wrote them."""
        return sorted([*self.calls, *self.errors], key=lambda c: c.index)


ToolParser = Callable[[str], ParsedTurn]
TOOL_PARSERS: Registry[ToolParser] = Registry("tool call parser")


def register_tool_parser(name: str, fn: ToolParser | None = None, *, override: bool = False):
    """Register a parser ``text -> ParsedTurn`` under ``name`` (usable as a decorator)."""
    return TOOL_PARSERS.register(name, fn, override=override)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def read_call(obj: Any, index: int) -> ToolCall | CallError:
    """A decoded call object as a :class:`ToolCall`, or the :class:`CallError` saying why not."""
    if not isinstance(obj, dict):
        return CallError(f"call {index}: expected a JSON object "
                         f'{{"name": ..., "arguments": {{...}}}}, got {type(obj).__name__}', index)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return CallError(f'call {index}: missing "name" (a string naming the tool)', index)
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # arguments given as a JSON string
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            return CallError(f"call {index} ({name}): arguments are not valid JSON: {e.msg}",
                             index, name)
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return CallError(f'call {index} ({name}): "arguments" must be an object, '
                         f"got {type(args).__name__}", index, name)
    return ToolCall(name, args, index)


@register_tool_parser("hermes")
def parse_hermes(text: str) -> ParsedTurn:
    """``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, any number per turn."""
    decoder = json.JSONDecoder()
    turn = ParsedTurn()
    outside: list[str] = []
    pos, index = 0, 0
    while True:
        start = text.find(OPEN_TAG, pos)
        if start < 0:
            outside.append(text[pos:])
            break
        outside.append(text[pos:start])
        body = start + len(OPEN_TAG)
        while body < len(text) and text[body].isspace():
            body += 1
        if index >= MAX_CALLS_PER_TURN:
            turn.errors.append(CallError(f"call {index}: more than {MAX_CALLS_PER_TURN} calls "
                                         "in one turn; the rest were not run", index))
            break
        try:
            obj, end = decoder.raw_decode(text, body)
        except json.JSONDecodeError as e:
            close = text.find(CLOSE_TAG, body)
            snippet = text[body: close if close >= 0 else len(text)]
            turn.errors.append(CallError(f"call {index}: not valid JSON ({e.msg} at character "
                                         f"{e.pos - body}): {_short(snippet)!r}", index))
            index += 1
            if close < 0:
                break
            pos = close + len(CLOSE_TAG)
            continue
        rest = end
        while rest < len(text) and text[rest].isspace():
            rest += 1
        if not text.startswith(CLOSE_TAG, rest):
            turn.errors.append(CallError(f"call {index}: the JSON object must be followed by "
                                         f"{CLOSE_TAG}, got {_short(text[rest:], 40)!r}", index))
            index += 1
            close = text.find(CLOSE_TAG, rest)
            if close < 0:
                break
            pos = close + len(CLOSE_TAG)
            continue
        turn_call = read_call(obj, index)
        (turn.calls if isinstance(turn_call, ToolCall) else turn.errors).append(turn_call)
        index += 1
        pos = rest + len(CLOSE_TAG)
    turn.text = "".join(outside).strip()
    return turn


def get_tool_parser(name: str) -> ToolParser:
    """The parser registered as ``name`` (ConfigError listing the known ones otherwise)."""
    return TOOL_PARSERS.get(name)
