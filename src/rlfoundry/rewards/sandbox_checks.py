"""Split test cases so that the trainer, not the program, decides whether they pass.

A program under test controls everything in its own process: it can rewrite the harness,
print a fake "passed" line or exit early with status 0. So no verdict is ever computed in the
sandbox. Instead each test is split here, in the trainer:

- a stdin/stdout test sends only its ``input``; the expected ``output`` stays here and is
  compared with what the program printed;
- in an assert test every ``assert`` statement becomes a *check*. Its expected side stays
  here whenever it is a constant (``assert add(2, 3) == 5``, ``assert f(x) in (1, 2)``,
  ``assert math.isclose(f(2), 1.41)``, ``assert abs(f(2) - 1.41) < 1e-6``): the sandbox only
  gets ``add(2, 3)`` (the *probe*) and sends back its value as plain data (numbers, strings,
  bytes, None and containers of them; see ``encode`` in the runner), and the comparison runs
  here. A program cannot pass such a check without producing the right value, which it
  never sees;
- any other assert (``assert f(x)``, ``assert f(x) == g(y)``) is an *open* check: the sandbox
  sends the probe's value (both operands of a comparison) and the trainer still does the
  comparison, but its reference is computed inside the sandbox, next to the program, so a
  hostile program can satisfy it without solving the task. ``open_checks: reject`` refuses
  such tests.

A test passes when the program's side reports it ran to the end, every check in it was
reached, and every value reported for a check passes (a check in a loop reports once per
iteration). A check that was never reached fails the test.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Any

from rlfoundry.errors import DataError

ANSWER = "__rlfoundry_answer__"  # the function the sandbox side calls with each probe's value
COMPARE = {ast.Eq: ("==", operator.eq), ast.NotEq: ("!=", operator.ne), ast.Lt: ("<", operator.lt),
           ast.LtE: ("<=", operator.le), ast.Gt: (">", operator.gt), ast.GtE: (">=", operator.ge),
           ast.Is: ("is", None), ast.IsNot: ("is not", None),
           ast.In: ("in", lambda a, b: a in b), ast.NotIn: ("not in", lambda a, b: a not in b)}
SAFE_CALLS = {"set": set, "frozenset": frozenset, "tuple": tuple, "list": list, "dict": dict,
              "sorted": sorted, "float": float, "int": int, "str": str, "bool": bool,
              "bytes": bytes, "abs": abs, "complex": complex}
MAX_CONSTANT_ITEMS = 1 << 16


class Unjudgeable(Exception):
    """A reported value cannot be compared here (not plain data, or malformed)."""


@dataclass(frozen=True)
class Check:
    """One assert: ``kind`` is ``compare`` (probe ``op`` expected, or expected ``op`` probe
    when ``probe_left`` is False), ``isclose``, ``absdiff`` (``abs(probe - expected) op tol``),
    ``truthy``/``falsy``, ``pair`` (two probe values compared with ``op``: open) or ``const``."""

    source: str
    kind: str
    op: str | None = None
    expected: Any = None
    probe_left: bool = True
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden(self) -> bool:
        """Whether the expected side stays in the trainer (a program cannot forge a pass)."""
        return self.kind in ("compare", "isclose", "absdiff", "const")


@dataclass(frozen=True)
class PreparedTest:
    """What the sandbox gets (``program`` or ``stdin``) and what stays here (``checks`` or
    ``stdout``)."""

    program: str | None = None
    checks: tuple[Check, ...] = ()
    first_check: int = 0
    stdin: str | None = None
    stdout: str | None = None

    @property
    def is_io(self) -> bool:
        return self.stdin is not None


def prepare_tests(tests: Sequence[Any], where: str = "tests", open_checks: str = "allow"
                  ) -> list[PreparedTest]:
    """Split test cases (assert strings and ``{"input", "output"}`` dicts) into what runs in
    the sandbox and what the trainer keeps; :class:`DataError` naming ``where`` for an open
    check when ``open_checks`` is ``reject``."""
    prepared, count = [], 0
    for i, test in enumerate(tests):
        if isinstance(test, dict):
            prepared.append(PreparedTest(stdin=str(test["input"]), stdout=str(test["output"])))
            continue
        program, checks = split_asserts(str(test), count)
        if open_checks == "reject":
            _reject_open(checks, f"{where}: tests[{i}]")
        prepared.append(PreparedTest(program=program, checks=tuple(checks), first_check=count))
        count += len(checks)
    return prepared


def _reject_open(checks: list[Check], where: str) -> None:
    kinds = [c for c in checks if not c.hidden]
    if not checks or kinds:
        what = (f"`assert {kinds[0].source}` compares with a value computed inside the sandbox"
                if kinds else "it has no assert, so only the program's word says it passed")
        raise DataError(f"{where}: {what}, which a hostile program can fake; compare with a "
                        f"constant (`assert f(x) == 5`) or set open_checks: allow in the "
                        f"code_execution reward's args")


def split_asserts(source: str, first: int = 0) -> tuple[str, list[Check]]:
    """The test with each ``assert`` replaced by a call sending its probe to the trainer, and
    the checks (numbered from ``first``) the trainer judges those values by."""
    tree = ast.parse(source)
    checks: list[Check] = []

    class Rewrite(ast.NodeTransformer):
        def visit_Assert(self, node: ast.Assert) -> ast.AST:
            check, probes = classify(node.test)
            checks.append(check)
            call = ast.Call(ast.Name(ANSWER, ast.Load()),
                            [ast.Constant(first + len(checks) - 1), *probes], [])
            return ast.copy_location(ast.Expr(call), node)

    tree = ast.fix_missing_locations(Rewrite().visit(tree))
    return ast.unparse(tree), checks


def classify(test: ast.expr) -> tuple[Check, list[ast.expr]]:
    """The check for one assert's expression and the probe expressions the sandbox evaluates."""
    source = ast.unparse(test)
    ok, value = constant(test)
    if ok:
        return Check(source, "const", expected=bool(value)), []
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in COMPARE:
        op = COMPARE[type(test.ops[0])][0]
        left, right = test.left, test.comparators[0]
        absdiff = _absdiff(left, right, op)
        if absdiff is not None:
            return absdiff
        for probe, other, probe_left in ((left, right, True), (right, left, False)):
            ok, expected = constant(other)
            if ok:
                return Check(source, "compare", op, expected, probe_left), [probe]
        return Check(source, "pair", op), [left, right]
    if isinstance(test, ast.Call) and _name(test.func) in ("isclose", "math.isclose"):
        found = _isclose(test, source)
        if found is not None:
            return found
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return Check(source, "falsy"), [test.operand]
    return Check(source, "truthy"), [test]


