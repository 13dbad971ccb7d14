"""Built-in synthetic data sets: small, deterministic tasks a tiny model can learn on a CPU.

* ``sort_preferences``: ``{"prompt": "sort: q d m a\\n", "chosen": "a d m q",
  "rejected": "d a q m"}``: sort distinct lowercase letters; the rejected answer is the
  same letters in another (never ascending) order.
* ``addition``: ``{"prompt": "12+7=", "answer": "19"}`` prompts for GRPO with a checkable
  answer. ``addition_sft``: ``{"prompt": "12+7=", "completion": "19"}``.

Every generator is deterministic given ``seed``. With ``split="train"`` or ``"eval"`` a
problem is assigned to one split by a stable hash of its content (about one in ten problems
goes to eval), so train and eval never share a problem, whatever the seeds and sizes.
"""

from __future__ import annotations

import random
import string
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from rlfoundry.errors import ConfigError
from rlfoundry.registry import did_you_mean

SPLITS = ("train", "eval")
EVAL_BUCKETS = 1  # out of 10 hash buckets


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'{did_you_mean(split, SPLITS)}; use train or eval")


def in_split(key: str, split: str | None) -> bool:
    """Whether a problem (identified by ``key``) belongs to ``split`` (None: any split)."""
    _check_split(split)
    if split is None:
        return True
    is_eval = zlib.crc32(key.encode("utf-8")) % 10 < EVAL_BUCKETS
    return is_eval == (split == "eval")


def _collect(
    n: int, draw: Iterator[tuple[str, dict[str, Any]]], split: str | None, what: str
) -> list[dict[str, Any]]:
    """The first ``n`` distinct rows of ``draw`` (pairs of key and row) in ``split``."""
    if n < 1:
        raise ConfigError(f"the number of {what} rows must be >= 1, got {n}")
    _check_split(split)
    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    misses = 0
    for key, row in draw:
        if key in seen or not in_split(key, split):
            misses += 1
            if misses > 1000 + 50 * n:
                raise ConfigError(
                    f"cannot draw {n} distinct {what} rows for split {split!r} "
                    f"(got {len(rows)}); ask for fewer or widen the value range"
                )
            continue
        seen.add(key)
        rows.append(row)
        if len(rows) == n:
            break
    return rows


def make_sort_preferences(
    n: int, seed: int = 0, num_letters: tuple[int, int] = (4, 6), split: str | None = None
) -> list[dict[str, Any]]:
    """``n`` letter-sorting preference rows with ``num_letters[0]..num_letters[1]`` distinct
    letters each; the chosen answer is ascending, the rejected one any other order."""
    lo, hi = num_letters
    if not 2 <= lo <= hi <= 26:
        raise ConfigError(f"num_letters must satisfy 2 <= low <= high <= 26, got {num_letters}")
    rng = random.Random(seed)

    def draw() -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            letters = rng.sample(string.ascii_lowercase, rng.randint(lo, hi))
            answer = sorted(letters)
            wrong = list(letters)  # the prompt's order half of the time, else a shuffle
            if wrong == answer or rng.random() < 0.5:
                while True:
                    rng.shuffle(wrong)
                    if wrong != answer:
                        break
            row = {
                "prompt": f"sort: {' '.join(letters)}\n",
                "chosen": " ".join(answer),
                "rejected": " ".join(wrong),
            }
            # Keyed by the letter set, so eval never shows a set seen in training.
            yield "".join(answer), row

    return _collect(n, draw(), split, "sort_preferences")


def _pairs(rng: random.Random, max_value: int) -> Iterator[tuple[int, int]]:
    if max_value < 1:
        raise ConfigError(f"max_value must be >= 1, got {max_value}")
    while True:
        yield rng.randint(0, max_value), rng.randint(0, max_value)


def make_addition_prompts(
    n: int, seed: int = 0, max_value: int = 99, split: str | None = None
) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt": "12+7=", "answer": "19"}`` with operands in ``0..max_value``."""
    rng = random.Random(seed)
    draw = (
        (f"{a}+{b}", {"prompt": f"{a}+{b}=", "answer": str(a + b)})
        for a, b in _pairs(rng, max_value)
    )
    return _collect(n, draw, split, "addition")


def make_addition_sft(
    n: int, seed: int = 0, max_value: int = 99, split: str | None = None
) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt": "12+7=", "completion": "19"}`` (same problems as
    :func:`make_addition_prompts` for the same arguments)."""
    rows = make_addition_prompts(n, seed, max_value, split)
    return [{"prompt": r["prompt"], "completion": r["answer"]} for r in rows]


def make_sort_prompts(
    n: int, seed: int = 0, num_letters: tuple[int, int] = (4, 6), split: str | None = None
) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt": "sort: q d m a\\n", "answer": "a d m q"}`` (GRPO, exact match);
    the same problems (and train/eval split) as :func:`make_sort_preferences`."""
    rows = make_sort_preferences(n, seed, num_letters, split)
    return [{"prompt": r["prompt"], "answer": r["chosen"]} for r in rows]


