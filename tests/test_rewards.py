"""Reward functions: built-ins with hand-computed values, resolution, and the batch runner."""

from __future__ import annotations

import importlib.util
import logging
import math

import pytest
import torch

from rlfoundry.errors import ConfigError, DataError, NonFiniteError
from rlfoundry.rewards import (
    REWARDS,
    RewardError,
    RewardResult,
    RewardSpec,
    compute_rewards,
    extract_answer,
    math_accuracy,
    math_equal,
    resolve_reward,
    resolve_rewards,
)

NAN = float("nan")
HAS_SYMPY = importlib.util.find_spec("sympy") is not None


def call(name: str, completions: list[str], args: dict | None = None, **columns) -> list:
    return resolve_reward(name, args)(["p"] * len(completions), completions, **columns)


def same(got, expected) -> bool:
    """Elementwise equality treating NaN == NaN."""
    got = got.tolist() if isinstance(got, torch.Tensor) else list(got)
    return len(got) == len(expected) and all(
        (math.isnan(g) and math.isnan(e)) if math.isnan(e) else g == pytest.approx(e, abs=1e-12)
        for g, e in zip(got, expected)
    )


# ---------------------------------------------------------------- math_accuracy

EQUAL = [
    ("0.5", "1/2"),
    ("12", "12.0"),
    ("0.50", "\\frac{1}{2}"),
    ("\\dfrac{1}{2}", "0.5"),
    ("1,000", "1000"),
    ("-3", "-3.00"),
    ("-\\frac{3}{4}", "-0.75"),
    ("$42$", "42"),
    ("42.", "42"),
    ("50\\%", "50"),
    ("50%", "0.5"),
    ("x = 5", "5"),
    ("\\boxed{7}", "7"),
    ("2^{10}", "1024"),
    ("0.333333333333", "1/3"),  # within rel_tol=1e-9
]
NOT_EQUAL = [
    ("41", "42"),
    ("0.5", "0.6"),
    ("1/3", "0.33"),
    ("12", "1.2"),
    ("2", "-2"),
    ("5x", "5"),
    ("1,2", "12"),
    ("2^{99}", "0"),
]
SYMBOLIC_EQUAL = [("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2"), ("x+1", "1+x"), ("2x", "2 \\cdot x")]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_math_equal_equivalent_forms(a, b):
    assert math_equal(a, b)
    assert math_equal(b, a)


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_math_equal_different_values(a, b):
    assert not math_equal(a, b)


@pytest.mark.skipif(not HAS_SYMPY, reason="symbolic comparison needs sympy")
@pytest.mark.parametrize(("a", "b"), SYMBOLIC_EQUAL)
def test_math_equal_symbolic(a, b):
    assert math_equal(a, b)
    assert not math_equal(a, b, symbolic=False)


def test_math_equal_prediction_with_words_uses_its_first_number():
    assert math_equal("42 apples", "42")
    assert math_equal("5 \\text{ cm}", "5")
    assert not math_equal("41 apples", "42")


