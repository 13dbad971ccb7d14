"""Tools a model can call: a registry of plain Python functions, and how one call is run.

A tool is a function; its JSON schema (what the chat template shows the model) comes from the
signature and docstring: the docstring's first paragraph is the description, ``Args:`` lines
(``name: text``) describe parameters, annotations give the types (``int`` -> integer,
``float`` -> number, ``str``, ``bool``, ``list``, ``dict``), and parameters without a default
are required. Keyword-only parameters are *settings*, not arguments: the model never sees
them, YAML sets them (``environment.args.tool_options.<tool>.<setting>``). Register your own
in a plugin file::

    from rlfoundry.environments import register_tool

    @register_tool("lookup")
    def lookup(word: str) -> str:
        \"\"\"The definition of an English word.

        Args:
            word: the word to look up
        \"\"\"
        return DICTIONARY.get(word, "not found")

Every call ends in a :class:`ToolResult`: its text for the model and, when it failed, a
``reason`` (``unknown_tool``, ``bad_arguments``, ``raised``, ``timeout``, ``died``,
``output_limit``, ``not_text``, or the python sandbox's outcome). A failing call never raises:
its error text goes back to the model and the environment counts it as a tool error.
Functions run in a forked worker that is killed at the time limit (``isolated=True``, the
default for registered tools; what they print is captured and capped there) or, for tools
that are safe and bounded by construction like ``calculator``, in the trainer's process.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from rlfoundry.environments.tool_calls import ToolCall
from rlfoundry.errors import ConfigError
from rlfoundry.registry import Registry, did_you_mean

JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", list: "array",
              dict: "object"}
PY_TYPES = {"integer": (int,), "number": (int, float), "string": (str,), "boolean": (bool,),
            "array": (list,), "object": (dict,)}


@dataclass(frozen=True)
class Tool:
    """A callable tool: ``fn(**arguments) -> str``, its JSON ``parameters`` schema and where it
    runs (``isolated``: in a killable forked worker)."""

    name: str
    fn: Callable[..., Any]
    description: str
    parameters: dict[str, Any]
    isolated: bool = True
    settings: dict[str, Any] = field(default_factory=dict)

    def schema(self) -> dict[str, Any]:
        """The OpenAI/HF tool schema handed to ``apply_chat_template(tools=...)``."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}

    def configured(self, settings: Mapping[str, Any], where: str) -> Tool:
        """This tool with its keyword-only settings set (ConfigError naming ``where`` for an
        unknown one)."""
        allowed = [p.name for p in inspect.signature(self.fn).parameters.values()
                   if p.kind is p.KEYWORD_ONLY]
        for key in settings:
            if key not in allowed:
                raise ConfigError(f"{where}.{key}: tool '{self.name}' has no setting '{key}'"
                                  f"{did_you_mean(key, allowed)}; its settings: "
                                  f"{', '.join(allowed) or '(none)'}")
        return replace(self, settings={**self.settings, **settings})

    def __call__(self, **arguments: Any) -> Any:
        return self.fn(**arguments, **self.settings)


def takes_setting(tool: Tool, name: str) -> bool:
    """Whether the tool's function has the keyword-only setting ``name``."""
    param = inspect.signature(tool.fn).parameters.get(name)
    return param is not None and param.kind is param.KEYWORD_ONLY


TOOLS: Registry[Tool] = Registry("tool")