def _absdiff(left: ast.expr, right: ast.expr, op: str) -> tuple[Check, list[ast.expr]] | None:
    """``abs(probe - c) < tol`` (or ``abs(c - probe)``, or ``tol > abs(...)``)."""
    flipped = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
    if op not in flipped:
        return None
    if not _is_abs(left) and _is_abs(right):
        left, right, op = right, left, flipped[op]
    ok, tol = constant(right)
    if not (_is_abs(left) and ok and isinstance(left.args[0], ast.BinOp)
            and isinstance(left.args[0].op, ast.Sub)):
        return None
    diff = left.args[0]
    for probe, other in ((diff.left, diff.right), (diff.right, diff.left)):
        ok, expected = constant(other)
        if ok:
            source = ast.unparse(ast.Compare(left, [COMPARE_NODE[op]()], [right]))
            return Check(source, "absdiff", op, expected, options={"tol": tol}), [probe]
    return None


COMPARE_NODE = {"<": ast.Lt, "<=": ast.LtE, ">": ast.Gt, ">=": ast.GtE}


def _is_abs(node: ast.expr) -> bool:
    return (isinstance(node, ast.Call) and _name(node.func) == "abs" and len(node.args) == 1
            and not node.keywords)


def _isclose(call: ast.Call, source: str) -> tuple[Check, list[ast.expr]] | None:
    if len(call.args) != 2:
        return None
    options = {}
    for kw in call.keywords:
        ok, value = constant(kw.value)
        if kw.arg not in ("rel_tol", "abs_tol") or not ok:
            return None
        options[kw.arg] = value
    for probe, other in ((call.args[0], call.args[1]), (call.args[1], call.args[0])):
        ok, expected = constant(other)
        if ok:
            return Check(source, "isclose", None, expected, options=options), [probe]
    return None


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return f"{node.value.id}.{node.attr}"
    return ""


