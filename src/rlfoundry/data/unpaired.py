"""Unpaired preference rows (a prompt, one completion, a desirable/undesirable label) for KTO.

Row format (TRL's column names): ``prompt``, ``completion`` and ``label`` (``true`` =
desirable, ``false`` = undesirable; ``1``/``0`` and the strings ``"true"``/``"false"`` of a
CSV file are accepted). As in :mod:`rlfoundry.data.preference`, ``prompt`` may be a string or
a list of ``{"role", "content"}`` messages (then ``completion`` is an assistant message list
or a string); every other column is an extra kept per row. An optional ``source_pair``
column groups rows that came from one preference pair (held-out pair accuracy uses it).

Paired rows (``prompt``/``chosen``/``rejected``, no ``label``) are converted automatically by
:meth:`UnpairedDataset.from_rows`: each pair becomes one desirable and one undesirable row
(:func:`unpaired_from_pairs`), so one data set serves both ``algorithm.name: dpo`` and
``kto``.

The KL reference point of KTO needs *mismatched* completions: :meth:`UnpairedDataset.tokenize`
gives each row another row's completion (a seeded derangement over the whole split that
avoids the row's own prompt where it can), stored as the ``rejected_ids`` of a
:class:`~rlfoundry.data.preference.TokenizedPair` whose ``chosen_ids`` are the row's own
completion. The pair layouts, length policies and the reference table of DPO then apply
unchanged (length limits count the longer of the two completions).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlfoundry.data.io import load_rows
from rlfoundry.data.preference import (
    BATCH_KEYS,
    PreferenceDataset,
    PreferenceExample,
    TokenizedPair,
    Truncation,
)
from rlfoundry.data.prompts import Content, check_content, missing_key_error, split_columns
from rlfoundry.data.row_dataset import RowDataset
from rlfoundry.data.row_policy import RowReport, row_key
from rlfoundry.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
PAIR_COLUMN = "source_pair"
MISMATCH_TRIES = 64  # offsets tried to find a partner with another prompt


@dataclass(frozen=True)
class UnpairedExample:
    """One validated row; ``prompt`` and ``completion`` are both strings or both messages."""

    prompt: Content
    completion: Content
    label: bool
    extras: dict[str, Any] = field(default_factory=dict)
    location: str = "<python>"
    index: int = 0

    @property
    def conversational(self) -> bool:
        return isinstance(self.prompt, list)


def parse_label(value: Any, where: str) -> bool:
    """``label`` as a bool, or a DataError naming the row."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise DataError(f"{where}: 'label' must be true (desirable) or false (undesirable), got "
                    f"{value!r} ({type(value).__name__})")


