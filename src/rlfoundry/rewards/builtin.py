"""Built-in reward functions (registered in ``REWARDS``).

Each takes ``(prompts, completions, **columns)`` plus keyword-only options and returns one
``float`` or ``None`` per completion. Columns they read: ``answer`` (``math_accuracy``,
``exact_match``) and ``completion_lengths`` (``overlong_penalty``, optional).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

from rlfoundry.errors import ConfigError
from rlfoundry.rewards.runner import REWARDS

# ----------------------------------------------------------------------------- extraction

_NUM = r"-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
_NUMBER_TOKEN = re.compile(
    r"-?\\[dt]?frac\{\s*-?\d+\s*\}\{\s*-?\d+\s*\}" rf"|{_NUM}(?:\s*/\s*{_NUM})?"
)
_ANSWER_IS = re.compile(r"\banswer\s*(?:is\b\s*:?|:)", re.IGNORECASE)


def _braced(s: str, j: int) -> tuple[str, int] | None:
    """Content of the ``{...}`` group opening at ``s[j]`` and the index after it."""
    depth = 0
    for k in range(j, len(s)):
        depth += {"{": 1, "}": -1}.get(s[k], 0)
        if depth == 0:
            return s[j + 1 : k], k + 1
    return None


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 3``)."""
    matches = list(re.finditer(r"\\(?:boxed|fbox)\s*", text))
    if not matches:
        return None
    m = matches[-1]
    if text[m.end() : m.end() + 1] == "{":
        group = _braced(text, m.end())
        return group[0] if group else None
    token = re.match(r"[^\s$]+", text[m.end() :])
    return token.group(0) if token else None


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: the last ``\\boxed{...}``, else what follows the last
    "answer is" / "Answer:" (to the end of its sentence or ``$...$``), else the last
    number-like token (``-1,000.5``, ``3/4``, ``\\frac{1}{2}``); None when there is none."""
    boxed = _last_boxed(text)
    if boxed is not None:
        return boxed
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        rest = text[matches[-1].end() :].strip().split("\n", 1)[0]
        math_span = re.match(r"\$+([^$]+)\$", rest)
        rest = math_span.group(1) if math_span else re.split(r"\.(?:\s|$)", rest, maxsplit=1)[0]
        rest = rest.strip(" *:")
        if rest:
            return rest
    numbers = _NUMBER_TOKEN.findall(text)
    return numbers[-1] if numbers else None


# -------------------------------------------------------------------------- normalisation


def _replace_command(s: str, command: str, template: str, nargs: int) -> str:
    """``\\command{a}{b}`` -> ``template.format(a, b)`` (braced arguments, nesting allowed)."""
    while (start := s.find(command)) >= 0:
        j, args = start + len(command), []
        for _ in range(nargs):
            while s[j : j + 1] == " ":
                j += 1
            if s[j : j + 1] == "{":
                group = _braced(s, j)
                if group is None:
                    return s
                args.append(group[0])
                j = group[1]
            elif j < len(s) and s[j].isalnum():  # \frac12, \sqrt2
                args.append(s[j])
                j += 1
            else:
                return s
        s = s[:start] + template.format(*args) + s[j:]
    return s


def _normalize(s: str) -> tuple[str, bool]:
    """A plain-text expression (``\\frac{1}{2}`` -> ``(1)/(2)``, ``x^2`` -> ``x**2``) and
    whether it ended in a percent sign."""
    if "\\boxed" in s or "\\fbox" in s:
        s = _last_boxed(s) or s
    previous = None
    while s != previous:
        previous = s
        s = s.strip().rstrip(".").strip().strip("$")
        for left, right in (("\\(", "\\)"), ("\\[", "\\]")):
            if s.startswith(left) and s.endswith(right):
                s = s[len(left) : -len(right)]
    for junk in ("\\left", "\\right", "\\displaystyle", "\\!", "\\,", "\\;", "\\:", "\\ ", "~"):
        s = s.replace(junk, "")
    s = s.replace("{,}", ",").replace("^\\circ", "").replace("^{\\circ}", "")
    s = re.sub(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}", r"\1", s)
    percent = re.search(r"\\?%\s*$", s) is not None
    s = re.sub(r"\\?%\s*$", "", s).strip()
    s = re.sub(r"(?<![\d.])\d{1,3}(?:,\d{3})+(?!\d)", lambda m: m.group(0).replace(",", ""), s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = _replace_command(s, "\\frac", "({})/({})", 2)
    s = _replace_command(s, "\\sqrt", "sqrt({})", 1)
    for latex, plain in (("\\pi", "pi"), ("\\cdot", "*"), ("\\times", "*"), ("\\div", "/")):
        s = s.replace(latex, plain)
    s = re.sub(r"\s+", "", s).replace("{", "(").replace("}", ")").replace("^", "**")
    if s.count("=") == 1:
        s = re.sub(r"^[A-Za-z]\w*=", "", s)  # "x=5" -> "5"
    return s, percent


_SAFE_CHARS = re.compile(r"[0-9A-Za-z.+\-*/()]+")
_BAD_POWER = re.compile(r"\*\*(?!\(?-?(?:\d{1,2}|[A-Za-z])\)?(?![\w.(]|\*\*))")
_DECIMAL = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,3})?(?:/\d+)?")


def _is_expression(s: str) -> bool:
    """Whether ``s`` is a small arithmetic expression in numbers, single-letter variables,
    ``sqrt`` and ``pi``, with small exponents (safe and cheap to evaluate)."""
    return (
        0 < len(s) <= 100
        and _SAFE_CHARS.fullmatch(s) is not None
        and all(len(w) == 1 or w in ("sqrt", "pi") for w in re.findall(r"[A-Za-z]+", s))
        and re.search(r"[A-Za-z]\.|\.[A-Za-z]", s) is None
        and s.count("**") <= 3
        and _BAD_POWER.search(s) is None
    )


def _eval_exact(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval_exact(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return Fraction(repr(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        value = _eval_exact(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp):
        a, b = _eval_exact(node.left), _eval_exact(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if isinstance(node.op, ast.Div):
            return a / b
        if isinstance(node.op, ast.Pow) and b.denominator == 1 and abs(b) <= 99:
            return a ** int(b)
    raise ValueError("not a plain number")


def _exact(s: str) -> Fraction | None:
    """``s`` as an exact fraction (decimals, ``a/b``, ``(1)/(2)``, ``2**-3``) or None."""
    try:
        if _DECIMAL.fullmatch(s):
            return Fraction(s)
        if not _is_expression(s):
            return None
        return _eval_exact(ast.parse(s, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def _close(a: Fraction, b: Fraction, rel_tol: float) -> bool:
    return a == b or abs(a - b) <= Fraction(rel_tol) * max(abs(a), abs(b))


def _symbolic_equal(a: str, b: str, rel_tol: float) -> bool:
    """Equality of two expressions with sympy (False when sympy is not installed)."""
    try:
        import sympy
        from sympy.parsing.sympy_parser import (
            implicit_multiplication,
            parse_expr,
            standard_transformations,
        )
    except ImportError:
        return False
    names: dict[str, Any] = {
        "sqrt": sympy.sqrt, "pi": sympy.pi, "Integer": sympy.Integer, "Float": sympy.Float,
        "Rational": sympy.Rational, "Symbol": sympy.Symbol, "__builtins__": {},
    }
    transformations = (*standard_transformations, implicit_multiplication)
    try:
        x, y = (parse_expr(e, local_dict={}, global_dict=names, transformations=transformations)
                for e in (a, b))
        if not (x.free_symbols or y.free_symbols):
            return math.isclose(float(x), float(y), rel_tol=rel_tol)
        return bool(sympy.simplify(x - y) == 0)
    except Exception:  # unparseable, complex-valued, ...: not equal
        return False


def math_equal(pred: str, gold: str, *, rel_tol: float = 1e-9, symbolic: bool = True) -> bool:
    """Whether two final answers are mathematically equal.

    Numbers compare exactly as fractions (``"0.5" == "1/2" == "\\frac{1}{2}"``,
    ``"1,000" == "1000"``), within relative tolerance ``rel_tol``. ``$``, ``\\boxed{}``,
    a trailing period and a leading ``x =`` are ignored; a percent sign is optional
    (``"50%"`` equals ``"50"`` and ``"0.5"``). If ``pred`` is no expression (``"42 apples"``),
    its first number is used. Other expressions (``"\\sqrt{2}/2"``, ``"x+1"``) are compared
    with sympy when ``symbolic`` and sympy is installed, else as normalised strings.
    """
    p, p_percent = _normalize(pred)
    g, g_percent = _normalize(gold)
    if p and p == g:
        return True
    if _exact(p) is None and not _is_expression(p):
        token = _NUMBER_TOKEN.search(pred)
        if token is None:
            return False
        p, p_percent = _normalize(token.group(0))
    a, b = _exact(p), _exact(g)
    if a is not None and b is not None:
        a_values = (a, a / 100) if p_percent else (a,)
        b_values = (b, b / 100) if g_percent else (b,)
        return any(_close(x, y, rel_tol) for x in a_values for y in b_values)
    if p == g:
        return True
    return symbolic and _is_expression(p) and _is_expression(g) and _symbolic_equal(p, g, rel_tol)


# ---------------------------------------------------------------------------- the rewards


@REWARDS.register("math_accuracy")
def math_accuracy(
    prompts: Sequence[Any],
    completions: Sequence[str],
    *,
    answer: Sequence[Any] | None = None,
    rel_tol: float = 1e-9,
    symbolic: bool = True,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 if the completion's final answer equals the ``answer`` column mathematically, else 0.0.

    The final answer is found by :func:`extract_answer` and compared by :func:`math_equal`.
    A gold answer after ``####`` (GSM8K style) is used as such. Rows with no answer
    (no column, ``None`` or empty) get ``None``.
    """
    if answer is None:
        return [None] * len(completions)
    out: list[float | None] = []
    for completion, gold in zip(completions, answer):
        gold = "" if gold is None else str(gold)
        if "####" in gold:
            gold = gold.rsplit("####", 1)[1]
        if not gold.strip():
            out.append(None)
            continue
        pred = extract_answer(completion)
        ok = pred is not None and math_equal(pred, gold, rel_tol=rel_tol, symbolic=symbolic)
        out.append(1.0 if ok else 0.0)
    return out


