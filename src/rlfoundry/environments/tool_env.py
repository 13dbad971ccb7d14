"""``tools``: the built-in tool-using environment.

An episode starts from the row's ``prompt`` (a string becomes one user message) with the tool
list shown by the chat template (:attr:`ToolEnvironment.tools`, handed to
``apply_chat_template(tools=...)``). After each model turn:

- the turn holds tool calls (see :mod:`rlfoundry.environments.tool_calls`): each is run
  (:func:`~rlfoundry.environments.tools.run_tool_call`) and answered with one
  ``{"role": "tool", "name": ..., "content": ...}`` message, in order; a call that cannot be
  parsed or fails is answered with its error text. Metrics ``tool_calls`` and ``tool_errors``
  count them (plus ``tool_errors/<reason>``);
- a row with a ``variables`` column (``{"a": 3889, "b": 4884}``; ``variables_column``) binds
  those names for every tool with a keyword-only ``variables`` setting (the ``calculator``):
  the "interpreter with the problem's data loaded" pattern, so the model writes ``a * b % 7``
  instead of copying the numbers. Other names stay unknown;
- the turn holds no call: the episode ends and the turn's text is the answer, scored by
  ``answer_check`` against the row's ``answer`` column (``exact``: equal after stripping;
  ``math``: the ``math_accuracy`` reward's equivalence; ``none``: no environment reward, only
  the registered reward functions count).

YAML (``environment.args``)::

    environment:
      name: tools
      args:
        tools: [calculator, python]      # registered tool names ([] : no tools)
        parser: hermes                   # a registered tool-call parser
        timeout: 10.0                    # seconds per call
        max_output_chars: 2000           # longer results are a tool error
        answer_check: exact              # exact | math | none
        variables_column: variables      # row column of names bound for the calculator
        tool_options: {python: {isolation: process, memory_mb: 256}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from rlfoundry.environments.base import (
    Environment,
    EnvStep,
    EpisodeStart,
    Message,
    register_environment,
)
from rlfoundry.environments.tool_calls import CallError, ParsedTurn, get_tool_parser
from rlfoundry.environments.tools import (
    Tool,
    ToolResult,
    resolve_tools,
    run_tool_call,
    takes_setting,
)
from rlfoundry.errors import ConfigError, DataError

ANSWER_CHECKS = ("exact", "math", "none")
WHERE = "environment.args"


@dataclass
class ToolEpisode:
    """One episode's state: its row and the calls so far."""

    row: Mapping[str, Any]
    calls: int = 0
    errors: int = 0
    answer: str | None = None


def prompt_messages(row: Mapping[str, Any], column: str = "prompt") -> list[Message]:
    """The row's prompt as messages (a string is one user message)."""
    if column not in row:
        raise DataError(f"{row.get('_location', 'a row')}: the tools environment needs a "
                        f"'{column}' column; the row has {', '.join(map(repr, row)) or '(none)'}")
    prompt = row[column]
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Sequence) and all(isinstance(m, Mapping) for m in prompt):
        return [dict(m) for m in prompt]
    raise DataError(f"the '{column}' column must be a string or a list of messages, "
                    f"got {type(prompt).__name__}")


def check_answer(text: str, answer: Any, how: str) -> float | None:
    """The environment's reward of a final answer (None: no answer to check against)."""
    if how == "none" or answer is None:
        return None
    if how == "exact":
        return float(text.strip() == str(answer).strip())
    from rlfoundry.rewards import REWARDS

    value = REWARDS.get("math_accuracy")([""], [text], answer=[answer])[0]
    return float(value or 0.0)


def bind_row_variables(registry: Mapping[str, Tool], variables: Any) -> Mapping[str, Tool]:
    """The tools with the row's ``variables`` set for those that take them (unchanged when
    the row binds none)."""
    if variables is None:
        return registry
    if not isinstance(variables, Mapping):
        raise DataError(f"the variables column must map names to numbers, got "
                        f"{type(variables).__name__}")
    return {name: replace(tool, settings={**tool.settings, "variables": dict(variables)})
            if takes_setting(tool, "variables") else tool for name, tool in registry.items()}


