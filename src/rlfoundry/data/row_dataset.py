"""What every dataset of validated rows shares: loading, the row policies, the sequence protocol.

:class:`~rlfoundry.data.PreferenceDataset` and :class:`~rlfoundry.data.PromptDataset` differ
only in their columns (``TEXT_COLUMNS``) and in how one row becomes an example
(:meth:`RowDataset._example`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Generic, TypeVar

from rlfoundry.data.io import load_rows
from rlfoundry.data.row_policy import (
    RowReport,
    build_each,
    filter_duplicates,
    log_report,
    no_rows_left,
    source_label,
)
from rlfoundry.errors import DataError

E = TypeVar("E")


class RowDataset(Generic[E]):
    """Examples built one per row; ``report`` says what was skipped or found twice."""

    TEXT_COLUMNS: tuple[str, ...] = ()  # columns read as text from CSV/parquet sources
    examples: list[E]
    report: RowReport

    @classmethod
    def from_rows(cls, source: Any, *, on_bad_row: str = "error", duplicates: str = "keep"):
        """From a path, a ``datasets.Dataset``, a DataFrame or a list of row dicts.

        ``on_bad_row`` ("error" | "skip") and ``duplicates`` ("keep" | "drop" | "error") are
        the ``data.*`` policies of :mod:`rlfoundry.data.row_policy`; ``report`` afterwards
        says what was skipped or found twice.
        """
        report = RowReport()
        rows, locations = load_rows(source, text_columns=cls.TEXT_COLUMNS,
                                    on_bad_row=on_bad_row, report=report)
        self = cls.__new__(cls)
        self._build(rows, locations, on_bad_row, duplicates, report)
        return self

    @classmethod
    def from_file(cls, path: str | Path, *, on_bad_row: str = "error", duplicates: str = "keep"):
        """From a ``.jsonl``, ``.json``, ``.parquet`` or ``.csv`` file."""
        return cls.from_rows(Path(path), on_bad_row=on_bad_row, duplicates=duplicates)

    def _build(self, rows: list[dict[str, Any]], locations: list[str], on_bad_row: str = "error",
               duplicates: str = "keep", report: RowReport | None = None) -> None:
        if not rows:
            raise DataError(f"a {type(self).__name__} needs at least one row")
        self.report = report = report if report is not None else RowReport()
        total = len(rows) + len(report.skipped)
        rows, locations = filter_duplicates(rows, locations, duplicates, report)
        self.examples = build_each(rows, locations, self._example, on_bad_row, report)
        if not self.examples:
            raise no_rows_left(total, report)
        log_report(source_label(locations), total, report)

    def _example(self, row: dict[str, Any], where: str, index: int) -> E:
        """One validated example from ``row`` (``where``: its location, for errors)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> E:
        return self.examples[index]

    def __iter__(self) -> Iterator[E]:
        return iter(self.examples)