THINK_ANSWER_PATTERN = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"


@REWARDS.register("format")
def format_reward(
    prompts: Sequence[Any],
    completions: Sequence[str],
    *,
    pattern: str = THINK_ANSWER_PATTERN,
    mode: str = "fullmatch",
    dotall: bool = True,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 if the completion matches the regex ``pattern``, else 0.0.

    ``mode="fullmatch"`` (default) needs the whole completion to match, ``"search"`` any
    part. ``dotall`` lets ``.`` match newlines. The default pattern is
    ``<think>...</think><answer>...</answer>`` with optional surrounding whitespace.
    """
    if mode not in ("fullmatch", "search"):
        raise ConfigError(f"format: mode must be 'fullmatch' or 'search', got {mode!r}")
    try:
        regex = re.compile(pattern, re.DOTALL if dotall else 0)
    except re.error as e:
        raise ConfigError(f"format: invalid pattern {pattern!r}: {e}") from e
    match = regex.fullmatch if mode == "fullmatch" else regex.search
    return [1.0 if match(c) else 0.0 for c in completions]


@REWARDS.register("length_penalty")
def length_penalty(
    prompts: Sequence[Any],
    completions: Sequence[str],
    *,
    target_length: int = 200,
    coef: float = 1.0,
    **kwargs: Any,
) -> list[float | None]:
    """-coef * max(0, len - target_length) / target_length, with lengths in characters."""
    if target_length <= 0:
        raise ConfigError(f"length_penalty: target_length must be > 0, got {target_length}")
    excess = [len(c) - target_length for c in completions]
    return [-coef * e / target_length if e > 0 else 0.0 for e in excess]


@REWARDS.register("overlong_penalty")
def overlong_penalty(
    prompts: Sequence[Any],
    completions: Sequence[str],
    *,
    max_length: int = 1024,
    cache_length: int = 256,
    completion_lengths: Sequence[int] | None = None,
    **kwargs: Any,
) -> list[float | None]:
    """DAPO's soft overlong punishment: 0 up to max_length - cache_length, then linear to -1.

    With ``L`` the completion length, ``L_max = max_length`` and ``c = cache_length``
    (Yu et al. 2025, "DAPO"): 0 if ``L <= L_max - c``; ``(L_max - c - L) / c`` if
    ``L_max - c < L <= L_max``; -1 if ``L > L_max``. ``L`` is the ``completion_lengths``
    column (tokens, passed by the trainer) when present, else ``len(completion)`` in
    characters; set ``max_length`` to the generation limit in the same unit.
    """
    if not 0 < cache_length <= max_length:
        raise ConfigError(
            f"overlong_penalty: need 0 < cache_length <= max_length, "
            f"got cache_length={cache_length}, max_length={max_length}"
        )
    lengths = [len(c) for c in completions] if completion_lengths is None else completion_lengths
    start = max_length - cache_length
    out: list[float | None] = []
    for length in lengths:
        if length <= start:
            out.append(0.0)
        elif length <= max_length:
            out.append((start - length) / cache_length)
        else:
            out.append(-1.0)
    return out


@REWARDS.register("exact_match")
def exact_match(
    prompts: Sequence[Any],
    completions: Sequence[str],
    *,
    answer: Sequence[Any] | None = None,
    ignore_case: bool = False,
    **kwargs: Any,
) -> list[float | None]:
    """1.0 if the stripped completion equals the stripped ``answer`` column, else 0.0.

    A string comparison (handy for classification labels); ``ignore_case`` compares
    case-insensitively. Rows with no answer get ``None``.
    """
    if answer is None:
        return [None] * len(completions)
    out: list[float | None] = []
    for completion, gold in zip(completions, answer):
        if gold is None:
            out.append(None)
            continue
        a, b = completion.strip(), str(gold).strip()
        out.append(1.0 if (a.casefold() == b.casefold() if ignore_case else a == b) else 0.0)
    return out
