"""The ``tags`` tool-call format: ``<TOOL>argument</TOOL>``, one tag per call.

The format of tool-integrated reasoning recipes that teach a model one tag per tool (ToRL and
ReTool run code between code tags, Search-R1 writes ``<search>query</search>``)::

    <calculator>(a - b) % 7</calculator>
    <python>
    print(sum(range(10)))
    </python>

A tag counts as a call when its name is a registered tool (:data:`~rlfoundry.environments.tools.TOOLS`),
so other markup (``<think>``, ``<b>``) stays text. The body, without the blank lines around it,
is the tool's one argument: a tool whose schema has several properties cannot be called this
way (the call is an error saying so; use ``hermes``). Several calls per turn are allowed.
The call ends at the first closing tag: a body that contains ``</python>`` itself ends early
(``hermes`` reads JSON strings and has no such limit).

Shorter than ``hermes`` (a ``calculator`` call is ~30 characters against ~85), which matters
for a model learning the format from scratch: the built-in tool task uses it.
"""

from __future__ import annotations

import re

from rlfoundry.environments.tool_calls import (
    MAX_CALLS_PER_TURN,
    CallError,
    ParsedTurn,
    ToolCall,
    register_tool_parser,
)
from rlfoundry.environments.tools import TOOLS

_OPEN = re.compile(r"<([A-Za-z_][A-Za-z0-9_.-]*)>")


def _argument_name(name: str) -> str | CallError:
    props = list(TOOLS.get(name).parameters.get("properties", {}))
    if len(props) != 1:
        return CallError(f"'{name}' takes {len(props)} arguments ({', '.join(props) or 'none'}); "
                         f"a <{name}> tag passes exactly one", name=name)
    return props[0]


@register_tool_parser("tags")
def parse_tags(text: str) -> ParsedTurn:
    """``<tool>argument</tool>`` for every registered tool name, any number per turn."""
    turn = ParsedTurn()
    outside: list[str] = []
    pos = index = 0
    while (m := _OPEN.search(text, pos)) is not None:
        name = m.group(1)
        if name not in TOOLS:  # other markup: text
            outside.append(text[pos:m.end()])
            pos = m.end()
            continue
        outside.append(text[pos:m.start()])
        if index >= MAX_CALLS_PER_TURN:
            turn.errors.append(CallError(f"call {index}: more than {MAX_CALLS_PER_TURN} calls "
                                         "in one turn; the rest were not run", index))
            pos = len(text)
            break
        close = text.find(f"</{name}>", m.end())
        if close < 0:
            turn.errors.append(CallError(f"call {index} ({name}): <{name}> is never closed "
                                         f"with </{name}>", index, name))
            pos = len(text)
            break
        arg = _argument_name(name)
        if isinstance(arg, CallError):
            turn.errors.append(CallError(f"call {index}: {arg.message}", index, name))
        else:
            turn.calls.append(ToolCall(name, {arg: text[m.end():close].strip("\r\n")}, index))
        index += 1
        pos = close + len(name) + 3
    outside.append(text[pos:])
    turn.text = "".join(outside).strip()
    return turn