def _doc_parts(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {parameter: text}) from a docstring: the first paragraph, and the
    ``name: text`` lines of an ``Args:`` block (continuation lines joined)."""
    lines = inspect.cleandoc(doc).splitlines() if doc else []
    description: list[str] = []
    params: dict[str, str] = {}
    in_args, first_done = False, False
    for line in lines:
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args = True
        elif in_args:
            m = re.match(r"(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", stripped)
            if m:
                params[m.group(1)] = m.group(2)
            elif stripped and params:
                last = next(reversed(params))
                params[last] = f"{params[last]} {stripped}"
            elif stripped:
                in_args = False
        elif not first_done:
            if stripped:
                description.append(stripped)
            elif description:
                first_done = True
    return " ".join(description), params


def schema_of(fn: Callable[..., Any], name: str) -> dict[str, Any]:
    """The JSON schema of ``fn``'s model-visible parameters (see the module docs)."""
    _, docs = _doc_parts(inspect.getdoc(fn) or "")
    props: dict[str, Any] = {}
    required = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind is p.KEYWORD_ONLY:
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ConfigError(f"tool '{name}': *args/**kwargs cannot be described to the model; "
                              "give every argument a name")
        if p.kind is p.POSITIONAL_ONLY:
            raise ConfigError(f"tool '{name}': parameter '{p.name}' is positional-only; tools are "
                              "called with keyword arguments")
        ann = p.annotation
        if isinstance(ann, str):  # from __future__ import annotations
            ann = {"int": int, "float": float, "str": str, "bool": bool, "list": list,
                   "dict": dict}.get(ann.split("[")[0], ann)
        spec: dict[str, Any] = {"type": JSON_TYPES.get(getattr(ann, "__origin__", ann), "string")}
        if p.name in docs:
            spec["description"] = docs[p.name]
        props[p.name] = spec
        if p.default is p.empty:
            required.append(p.name)
    return {"type": "object", "properties": props, "required": required}


def make_tool(fn: Callable[..., Any], name: str | None = None, *, description: str | None = None,
              isolated: bool = True) -> Tool:
    """A :class:`Tool` from a function (schema from its signature and docstring)."""
    name = name or fn.__name__
    text, _ = _doc_parts(inspect.getdoc(fn) or "")
    return Tool(name, fn, description or text or name, schema_of(fn, name), isolated)


def register_tool(name: str | None = None, fn: Callable[..., Any] | None = None, *,
                  description: str | None = None, isolated: bool = True, override: bool = False):
    """Register a function as a tool (usable as ``@register_tool("name")``); returns the function."""

    def decorator(f: Callable[..., Any]) -> Callable[..., Any]:
        tool = make_tool(f, name, description=description, isolated=isolated)
        TOOLS.register(tool.name, tool, override=override)
        return f

    return decorator(fn) if fn is not None else decorator


# --------------------------------------------------------------------------- one call


@dataclass(frozen=True)
class ToolResult:
    """How one call went: ``text`` for the model; ``reason`` is None on success."""

    name: str
    text: str
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


class ToolFailure(Exception):
    """Raised inside a tool to fail the call with ``reason`` and a message for the model."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _CappedWriter(io.StringIO):
    """stdout inside a tool call: what it prints, cut off at ``limit`` characters."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.size = limit, 0

    def write(self, s: str) -> int:
        self.size += len(s)
        if self.size > self.limit:
            raise ToolFailure("output_limit", f"printed more than {self.limit} characters")
        return super().write(s)


def check_arguments(tool: Tool, arguments: Mapping[str, Any]) -> str | None:
    """Why ``arguments`` do not fit the tool's schema (None when they do)."""
    props = tool.parameters.get("properties", {})
    unknown = [k for k in arguments if k not in props]
    if unknown:
        return (f"unknown argument '{unknown[0]}'{did_you_mean(unknown[0], props)}; "
                f"'{tool.name}' takes {', '.join(props) or 'no arguments'}")
    missing = [k for k in tool.parameters.get("required", []) if k not in arguments]
    if missing:
        return f"missing argument '{missing[0]}'"
    for key, value in arguments.items():
        kind = props[key].get("type")
        ok = kind not in PY_TYPES or (isinstance(value, PY_TYPES[kind])
                                      and not (kind in ("integer", "number") and isinstance(value, bool)))
        if not ok:
            return f"argument '{key}' must be {kind}, got {type(value).__name__}"
    return None


def as_text(value: Any, limit: int) -> str:
    """A tool's return value as text for the model: a str, or a number/bool written out;
    anything else is a ``not_text`` failure. Over ``limit`` characters: ``output_limit``."""
    if isinstance(value, (int, float)):  # bool included
        value = str(value)
    if not isinstance(value, str):
        raise ToolFailure("not_text", f"the tool returned {type(value).__name__}, not text")
    if len(value) > limit:
        raise ToolFailure("output_limit", f"the result has {len(value)} characters, more than "
                                          f"the limit of {limit}")
    return value


