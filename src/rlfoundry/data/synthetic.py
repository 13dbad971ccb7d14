"""Built-in synthetic data sets: small, deterministic tasks a tiny model can learn on a CPU.

* ``sort_preferences``: ``{"prompt": "sort: q d m a\\n", "chosen": "a d m q",
  "rejected": "d a q m"}``: sort distinct lowercase letters; the rejected answer is the
  same letters in another (never ascending) order, or with ``negatives`` also an ascending
  answer that repeats, drops or invents a letter.
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
from collections.abc import Callable, Iterator, Sequence
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


NEGATIVES = ("order", "repeat", "drop", "foreign")


def _negative(rng: random.Random, letters: list[str], kind: str, alphabet: str) -> list[str]:
    """A wrong answer for ``letters`` of the given ``kind``: ``order`` (the same letters, not
    ascending), ``repeat`` (one letter written twice in place of another), ``drop`` (one
    letter left out) or ``foreign`` (one letter replaced by one not in the prompt). Except
    for ``order``, the answer is ascending, so only the letters give it away."""
    answer = sorted(letters)
    if kind == "order":
        wrong = list(letters)  # the prompt's order half of the time, else a shuffle
        if wrong == answer or rng.random() < 0.5:
            while True:
                rng.shuffle(wrong)
                if wrong != answer:
                    break
        return wrong
    i = rng.randrange(len(answer))
    if kind == "drop":
        return answer[:i] + answer[i + 1:]
    if kind == "repeat":
        j = rng.choice([k for k in range(len(answer)) if k != i])
        return sorted(answer[:i] + [answer[j]] + answer[i + 1:])
    outside = [c for c in alphabet if c not in letters]
    return sorted(answer[:i] + [rng.choice(outside)] + answer[i + 1:])


def _check_negatives(negatives: Sequence[str], most: int, alphabet: int) -> tuple[str, ...]:
    if isinstance(negatives, str) or not negatives:
        raise ConfigError(f"negatives must be a non-empty list drawn from {', '.join(NEGATIVES)}, "
                          f"got {negatives!r}")
    for kind in negatives:
        if kind not in NEGATIVES:
            raise ConfigError(f"unknown negative kind '{kind}'{did_you_mean(str(kind), NEGATIVES)}; "
                              f"choose from {', '.join(NEGATIVES)}")
    if most == alphabet and "foreign" in negatives:
        raise ConfigError(f"negatives: 'foreign' needs a letter outside the prompt; use num_letters "
                          f"< alphabet ({alphabet})")
    return tuple(negatives)


def make_sort_preferences(
    n: int, seed: int = 0, num_letters: tuple[int, int] = (4, 6), split: str | None = None,
    negatives: Sequence[str] = ("order",), alphabet: int = 26,
) -> list[dict[str, Any]]:
    """``n`` letter-sorting preference rows with ``num_letters[0]..num_letters[1]`` distinct
    letters each, drawn from the first ``alphabet`` lowercase letters; the chosen answer is
    ascending. The rejected one is of a kind drawn
    uniformly from ``negatives`` (see :func:`_negative`); the default, ``("order",)``, is
    another order of the same letters. Hard negatives (``repeat``, ``drop``, ``foreign``)
    teach a reward model that an ascending answer with the wrong letters is still wrong."""
    lo, hi = num_letters
    if not 2 <= alphabet <= 26:
        raise ConfigError(f"alphabet must be in 2..26 (letters a..z used), got {alphabet}")
    if not 2 <= lo <= hi <= alphabet:
        raise ConfigError(f"num_letters must satisfy 2 <= low <= high <= alphabet ({alphabet}), "
                          f"got {num_letters}")
    kinds = _check_negatives(negatives, hi, alphabet)
    pool = string.ascii_lowercase[:alphabet]
    rng = random.Random(seed)

    def draw() -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            letters = rng.sample(pool, rng.randint(lo, hi))
            # One kind draws nothing extra, so the default stream is what it always was.
            kind = kinds[0] if len(kinds) == 1 else rng.choice(kinds)
            row = {
                "prompt": f"sort: {' '.join(letters)}\n",
                "chosen": " ".join(sorted(letters)),
                "rejected": " ".join(_negative(rng, letters, kind, pool)),
            }
            # Keyed by the letter set, so eval never shows a set seen in training.
            yield "".join(sorted(letters)), row

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
    n: int, seed: int = 0, num_letters: tuple[int, int] = (4, 6), split: str | None = None,
    alphabet: int = 26,
) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt": "sort: q d m a\\n", "answer": "a d m q"}`` (GRPO, exact match);
    the same problems (and train/eval split) as :func:`make_sort_preferences`."""
    rows = make_sort_preferences(n, seed, num_letters, split, alphabet=alphabet)
    return [{"prompt": r["prompt"], "answer": r["chosen"]} for r in rows]


def make_sort_sft(
    n: int, seed: int = 0, num_letters: tuple[int, int] = (4, 6), split: str | None = None,
    noise: float = 0.0, negatives: Sequence[str] = ("order",), alphabet: int = 26,
) -> list[dict[str, Any]]:
    """``n`` rows ``{"prompt", "completion"}`` for sorting; a fraction ``noise`` of them has a
    wrong completion (of a kind drawn from ``negatives``, as in
    :func:`make_sort_preferences`), as imperfect demonstration data that RL can then correct."""
    if not 0.0 <= noise <= 1.0:
        raise ConfigError(f"noise must be in [0, 1], got {noise}")
    rng = random.Random(seed + 7919)
    rows = make_sort_preferences(n, seed, num_letters, split, negatives, alphabet)
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


def make_tool_modulo(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """The tool task's problems: "a=3889, b=4884. (a+b) mod 7?" with ``a``, ``b`` bound for
    the calculator (``variables``) and a one-digit ``answer``; episodes of the ``tools``
    environment (rlfoundry.data.tool_arith)."""
    from rlfoundry.data import tool_arith  # imported on use: it needs the tool registry

    return tool_arith.make_tool_modulo(*args, **kwargs)


def make_tool_modulo_sft(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """The tool task's SFT demonstrations, one row per model turn (the calculator call, then
    the answer); options ``noise`` (fraction that skips the tool and guesses), ``tools``
    (false: direct answers, the no-tool baseline), ``parser`` (tags | hermes)."""
    from rlfoundry.data import tool_arith

    return tool_arith.make_tool_modulo_sft(*args, **kwargs)


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
    "tool_modulo": (make_tool_modulo, "prompt", 2000),
    "tool_modulo_sft": (make_tool_modulo_sft, "sft", 2000),
}


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