class UnpairedDataset(RowDataset[UnpairedExample]):
    """Validated unpaired rows for KTO.

    ``UnpairedDataset(prompts, completions, labels, **extra_columns)``, or
    :meth:`from_rows` / :meth:`from_file` (a path, a ``datasets.Dataset``, a DataFrame or a
    list of dicts; paired rows are converted). Invalid rows raise :class:`DataError` naming
    the row's location (``file:line``).
    """

    TEXT_COLUMNS = ("prompt", "completion", "chosen", "rejected")

    def __init__(self, prompts: Sequence[Content], completions: Sequence[Content],
                 labels: Sequence[Any], **extra_columns: Sequence[Any]) -> None:
        for name, col in (("prompts", prompts), ("completions", completions), ("labels", labels)):
            if isinstance(col, (str, bytes)):
                raise DataError(f"{name} must be a list (one item per example), not a string")
        rows = split_columns({"prompt": prompts, "completion": completions, "label": labels},
                             extra_columns)
        self._build(rows, [f"<python>[row {i}]" for i in range(len(rows))])
        self.converted_from_pairs = False

    @classmethod
    def from_rows(cls, source: Any, *, on_bad_row: str = "error", duplicates: str = "keep"):
        """Unpaired rows, or paired rows (no ``label`` column) converted one pair -> two rows."""
        report = RowReport()
        rows, locations = load_rows(source, text_columns=cls.TEXT_COLUMNS, on_bad_row=on_bad_row,
                                    report=report)
        if rows and not any("label" in r for r in rows) and any("chosen" in r for r in rows):
            pairs = PreferenceDataset.__new__(PreferenceDataset)
            pairs._build(rows, locations, on_bad_row, duplicates, report)
            return unpaired_from_pairs(pairs)
        self = cls.__new__(cls)
        self._build(rows, locations, on_bad_row, duplicates, report)
        self.converted_from_pairs = False
        return self

    def _example(self, row: dict[str, Any], where: str, index: int) -> UnpairedExample:
        for key in ("prompt", "completion", "label"):
            if key not in row or row[key] is None:
                raise missing_key_error(where, key, row)
        label = parse_label(row["label"], where)
        prompt = check_content(row["prompt"], where, "prompt", allow_empty=True)
        completion = check_content(row["completion"], where, "completion")
        if isinstance(prompt, str) and not isinstance(completion, str):
            raise DataError(f"{where}: a message-list completion needs a message-list prompt; "
                            "the prompt here is a string")
        if isinstance(prompt, list) and isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        extras = {k: v for k, v in row.items() if k not in ("prompt", "completion", "label")}
        clash = sorted(BATCH_KEYS.intersection(extras))
        if clash:
            raise DataError(f"{where}: column '{clash[0]}' has the name of a batch key; rename it")
        return UnpairedExample(prompt, completion, label, extras, where, index)

    def __repr__(self) -> str:
        good = sum(e.label for e in self.examples)
        return f"UnpairedDataset({len(self)} rows, {good} desirable, {len(self) - good} undesirable)"

    @property
    def num_desirable(self) -> int:
        return sum(e.label for e in self.examples)

    def tokenize(self, tokenizer: PreTrainedTokenizerBase, max_length: int = 512,
                 max_prompt_length: int | None = None, truncation: Truncation = "truncate_prompt",
                 seed: int = 0) -> list[TokenizedPair]:
        """Each row as a :class:`TokenizedPair` (``chosen_ids``: its completion,
        ``rejected_ids``: its mismatched completion, ``extras["label"]``: 1.0 or 0.0), with
        the length policies of :meth:`PreferenceDataset.tokenize`."""
        partner = mismatched_partners(self.examples, seed)
        shell = PreferenceDataset.__new__(PreferenceDataset)
        shell.examples = [
            PreferenceExample(ex.prompt, ex.completion, self.examples[j].completion,
                              {**ex.extras, "label": float(ex.label)}, ex.location, ex.index)
            for ex, j in zip(self.examples, partner)]
        pairs = shell.tokenize(tokenizer, max_length, max_prompt_length, truncation)
        self.num_dropped, self.dropped_locations = shell.num_dropped, shell.dropped_locations
        self.num_truncated = shell.num_truncated
        return pairs


def mismatched_partners(examples: Sequence[UnpairedExample], seed: int = 0) -> list[int]:
    """For each row, the index of another row whose completion serves as its mismatched
    completion: rows are put in a seeded random order and each takes the completion of the
    next row in that order whose prompt differs (and whose format, text or messages, is the
    same); failing that, the next row of the same format; a lone row takes its own."""
    n = len(examples)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    keys = [row_key({"p": ex.prompt}) for ex in examples]
    out = [0] * n
    for k, i in enumerate(order):
        same_kind = [order[(k + d) % n] for d in range(1, min(n, MISMATCH_TRIES + 1))
                     if examples[order[(k + d) % n]].conversational == examples[i].conversational]
        other_prompt = [j for j in same_kind if keys[j] != keys[i]]
        out[i] = other_prompt[0] if other_prompt else (same_kind[0] if same_kind else i)
    return out


def unpaired_from_pairs(pairs: PreferenceDataset) -> UnpairedDataset:
    """Each preference pair as two rows: (prompt, chosen, desirable) and (prompt, rejected,
    undesirable), with the pair's extras and ``source_pair`` = the pair's index."""
    out = UnpairedDataset.__new__(UnpairedDataset)
    examples: list[UnpairedExample] = []
    for ex in pairs.examples:
        extras = {**ex.extras, PAIR_COLUMN: ex.index}
        for completion, label, side in ((ex.chosen, True, "chosen"), (ex.rejected, False, "rejected")):
            examples.append(UnpairedExample(ex.prompt, completion, label, dict(extras),
                                            f"{ex.location} ({side})", len(examples)))
    out.examples = examples
    out.report = pairs.report
    out.converted_from_pairs = True
    return out