def _invoke(tool: Tool, arguments: dict[str, Any], limit: int) -> tuple[str | None, str]:
    """Run the tool with stdout captured: (None, text) or (reason, message). Runs in the worker
    for isolated tools, so only these two strings come back."""
    out = _CappedWriter(limit)
    try:
        with contextlib.redirect_stdout(out):
            value = tool(**arguments)
        text = as_text(value, limit)
    except ToolFailure as e:
        return e.reason, str(e)
    except RecursionError:
        return "raised", "RecursionError: maximum recursion depth exceeded"
    except Exception as e:
        return "raised", f"{type(e).__name__}: {str(e)[:300]}"
    printed = out.getvalue()
    if printed:
        text = (printed + text)[: limit]
    return None, text


def run_tool_call(call: ToolCall, tools: Mapping[str, Tool], *, timeout: float = 10.0,
                  max_output_chars: int = 2000) -> ToolResult:
    """Run one parsed call against ``tools`` (name -> Tool): never raises for anything the
    model or the tool did; see :class:`ToolResult`."""
    tool = tools.get(call.name)
    if tool is None:
        return ToolResult(call.name, f"error: unknown tool '{call.name}'"
                          f"{did_you_mean(call.name, tools)}; available: "
                          f"{', '.join(sorted(tools)) or '(none)'}", "unknown_tool")
    problem = check_arguments(tool, call.arguments)
    if problem:
        return ToolResult(call.name, f"error: {call.name}: {problem}", "bad_arguments")
    if tool.isolated:
        reason, text = _run_isolated(tool, dict(call.arguments), timeout, max_output_chars)
    else:
        reason, text = _run_here(tool, dict(call.arguments), timeout, max_output_chars)
    if reason is not None:
        return ToolResult(call.name, f"error: {call.name}: {text}", reason)
    return ToolResult(call.name, text)


def _run_here(tool: Tool, arguments: dict[str, Any], timeout: float, limit: int
              ) -> tuple[str | None, str]:
    from rlfoundry.rewards.timeout import RewardTimeout, call_with_timeout

    try:
        return call_with_timeout(_invoke, timeout, tool, arguments, limit)
    except RewardTimeout:
        return "timeout", f"timed out after {timeout:g} s"


def _run_isolated(tool: Tool, arguments: dict[str, Any], timeout: float, limit: int
                  ) -> tuple[str | None, str]:
    from rlfoundry.rewards.worker import Died, Raised, TimedOut, fork_available, run_forked

    if not fork_available():
        return _run_here(tool, arguments, timeout, limit)
    for _, outcome in run_forked([partial(_invoke, tool, arguments, limit)], timeout):
        if isinstance(outcome, TimedOut):
            return "timeout", f"timed out after {timeout:g} s (stopped)"
        if isinstance(outcome, Died):
            return "died", f"the tool's process {outcome.description}"
        if isinstance(outcome, Raised):
            return "raised", outcome.description
        return outcome
    return "died", "the tool's process gave no answer"


def resolve_tools(names: list[str] | tuple[str, ...], options: Mapping[str, Mapping[str, Any]] | None,
                  where: str) -> dict[str, Tool]:
    """name -> configured Tool for the names listed in YAML (ConfigError naming ``where``)."""
    from rlfoundry.environments import builtin_tools  # noqa: F401  (registers the built-ins)

    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ConfigError(f"{where}.tools must be a list of tool names, got {type(names).__name__}")
    options = dict(options or {})
    for key in options:
        if key not in names:
            raise ConfigError(f"{where}.tool_options.{key}: '{key}' is not in {where}.tools "
                              f"({', '.join(names) or 'empty'})")
    out = {}
    for i, name in enumerate(names):
        try:
            tool = TOOLS.get(name)
        except ConfigError as e:
            raise ConfigError(f"{where}.tools[{i}]: {e}") from None
        out[name] = tool.configured(options.get(name, {}), f"{where}.tool_options.{name}")
    return out
