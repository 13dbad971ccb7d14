"""Splitting tests into what the sandbox runs and what the trainer keeps, and judging answers
(pure functions: no sandbox is started here)."""

import math

import pytest

from rlfoundry.errors import DataError
from rlfoundry.rewards.sandbox_checks import (
    ANSWER,
    constant,
    decode,
    judge,
    prepare_tests,
    split_asserts,
)


def enc(value):
    """The runner's encoding, for building answers by hand."""
    from rlfoundry.rewards.sandbox_runner import encode

    return encode(value)


@pytest.mark.parametrize("test, kind, hidden_value", [
    ("assert add(2, 3) == 5", "compare", 5),
    ("assert 5 == add(2, 3)", "compare", 5),
    ("assert f(x) in {1, 2}", "compare", {1, 2}),
    ("assert f(x) is None", "compare", None),
    ("assert set(f(x)) == set([1, 2])", "compare", {1, 2}),
    ("assert f(x) == -0.5", "compare", -0.5),
    ("assert f(x) == float('inf')", "compare", math.inf),
    ("assert math.isclose(f(2), 1.41, rel_tol=1e-3)", "isclose", 1.41),
    ("assert abs(f(2) - 1.41) < 1e-6", "absdiff", 1.41),
    ("assert 1e-6 > abs(1.41 - f(2))", "absdiff", 1.41),
    ("assert True", "const", True),
    ("assert f(x)", "truthy", None),
    ("assert not f(x)", "falsy", None),
    ("assert f(x) == g(y)", "pair", None),
])
def test_each_assert_form_becomes_a_check(test, kind, hidden_value):
    program, checks = split_asserts(test)
    assert [c.kind for c in checks] == [kind]
    assert ANSWER in program and "assert" not in program
    if checks[0].hidden and kind != "const":
        assert checks[0].expected == hidden_value
        assert repr(hidden_value) not in program.replace("f(2)", "")  # stays in the trainer


def test_asserts_inside_functions_and_loops_are_rewritten():
    source = ("def check(candidate):\n    assert candidate(1) == 2\n    for i in range(3):\n"
              "        assert candidate(i) >= 0\ncheck(f)")
    program, checks = split_asserts(source, first=4)
    assert [c.kind for c in checks] == ["compare", "compare"]
    assert f"{ANSWER}(4, candidate(1))" in program and f"{ANSWER}(5, candidate(i))" in program
    assert "== 2" not in program


def test_prepare_keeps_expected_outputs_and_numbers_checks_across_tests():
    tests = prepare_tests(["assert f(1) == 1\nassert f(2) == 4", {"input": "3", "output": "9"},
                           "assert f(3) == 9"])
    assert [t.first_check for t in tests] == [0, 0, 2]
    assert tests[1].stdin == "3" and tests[1].stdout == "9" and tests[1].program is None


def test_open_checks_rejected_on_request():
    prepare_tests(["assert f(x)"], "sample 1")  # allowed by default
    with pytest.raises(DataError, match=r"sample 1: tests\[1\]: `assert f\(x\) == g\(y\)`"):
        prepare_tests(["assert f(x) == 1", "assert f(x) == g(y)"], "sample 1", "reject")
    with pytest.raises(DataError, match="has no assert"):
        prepare_tests(["f(1)"], "sample 2", "reject")


@pytest.mark.parametrize("source", ["[0] * 10**9", "10 ** 10 ** 10", "bytes(10**10)",
                                    "__import__('os')", "x", "f()", "list(range(10**9))",
                                    "'a' * 10**9", "(1).__class__"])
def test_constants_never_run_or_allocate_much(source):
    import ast

    ok, _ = constant(ast.parse(source, mode="eval").body)
    assert not ok


def test_judging_plain_data():
    _, (check,) = split_asserts("assert add(2, 3) == 5")
    assert judge(check, [enc(5)]) is None
    assert judge(check, [enc(5.0)]) is None  # 5 == 5.0, as in Python
    assert "(got 4)" in judge(check, [enc(4)])
    assert "malformed" in judge(check, [["i", "not a number"]])
    assert "unknown kind" in judge(check, [["zz", 1]])
    _, (check,) = split_asserts("assert f() == (1, 2)")
    assert judge(check, [enc((1, 2))]) is None and judge(check, [enc([1, 2])]) is not None
    _, (check,) = split_asserts("assert f() is True")
    assert judge(check, [enc(True)]) is None and judge(check, [enc(1)]) is not None
    _, (check,) = split_asserts("assert abs(f() - 0.5) < 1e-6")
    assert judge(check, [enc(0.5000001)]) is None and judge(check, [enc(0.6)]) is not None


def test_decode_builds_only_standard_values():
    from collections import Counter, OrderedDict, namedtuple
    from decimal import Decimal
    from fractions import Fraction

    Point = namedtuple("Point", "x y")
    for value, want in [(Counter("aab"), {"a": 2, "b": 1}), (OrderedDict(a=1), {"a": 1}),
                        (Point(1, 2), (1, 2)), (frozenset({1}), frozenset({1})),
                        (b"\x00\xff", b"\x00\xff"), (bytearray(b"x"), b"x"),
                        (Decimal("1.10"), Decimal("1.10")), (Fraction(1, 3), Fraction(1, 3)),
                        (1 + 2j, 1 + 2j), (None, None), ("é\n", "é\n")]:
        got = decode(enc(value))
        assert got == want and type(got) in (dict, tuple, frozenset, bytes, Decimal, Fraction,
                                             complex, type(None), str)
    nested = []
    for _ in range(150):
        nested = [nested]
    assert decode(enc(nested)) is not None  # deep values become an opaque marker, not a crash