def test_math_equal_rel_tol():
    assert not math_equal("0.3333", "1/3")
    assert math_equal("0.3333", "1/3", rel_tol=1e-3)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("First 1 + 1 = 2, then \\boxed{3}.", "3"),
        ("\\boxed{\\frac{1}{2}} or rather \\boxed{\\frac{3}{4}}", "\\frac{3}{4}"),
        ("6 * 7 = 42, so the answer is 42.", "42"),
        ("The answer is $\\frac{1}{2}$, i.e. half.", "\\frac{1}{2}"),
        ("Reasoning with 3 steps.\nAnswer: 3.5.\nDone", "3.5"),
        ("We get 3 + 4 = 7", "7"),
        ("total -1,000 dollars", "-1,000"),
        ("no numbers here", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_math_accuracy_values():
    completions = [
        "so the answer is 42.",  # answer 42 -> 1
        "so the answer is 41.",  # answer 42 -> 0
        "\\boxed{0.5}",  # answer 1/2 -> 1
        "I think 12.0",  # answer 12 -> 1 (last number)
        "\\boxed{3}",  # no answer -> None
        "\\boxed{3}",  # empty answer -> None
        "blah",  # nothing to extract -> 0
        "The total is 18.",  # GSM8K-style gold -> 1
    ]
    answer = ["42", 42, "1/2", "12", None, "", "7", "Janet sells 16 - 3 - 4 = 9 ... #### 18"]
    assert call("math_accuracy", completions, answer=answer) == [
        1.0, 0.0, 1.0, 1.0, None, None, 0.0, 1.0
    ]
    assert math_accuracy(["p"], ["\\boxed{3}"]) == [None]  # no answer column at all
    assert math_accuracy(["p"], ["\\boxed{3}"], answer=["3"], unused_column=["x"]) == [1.0]


# ---------------------------------------------------------------- other built-ins


def test_format_reward():
    good = "<think>\nstep 1\nstep 2\n</think>\n<answer>42</answer>\n"
    missing_think = "<answer>42</answer>"
    trailing_text = "<think>x</think><answer>42</answer> and more"
    assert call("format", [good, missing_think, trailing_text]) == [1.0, 0.0, 0.0]
    assert call("format", [trailing_text], {"mode": "search"}) == [1.0]
    assert call("format", ["a\nb", "ab"], {"pattern": "a.b"}) == [1.0, 0.0]
    assert call("format", ["a\nb"], {"pattern": "a.b", "dotall": False}) == [0.0]
    with pytest.raises(ConfigError, match="mode"):
        call("format", ["x"], {"mode": "match"})
    with pytest.raises(ConfigError, match="invalid pattern"):
        call("format", ["x"], {"pattern": "("})


def test_length_penalty_values():
    completions = ["a" * 100, "a" * 200, "a" * 300, "a" * 600]
    assert call("length_penalty", completions) == [0.0, 0.0, -0.5, -2.0]
    assert call("length_penalty", completions, {"target_length": 100, "coef": 0.5}) == [
        0.0, -0.5, -1.0, -2.5
    ]


def test_overlong_penalty_three_regimes():
    # L_max = 100, cache = 20: 0 up to 80, (80 - L) / 20 on (80, 100], -1 above 100.
    args = {"max_length": 100, "cache_length": 20}
    lengths = [10, 80, 81, 90, 100, 101, 500]
    expected = [0.0, 0.0, -0.05, -0.5, -1.0, -1.0, -1.0]
    got = call("overlong_penalty", ["x"] * len(lengths), args, completion_lengths=lengths)
    assert got == pytest.approx(expected)
    # Without the token-length column, characters are counted.
    got = call("overlong_penalty", ["a" * n for n in lengths], args)
    assert got == pytest.approx(expected)
    with pytest.raises(ConfigError, match="cache_length"):
        call("overlong_penalty", ["x"], {"max_length": 10, "cache_length": 20})


def test_exact_match():
    completions = [" positive\n", "Positive", "negative", "x"]
    answer = ["positive", "positive", "positive", None]
    assert call("exact_match", completions, answer=answer) == [1.0, 0.0, 0.0, None]
    assert call("exact_match", completions, {"ignore_case": True}, answer=answer) == [
        1.0, 1.0, 0.0, None
    ]


def test_builtins_registered_with_descriptions():
    descriptions = REWARDS.describe()
    for name in ("math_accuracy", "format", "length_penalty", "overlong_penalty", "exact_match"):
        assert descriptions[name], name


# ---------------------------------------------------------------- resolution


def custom_reward(prompts, completions, *, bonus: float = 0.0, **kwargs):
    return [float(len(c)) + bonus for c in completions]


def kwargs_reward(prompts, completions, **kwargs):
    return [float(kwargs.get("scale", 1))] * len(completions)


def test_resolve_by_name_and_args():
    assert resolve_reward("math_accuracy") is math_accuracy
    fn = resolve_reward("length_penalty", {"target_length": 10})
    assert fn(["p"], ["a" * 20]) == [-1.0]


def test_resolve_by_import_path_with_args():
    fn = resolve_reward(f"{__name__}:custom_reward")
    assert fn is custom_reward
    assert resolve_reward(f"{__name__}:custom_reward", {"bonus": 1.5})(["p"], ["ab"]) == [3.5]


def test_resolve_errors():
    with pytest.raises(ConfigError, match="did you mean 'math_accuracy'"):
        resolve_reward("math_acuracy")
    with pytest.raises(ConfigError, match="cannot import"):
        resolve_reward("no_such_module_xyz:fn")
    with pytest.raises(ConfigError, match="did you mean 'target_length'"):
        resolve_reward("length_penalty", {"target_lenght": 10})
    with pytest.raises(ConfigError, match="did you mean 'bonus'"):
        resolve_reward(f"{__name__}:custom_reward", {"bonsu": 1})
    # **kwargs and no keyword-only parameters: options may be read from kwargs, so accepted
    assert resolve_reward(f"{__name__}:kwargs_reward", {"scale": 2})(["p"], ["c"]) == [2.0]


def test_resolve_rewards_specs():
    fns = resolve_rewards(
        ["format", {"name": "length_penalty", "weight": 0.5, "args": {"coef": 2.0}},
         RewardSpec("length_penalty", weight=0.1, label="short")]
    )
    assert [(name, weight) for name, _, weight in fns] == [
        ("format", 1.0), ("length_penalty", 0.5), ("short", 0.1)
    ]
    assert fns[1][1](["p"], ["a" * 400]) == [-2.0]
    with pytest.raises(ConfigError, match="used twice"):
        resolve_rewards(["format", "format"])
    with pytest.raises(ConfigError, match="allows"):
        resolve_rewards([{"name": "format", "wieght": 1}])


# ---------------------------------------------------------------- compute_rewards


def const(values):
    def fn(prompts, completions, **kwargs):
        return list(values)

    return fn


def test_compute_rewards_weighting_and_none():
    fns = [
        ("a", const([1.0, None, None, 0.5]), 2.0),
        ("b", const([0.5, 3, None, True]), -1.0),
        ("monitor", const([9.0, 9.0, 9.0, 9.0]), 0.0),  # weight 0: reported, not in total
    ]
    result = compute_rewards(fns, ["p"] * 4, ["c"] * 4, {})
    assert isinstance(result, RewardResult)
    assert result.total.dtype == torch.float64 and result.total.shape == (4,)
    # sample 0: 2*1 - 0.5; 1: only b; 2: no reward at all; 3: 2*0.5 - 1 (True counts 1)
    assert same(result.total, [1.5, -3.0, NAN, 0.0])
    assert same(result.per_function["a"], [1.0, NAN, NAN, 0.5])
    assert same(result.per_function["b"], [0.5, 3.0, NAN, 1.0])
    assert same(result.per_function["monitor"], [9.0] * 4)
    assert result.num_errors == {"a": 0, "b": 0, "monitor": 0}
    summary = result.summary()
    assert summary["reward_mean"] == pytest.approx((1.5 - 3.0 + 0.0) / 3)
    assert summary["reward/a"] == pytest.approx(0.75)


def test_compute_rewards_passes_columns_with_builtins():
    fns = resolve_rewards(["math_accuracy", {"name": "format", "args": {"mode": "search",
                                                                         "pattern": "boxed"}}])
    completions = ["\\boxed{2}", "\\boxed{3}", "4"]
    result = compute_rewards(fns, ["q"] * 3, completions, {"answer": ["2", "2", None]})
    assert same(result.per_function["math_accuracy"], [1.0, 0.0, NAN])
    assert same(result.total, [2.0, 1.0, 0.0])


def flaky(prompts, completions, **kwargs):
    """Raises on the completion 'bad', else rewards 1."""
    if "bad" in completions:
        raise ValueError("cannot score 'bad'")
    return [1.0] * len(completions)


COMPLETIONS = ["ok", "ok", "bad", "ok"]


def test_on_error_raise_names_function_and_sample():
    fns = [("flaky", flaky, 1.0)]
    with pytest.raises(RewardError, match=r"'flaky'.*ValueError.*cannot score.*sample 2"):
        compute_rewards(fns, ["p"] * 4, COMPLETIONS, {})
    with pytest.raises(RewardError, match=r"'flaky'.*sample 'row1#0'"):
        compute_rewards(fns, ["p"] * 4, COMPLETIONS, {}, sample_ids=["a", "b", "row1#0", "c"])


def test_on_error_zero_and_skip(caplog):
    fns = [("flaky", flaky, 1.0), ("const", const([0.5] * 4), 1.0)]
    with caplog.at_level(logging.WARNING, logger="rlfoundry.rewards"):
        result = compute_rewards(fns, ["p"] * 4, COMPLETIONS, {}, on_error="zero")
    assert "flaky" in caplog.text and "sample 2" in caplog.text
    assert same(result.per_function["flaky"], [1.0, 1.0, 0.0, 1.0])
    assert same(result.total, [1.5, 1.5, 0.5, 1.5])
    assert result.num_errors == {"flaky": 1, "const": 0}

    result = compute_rewards(fns[:1], ["p"] * 4, COMPLETIONS, {}, on_error="skip")
    assert same(result.per_function["flaky"], [1.0, 1.0, NAN, 1.0])
    assert same(result.total, [1.0, 1.0, NAN, 1.0])
    assert result.num_errors == {"flaky": 1}


def test_returned_values_are_validated():
    prompts, completions = ["p"] * 8, ["c"] * 8
    with pytest.raises(RewardError, match="reward 'math_accuracy' returned 3 values for 8 samples"):
        compute_rewards([("math_accuracy", const([1.0] * 3), 1.0)], prompts, completions, {})
    values = [0.0] * 8
    values[5] = float("inf")
    with pytest.raises(NonFiniteError, match=r"reward 'bad'.*sample 5") as info:
        compute_rewards([("bad", const(values), 1.0)], prompts, completions, {})
    assert isinstance(info.value, RewardError)
    values[5] = NAN
    with pytest.raises(RewardError, match=r"reward 'bad'.*nan.*sample 'id5'"):
        compute_rewards([("bad", const(values), 1.0)], prompts, completions, {},
                        sample_ids=[f"id{i}" for i in range(8)])
    values[5] = "1.0"
    with pytest.raises(RewardError, match=r"reward 'bad' returned str"):
        compute_rewards([("bad", const(values), 1.0)], prompts, completions, {})
    with pytest.raises(RewardError, match="must return a list"):
        compute_rewards([("bad", lambda p, c, **k: 1.0, 1.0)], prompts, completions, {})


def test_compute_rewards_input_errors():
    fn = [("a", const([1.0, 1.0]), 1.0)]
    with pytest.raises(DataError, match="column 'answer' has 1 values for 2 samples"):
        compute_rewards(fn, ["p", "p"], ["c", "c"], {"answer": ["x"]})
    with pytest.raises(ConfigError, match="on_error"):
        compute_rewards(fn, ["p", "p"], ["c", "c"], {}, on_error="ignore")
    with pytest.raises(ConfigError, match="distinct"):
        compute_rewards(fn * 2, ["p", "p"], ["c", "c"], {})
