"""The built-in tool task: add two 4-digit numbers, which a tiny model cannot do in its head
but can by calling the ``calculator`` tool and copying its result.

Operands are drawn from ``low..high`` (default 1000..4999): every expression has the same
width and every sum four digits, so copying the numbers into the call and the result into
the answer is a fixed-offset copy that the tiny model learns in a few CPU minutes, while
the sum itself stays out of its reach.

* ``tool_addition``: ``{"prompt": [{"role": "user", "content": "4821+397="}], "answer": "5218"}``
  (episodes of the ``tools`` environment; with ``tools: []`` the same task without tools).
* ``tool_addition_sft``: demonstrations for the SFT warm start, one row per model turn, so the
  tool's answer is in the prompt and never trained on. With ``tools: true`` (default) a
  problem gives two rows: the call (prompt: the question, completion:
  ``<tool_call>{"name": "calculator", ...}</tool_call>``) and the answer (prompt: question,
  call and the tool's message; completion: the result). A fraction ``noise`` of the
  demonstrations is wrong: the final answer repeats the first operand instead of the tool's
  result. With ``tools: false`` a problem gives one row answering directly (wrong in the same
  fraction): the warm start of the no-tool baseline.

Rows carry the tool schemas in a ``tools`` column, which the chat template renders
(``apply_chat_template(tools=...)``) exactly as the ``tools`` environment's episodes do.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

from rlfoundry.errors import ConfigError

TOOL = "calculator"


def make_tool_addition(n: int, seed: int = 0, low: int = 1000, high: int = 4999,
                       split: str | None = None) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt": [user message "a+b="], "answer": "a+b"}`` with operands in
    ``low..high``."""
    from rlfoundry.data.synthetic import _collect

    if not 0 <= low < high:
        raise ConfigError(f"tool_addition: need 0 <= low < high, got low={low}, high={high}")
    rng = random.Random(seed)

    def draw() -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            a, b = rng.randint(low, high), rng.randint(low, high)
            yield f"{a}+{b}", {"prompt": [{"role": "user", "content": f"{a}+{b}="}],
                               "answer": str(a + b)}

    return _collect(n, draw(), split, "tool_addition")


def tool_call_text(expression: str) -> str:
    """The demonstrated call: compact JSON in the ``hermes`` tags."""
    call = {"name": TOOL, "arguments": {"expression": expression}}
    return f"<tool_call>{json.dumps(call, separators=(',', ':'))}</tool_call>"


def calculator_schemas() -> list[dict[str, Any]]:
    from rlfoundry.environments import TOOLS  # the package registers the built-in tools

    return [TOOLS.get(TOOL).schema()]


def make_tool_addition_sft(n: int, seed: int = 0, low: int = 1000, high: int = 4999,
                           split: str | None = None, noise: float = 0.0,
                           tools: bool = True) -> list[dict[str, Any]]:
    """``n`` SFT rows (``prompt``, ``completion``, ``tools``) of the tool task; see the
    module docs (``noise``: the fraction of wrong demonstrations)."""
    if not 0.0 <= noise <= 1.0:
        raise ConfigError(f"noise must be in [0, 1], got {noise}")
    problems = make_tool_addition((n + 1) // 2 if tools else n, seed, low, high, split)
    rng = random.Random(seed + 7919)
    schemas = calculator_schemas() if tools else None
    rows: list[dict[str, Any]] = []
    for p in problems:
        user = p["prompt"]
        expression = user[0]["content"].rstrip("=")
        wrong = rng.random() < noise
        answer = expression.split("+")[0] if wrong else p["answer"]
        if not tools:
            rows.append({"prompt": user, "completion": answer})
            continue
        call = tool_call_text(expression)
        rows.append({"prompt": user, "completion": call, "tools": schemas})
        rows.append({"prompt": [*user, {"role": "assistant", "content": call},
                                {"role": "tool", "name": TOOL, "content": p["answer"]}],
                     "completion": answer, "tools": schemas})
    return rows[:n]