def make_sort_sft(
    n: int, seed: int = 0, num_letters: tuple[int, int] = (4, 6), split: str | None = None,
    noise: float = 0.0,
) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt", "completion"}`` for sorting; a fraction ``noise`` of them has a
    wrong (unsorted) completion, as imperfect demonstration data that RL can then correct."""
    if not 0.0 <= noise <= 1.0:
        raise ConfigError(f"noise must be in [0, 1], got {noise}")
    rng = random.Random(seed + 7919)
    rows = make_sort_preferences(n, seed, num_letters, split)
    return [{"prompt": r["prompt"], "completion": r["rejected"] if rng.random() < noise else r["chosen"]}
            for r in rows]


def make_max_prompts(
    n: int, seed: int = 0, num_digits: tuple[int, int] = (4, 6), split: str | None = None
) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt": "max: 3 9 2 7\\n", "answer": "9"}`` over distinct digits."""
    lo, hi = num_digits
    if not 2 <= lo <= hi <= 10:
        raise ConfigError(f"num_digits must satisfy 2 <= low <= high <= 10, got {num_digits}")
    rng = random.Random(seed)

    def draw() -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            digits = rng.sample(string.digits, rng.randint(lo, hi))
            yield "".join(digits), {"prompt": f"max: {' '.join(digits)}\n", "answer": max(digits)}

    return _collect(n, draw(), split, "max")


def make_max_sft(
    n: int, seed: int = 0, num_digits: tuple[int, int] = (4, 6), split: str | None = None,
    noise: float = 0.0,
) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt", "completion"}`` for the max task, where a fraction ``noise`` of
    the demonstrations answers with the FIRST digit instead of the largest: imperfect data
    that leaves a warm-started model often wrong, for RL with a correctness reward to fix."""
    if not 0.0 <= noise <= 1.0:
        raise ConfigError(f"noise must be in [0, 1], got {noise}")
    rng = random.Random(seed + 7919)
    rows = make_max_prompts(n, seed, num_digits, split)
    return [{"prompt": r["prompt"],
             "completion": r["prompt"].split()[1] if rng.random() < noise else r["answer"]}
            for r in rows]


BUILTIN_DATASETS: dict[str, tuple[Callable[..., list[dict[str, Any]]], str, int]] = {
    # name: (generator, kind, default train size); eval defaults to a tenth of train
    "sort_preferences": (make_sort_preferences, "preference", 2000),
    "addition": (make_addition_prompts, "prompt", 2000),
    "addition_sft": (make_addition_sft, "sft", 2000),
    "sort": (make_sort_prompts, "prompt", 2000),
    "max": (make_max_prompts, "prompt", 2000),
    "max_sft": (make_max_sft, "sft", 2000),
    "sort_sft": (make_sort_sft, "sft", 2000),
    # the tool task (rlfoundry.data.tool_arith): episodes, and per-turn SFT demonstrations
    "tool_modulo": (lambda *a, **k: _tool_arith().make_tool_modulo(*a, **k), "prompt", 2000),
    "tool_modulo_sft": (lambda *a, **k: _tool_arith().make_tool_modulo_sft(*a, **k), "sft", 2000),
}


def _tool_arith():
    from rlfoundry.data import tool_arith  # imported on use: it needs the tool registry

    return tool_arith


def builtin_dataset(
    name: str, split: str = "train", n: int | None = None, seed: int = 0, **kwargs: Any
) -> list[dict[str, Any]]:
    """Rows of a built-in data set. ``split`` is ``"train"`` or ``"eval"`` (never
    overlapping); ``n`` defaults to 2000 for train and 200 for eval; ``kwargs`` go to the
    generator (e.g. ``max_value``)."""
    if name not in BUILTIN_DATASETS:
        raise ConfigError(
            f"unknown built-in data set '{name}'{did_you_mean(name, BUILTIN_DATASETS)}; "
            f"choose from {', '.join(sorted(BUILTIN_DATASETS))}"
        )
    _check_split(split)
    make, _kind, default_n = BUILTIN_DATASETS[name]
    if n is None:
        n = default_n if split == "train" else max(1, default_n // 10)
    return make(n, seed=seed, split=split, **kwargs)


def builtin_kind(name: str) -> str:
    """``"preference"``, ``"prompt"`` or ``"sft"``: which data set class a built-in feeds."""
    if name not in BUILTIN_DATASETS:
        raise ConfigError(
            f"unknown built-in data set '{name}'{did_you_mean(name, BUILTIN_DATASETS)}"
        )
    return BUILTIN_DATASETS[name][1]
