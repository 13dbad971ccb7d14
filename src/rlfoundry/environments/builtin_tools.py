"""The built-in tools: ``calculator`` (arithmetic, read with ``ast``, never ``eval``) and
``python`` (code run in the sandbox of :mod:`rlfoundry.rewards.sandbox`, with its limits)."""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Mapping
from typing import Any

from rlfoundry.environments.tools import ToolFailure, register_tool

MAX_EXPRESSION_CHARS = 200
MAX_INT_BITS = 4096  # about 1233 decimal digits: no intermediate integer grows past this
MAX_EXPONENT = 1024

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def _fail(message: str) -> ToolFailure:
    return ToolFailure("raised", message)


def _check_size(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise _fail(f"the result is too large (more than {MAX_INT_BITS} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail("the result is not a finite number")
    return value


def _power(base: int | float, exp: int | float) -> int | float:
    if abs(exp) > MAX_EXPONENT:
        raise _fail(f"exponent {exp} is too large (at most {MAX_EXPONENT} in absolute value)")
    if isinstance(base, int) and isinstance(exp, int) and exp > 0:
        if base.bit_length() * exp > MAX_INT_BITS:  # checked before computing it
            raise _fail(f"the result is too large (more than {MAX_INT_BITS} bits)")
    if base == 0 and exp < 0:
        raise _fail("division by zero (0 to a negative power)")
    try:
        result = base ** exp
    except OverflowError:
        raise _fail("the result is too large") from None
    if isinstance(result, complex):
        raise _fail("the result is not a real number")
    return result


def _evaluate(node: ast.AST, names: Mapping[str, int | float]) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, names)
    if isinstance(node, ast.Name):
        if node.id not in names:
            bound = ", ".join(sorted(names)) or "(none)"
            raise _fail(f"unknown name '{node.id}'; the names bound for this problem: {bound}")
        return names[node.id]
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise _fail(f"only numbers are allowed, got {node.value!r}")
        return _check_size(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand, names))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, names), _evaluate(node.right, names)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        if isinstance(node.op, ast.Mult) and isinstance(left, int) and isinstance(right, int) \
                and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1:
            raise _fail(f"the result is too large (more than {MAX_INT_BITS} bits)")
        try:
            return _check_size(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise _fail("division by zero") from None
        except OverflowError:
            raise _fail("the result is too large") from None
    what = {ast.Attribute: "attribute access", ast.Call: "function calls",
            ast.Subscript: "indexing", ast.Lambda: "lambdas"}.get(type(node), type(node).__name__)
    raise _fail(f"not allowed: {what}; use numbers, + - * / // % ** and parentheses")


def format_number(value: int | float) -> str:
    """An integer as is; a float with an integral value as an integer; else up to 12 digits."""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.12g}"
    return str(value)


@register_tool("calculator", isolated=False)
def calculator(expression: str, *, variables: Mapping[str, Any] | None = None) -> str:
    """Evaluate an arithmetic expression and return the result.

    Args:
        expression: numbers (or the problem's variables) with + - * / // % ** and parentheses, e.g. "(12+7)*3" or "a * b % 7"
    """
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise _fail(f"the expression has {len(expression)} characters, more than "
                    f"{MAX_EXPRESSION_CHARS}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise _fail(f"not an arithmetic expression: {getattr(e, 'msg', None) or e}") from None
    return format_number(_evaluate(tree, bind_variables(variables)))


def bind_variables(variables: Mapping[str, Any] | None) -> dict[str, int | float]:
    """The names an expression may use: the ``variables`` the environment bound from the
    problem's row (``{"a": 3889, "b": 4884}``); each a plain name with a finite number."""
    names: dict[str, int | float] = {}
    for key, value in (variables or {}).items():
        if not (isinstance(key, str) and key.isidentifier()) or key.startswith("_"):
            raise _fail(f"variable name {key!r} is not a plain identifier")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(f"variable '{key}' must be a number, got {type(value).__name__}")
        names[key] = _check_size(value)
    return names


@register_tool("python", isolated=False)
def python(code: str, *, timeout: float = 5.0, memory_mb: int = 256,
           max_output_bytes: int = 1 << 14, isolation: str = "namespaces") -> str:
    """Run a Python program and return what it prints (stdout).

    Args:
        code: the program; print() what you want to see
    """
    from rlfoundry.rewards.sandbox import SandboxLimits, check_mode, detect_isolation, run_program

    check_mode(isolation, detect_isolation())  # a host without namespaces: ConfigError-like, once
    limits = SandboxLimits(timeout=timeout, memory_mb=memory_mb, max_output_bytes=max_output_bytes)
    result = run_program(code, [{"input": "", "output": ""}], limits, mode=isolation)
    printed = result.outputs[0] if result.outputs else ""
    if result.outcome in ("passed", "failed") and (
            result.detail is None or result.detail.startswith("test 0: wrong output")):
        return printed
    reason = {"timeout": "timeout", "output_limit": "output_limit", "memory": "raised",
              "blocked": "raised", "killed": "died"}.get(result.outcome, "raised")
    detail = (result.detail or result.outcome).removeprefix("test 0: ")
    raise ToolFailure(reason, f"{printed[-500:]}{detail}" if printed else detail)
