"""The built-in tool task: a modular-arithmetic question over two 4-digit numbers, which a
tiny model cannot work out in its head but can by asking the ``calculator`` and copying its
one-digit result.

A row binds the problem's data as variables (``variables: {"a": 3889, "b": 4884}``), the
"code interpreter with the problem's data loaded" pattern: the ``tools`` environment hands them
to the calculator, so the call names them (``(a+b)%7``) instead of copying the numbers. The
call's text depends only on the question's operation (one of :data:`OPERATIONS`), and the
answer is one digit: what the model has to learn is to call, which expression to write, and
to copy the tool's digit.

* ``tool_modulo``: ``{"prompt": [user "a=3889, b=4884. (a+b) mod 7?"], "variables":
  {"a": 3889, "b": 4884}, "answer": "2"}`` (episodes of the ``tools`` environment; with
  ``tools: []`` the same task without tools).
* ``tool_modulo_sft``: demonstrations for the SFT warm start, one row per model turn, so the
  tool's answer is in the prompt and never trained on. With ``tools: true`` (default) a
  problem gives two rows: the call (completion ``<calculator>(a+b)%7</calculator>``, the
  ``tags`` format; ``parser: hermes`` writes the JSON format instead) and the answer (prompt:
  question, call and the tool's message; completion: the digit). A fraction ``noise`` of the
  demonstrations skips the tool and guesses the first digit of ``a`` (one row). With
  ``tools: false`` a problem gives one row answering directly (the first digit of ``a`` in
  the same fraction, else the right answer): the warm start of the no-tool baseline.

Rows carry the tool schemas in a ``tools`` column, which the chat template renders
(``apply_chat_template(tools=...)``) exactly as the ``tools`` environment's episodes do.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from typing import Any

from rlfoundry.errors import ConfigError

TOOL = "calculator"
# (question text, calculator expression, the value)
OPERATIONS: tuple[tuple[str, str, Callable[[int, int], int]], ...] = (
    ("(a+b) mod 7", "(a+b)%7", lambda a, b: (a + b) % 7),
    ("(a+b) mod 9", "(a+b)%9", lambda a, b: (a + b) % 9),
    ("(a-b) mod 7", "(a-b)%7", lambda a, b: (a - b) % 7),
    ("(a-b) mod 9", "(a-b)%9", lambda a, b: (a - b) % 9),
)
PARSERS = ("tags", "hermes")  # the call formats the demonstrations can be written in


def make_tool_modulo(n: int, seed: int = 0, low: int = 1000, high: int = 4999,
                     split: str | None = None) -> list[dict[str, Any]]:
    """``n`` rows (``prompt``, ``variables``, ``answer``, ``expression``) with ``a``, ``b`` in
    ``low..high`` and an operation from :data:`OPERATIONS`."""
    from rlfoundry.data.synthetic import _collect

    if not 0 <= low < high:
        raise ConfigError(f"tool_modulo: need 0 <= low < high, got low={low}, high={high}")
    rng = random.Random(seed)

    def draw() -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            a, b = rng.randint(low, high), rng.randint(low, high)
            question, expression, value = rng.choice(OPERATIONS)
            text = f"a={a}, b={b}. {question}?"
            yield text, {"prompt": [{"role": "user", "content": text}],
                         "variables": {"a": a, "b": b}, "answer": str(value(a, b)),
                         "expression": expression}

    return _collect(n, draw(), split, "tool_modulo")


def tool_call_text(expression: str, parser: str = "tags") -> str:
    """The demonstrated call: ``<calculator>EXPR</calculator>`` (``tags``) or compact JSON in
    the ``hermes`` tags."""
    if parser == "tags":
        return f"<{TOOL}>{expression}</{TOOL}>"
    call = {"name": TOOL, "arguments": {"expression": expression}}
    return f"<tool_call>{json.dumps(call, separators=(',', ':'))}</tool_call>"


def calculator_schemas() -> list[dict[str, Any]]:
    from rlfoundry.environments import TOOLS  # the package registers the built-in tools

    return [TOOLS.get(TOOL).schema()]


def make_tool_modulo_sft(n: int, seed: int = 0, low: int = 1000, high: int = 4999,
                         split: str | None = None, noise: float = 0.0, tools: bool = True,
                         answer_repeats: int = 1, parser: str = "tags") -> list[dict[str, Any]]:
    """``n`` SFT rows (``prompt``, ``completion``, ``tools``) of the tool task; see the
    module docs (``noise``: the fraction of demonstrations that skip the tool and answer with
    the first digit of ``a``; ``parser``: the call format, as ``environment.args.parser``).
    ``answer_repeats``: each answer row appears this many times."""
    if not 0.0 <= noise <= 1.0:
        raise ConfigError(f"noise must be in [0, 1], got {noise}")
    if answer_repeats < 1:
        raise ConfigError(f"answer_repeats must be >= 1, got {answer_repeats}")
    if parser not in PARSERS:
        raise ConfigError(f"parser must be one of {', '.join(PARSERS)}, got {parser!r}")
    problems = make_tool_modulo(n, seed, low, high, split)
    rng = random.Random(seed + 7919)
    schemas = calculator_schemas() if tools else None
    rows: list[dict[str, Any]] = []
    for p in problems:
        user = p["prompt"]
        guess = str(p["variables"]["a"])[0]
        if not tools:  # the no-tool baseline: a direct answer, wrong in the same fraction
            rows.append({"prompt": user, "completion": guess if rng.random() < noise else p["answer"]})
        elif rng.random() < noise:  # skips the tool and guesses
            rows.append({"prompt": user, "completion": guess, "tools": schemas})
        else:
            call = tool_call_text(p["expression"], parser)
            rows.append({"prompt": user, "completion": call, "tools": schemas})
            rows += [{"prompt": [*user, {"role": "assistant", "content": call},
                                     {"role": "tool", "name": TOOL, "content": p["answer"]}],
                      "completion": p["answer"], "tools": schemas}] * answer_repeats
        if len(rows) >= n:
            break
    return rows[:n]