def constant(node: ast.expr) -> tuple[bool, Any]:
    """(True, value) when ``node`` is a constant the trainer can compute safely: literals,
    containers of them, unary/binary arithmetic on numbers and calls of a few builtins
    (``set``, ``tuple``, ``sorted``, ``float('inf')``, ...); else (False, None)."""
    try:
        return True, _evaluate(node)
    except (ValueError, TypeError, ArithmeticError, KeyError, RecursionError):
        return False, None


def _evaluate(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = [_evaluate(e) for e in node.elts]
        return {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)](items)
    if isinstance(node, ast.Dict) and None not in node.keys:
        return {_evaluate(k): _evaluate(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd, ast.Not)):
        value = _evaluate(node.operand)
        if isinstance(node.op, ast.Not):
            return not value
        _number(value)
        return -value if isinstance(node.op, ast.USub) else +value
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _number(_evaluate(node.left)), _number(_evaluate(node.right))
        ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
               ast.Div: operator.truediv}
        return ops[type(node.op)](a, b)
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id in SAFE_CALLS and not node.keywords):
        args = [_evaluate(a) for a in node.args]
        if any(isinstance(a, (str, bytes)) and len(a) > MAX_CONSTANT_ITEMS for a in args):
            raise ValueError("too large")
        if node.func.id == "bytes" and any(isinstance(a, int) for a in args):
            raise ValueError("bytes(n) allocates")
        return SAFE_CALLS[node.func.id](*args)
    raise ValueError(f"not a constant: {type(node).__name__}")


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float, complex)):
        raise TypeError("arithmetic on constants is for numbers only")
    if isinstance(value, int) and value.bit_length() > 4096:
        raise ValueError("too large")
    return value


# ------------------------------------------------------------------------------- judging


class _Opaque:
    def __init__(self, name: str) -> None:
        self.name = name


def decode(data: Any, depth: int = 0) -> Any:
    """A value the sandbox sent (see ``encode`` in the runner) as a Python value built only
    from standard types; raises :class:`Unjudgeable` for anything else."""
    if depth > 200 or not isinstance(data, list) or not data or not isinstance(data[0], str):
        raise Unjudgeable("a malformed value")
    tag, rest = data[0], data[1:]
    try:
        if tag == "n":
            return None
        if tag == "b":
            return bool(rest[0])
        if tag == "i":
            return int(_short(rest[0]))
        if tag == "f":
            return float(_short(rest[0]))
        if tag == "c":
            return complex(float(_short(rest[0])), float(_short(rest[1])))
        if tag == "s":
            return str(rest[0]) if isinstance(rest[0], str) else _bad()
        if tag == "y":
            return bytes.fromhex(rest[0])
        if tag == "D":
            return Decimal(_short(rest[0]))
        if tag == "Q":
            return Fraction(int(_short(rest[0])), int(_short(rest[1])))
        if tag in ("l", "t", "S", "F"):
            items = [decode(x, depth + 1) for x in rest[0]]
            return {"l": list, "t": tuple, "S": set, "F": frozenset}[tag](items)
        if tag == "d":
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in rest[0]}
        if tag == "o":
            return _Opaque(str(rest[0])[:80])
    except (IndexError, TypeError, ValueError, ArithmeticError) as e:
        raise Unjudgeable(f"a malformed value ({type(e).__name__})") from e
    raise Unjudgeable(f"a value of unknown kind {tag[:10]!r}")