@register_environment("tools")
class ToolEnvironment(Environment):
    """Calls tools for the model until it answers without one; scores that answer."""

    def __init__(self, tools: Sequence[str] = ("calculator",), parser: str = "hermes",
                 timeout: float = 10.0, max_output_chars: int = 2000, answer_check: str = "exact",
                 answer_column: str = "answer", prompt_column: str = "prompt",
                 variables_column: str = "variables",
                 tool_options: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        if not timeout or timeout <= 0:
            raise ConfigError(f"{WHERE}.timeout must be > 0 seconds, got {timeout!r}")
        if max_output_chars < 1:
            raise ConfigError(f"{WHERE}.max_output_chars must be >= 1, got {max_output_chars}")
        if answer_check not in ANSWER_CHECKS:
            raise ConfigError(f"{WHERE}.answer_check must be one of {', '.join(ANSWER_CHECKS)}, "
                              f"got {answer_check!r}")
        try:
            self.parse = get_tool_parser(parser)
        except ConfigError as e:
            raise ConfigError(f"{WHERE}.parser: {e}") from None
        self.registry = resolve_tools(tools, tool_options, WHERE)
        if "python" in self.registry:  # a host without the sandbox fails here, not per call
            from rlfoundry.rewards.sandbox import check_mode, detect_isolation

            check_mode(self.registry["python"].settings.get("isolation", "namespaces"),
                       detect_isolation())
        self.timeout, self.max_output_chars = float(timeout), int(max_output_chars)
        self.answer_check, self.answer_column = answer_check, answer_column
        self.prompt_column, self.variables_column = prompt_column, variables_column

    @property
    def tools(self) -> list[dict[str, Any]]:
        """The tool schemas for ``apply_chat_template(tools=...)`` (empty: no tools)."""
        return [t.schema() for t in self.registry.values()]

    def reset(self, row: Mapping[str, Any]) -> EpisodeStart:
        return EpisodeStart(prompt_messages(row, self.prompt_column), ToolEpisode(row))

    def step(self, state: ToolEpisode, text: str) -> EnvStep:
        turn: ParsedTurn = self.parse(text)
        if not turn.has_calls:
            state.answer = turn.text
            reward = check_answer(turn.text, state.row.get(self.answer_column), self.answer_check)
            return EnvStep([], reward, True, state, {"tool_calls": 0.0, "tool_errors": 0.0})
        registry = bind_row_variables(self.registry, state.row.get(self.variables_column))
        messages: list[Message] = []
        metrics: dict[str, float] = {"tool_calls": 0.0, "tool_errors": 0.0}
        for item in turn.in_order():
            if isinstance(item, CallError):
                result = ToolResult(item.name or "?", f"error: {item.message}", "parse_error")
            else:
                result = run_tool_call(item, registry, timeout=self.timeout,
                                       max_output_chars=self.max_output_chars)
            metrics["tool_calls"] += 1
            if not result.ok:
                metrics["tool_errors"] += 1
                key = f"tool_errors/{result.reason}"
                metrics[key] = metrics.get(key, 0.0) + 1
            messages.append({"role": "tool", "name": result.name, "content": result.text})
        state.calls += int(metrics["tool_calls"])
        state.errors += int(metrics["tool_errors"])
        return EnvStep(messages, None, False, state, metrics)

    def final_reward(self, state: ToolEpisode, turn_rewards: list[float | None]) -> float | None:
        """The answer's reward; an episode cut off before any answer (still calling tools at
        ``max_turns``) gets 0.0 when answers are checked."""
        given = [r for r in turn_rewards if r is not None]
        if given:
            return sum(given)
        if self.answer_check != "none" and state.answer is None \
                and state.row.get(self.answer_column) is not None:
            return 0.0
        return None