def _short(text: Any) -> str:
    if not isinstance(text, str) or len(text) > 5000:
        raise ValueError("a number too long")
    return text


def _bad() -> Any:
    raise ValueError("not text")


def judge(check: Check, values: list[Any]) -> str | None:
    """None when the reported probe values pass ``check``, else why not."""
    try:
        data = [decode(v) for v in values]
        for v in data:
            if isinstance(v, _Opaque):
                raise Unjudgeable(f"an object of type {v.name} (only plain data can be checked: "
                                  f"numbers, strings, bytes, None, lists, tuples, dicts, sets)")
        ok = _holds(check, data)
    except Unjudgeable as e:
        return f"AssertionError: {check.source} (got {e})"
    except (TypeError, ValueError, ArithmeticError) as e:
        return f"AssertionError: {check.source} ({type(e).__name__}: {e})"
    if ok:
        return None
    got = ", ".join(_short_repr(v) for v in data)
    return f"AssertionError: {check.source} (got {got})"


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _holds(check: Check, data: list[Any]) -> bool:
    kind = check.kind
    if kind == "const":
        return bool(check.expected)
    if kind == "truthy":
        return bool(data[0])
    if kind == "falsy":
        return not data[0]
    if kind == "isclose":
        return math.isclose(data[0], check.expected, **check.options)
    if kind == "absdiff":
        return _apply(check.op, abs(data[0] - check.expected), check.options["tol"])
    if kind == "pair":
        return _apply(check.op, data[0], data[1])
    a, b = (data[0], check.expected) if check.probe_left else (check.expected, data[0])
    return _apply(check.op, a, b)


def _apply(op: str | None, a: Any, b: Any) -> bool:
    if op == "is":  # identity is only meaningful for singletons once values are data
        return a is b if b is None or isinstance(b, bool) else a == b and type(a) is type(b)
    if op == "is not":
        return not _apply("is", a, b)
    fn = next(f for name, f in COMPARE.values() if name == op)
    return bool(fn(a, b))


def judge_tests(tests: list[PreparedTest], answers: list[dict[str, Any]]
                ) -> tuple[int, str | None]:
    """(tests passed, the first failure) from the program's answers; the expected values are
    only here."""
    by_test: dict[int, list[dict[str, Any]]] = {}
    by_check: dict[int, list[Any]] = {}
    for record in answers:
        if isinstance(record.get("t"), int):
            by_test.setdefault(record["t"], []).append(record)
        elif isinstance(record.get("c"), int) and isinstance(record.get("v"), list):
            by_check.setdefault(record["c"], []).append(record["v"])
    passed, detail = 0, None
    for i, test in enumerate(tests):
        error = _judge_one(test, by_test.get(i, []), by_check)
        if error is None:
            passed += 1
        elif detail is None:
            detail = f"test {i}: {error}"
    return passed, detail


def _judge_one(test: PreparedTest, records: list[dict[str, Any]],
               by_check: dict[int, list[Any]]) -> str | None:
    for record in records:
        if record.get("error"):
            return str(record["error"])[:300]
    if test.is_io:
        outs = [r.get("out") for r in records if "out" in r]
        if not outs:
            return "not run"
        for out in outs:
            if not isinstance(out, str) or not same_output(out, test.stdout):
                return (f"wrong output {str(out)[:80]!r}, expected "
                        f"{test.stdout[:80]!r}")
        return None
    if not any(r.get("done") is True for r in records):
        return "not run"
    for k, check in enumerate(test.checks):
        reports = by_check.get(test.first_check + k)
        if not reports:
            return f"AssertionError: `assert {check.source}` was never reached"
        for values in reports:
            error = judge(check, values)
            if error is not None:
                return error
    return None


def same_output(got: str, want: str) -> bool:
    """Equal up to trailing whitespace on each line and trailing blank lines."""
    def lines(text: str) -> list[str]:
        out = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
        while out and not out[-1]:
            out.pop()
        return out

    return lines(got) == lines(want)
