"""What happens to malformed and duplicate rows (``data.on_bad_row``, ``data.duplicates``).

``on_bad_row``: ``"error"`` (default) raises the row's :class:`DataError`, which names its file
and line; ``"skip"`` leaves the row out and records the message. Problems with a whole file
(missing, empty, not parseable as a whole) are always errors.

``duplicates``: a row identical to an earlier one (all columns equal) is kept (``"keep"``,
default), dropped (``"drop"``) or an error naming both locations (``"error"``). Kept or
dropped, duplicates are counted and logged.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rlfoundry.errors import ConfigError, DataError
from rlfoundry.registry import did_you_mean

logger = logging.getLogger("rlfoundry.data")

ON_BAD_ROW: tuple[str, ...] = ("error", "skip")
DUPLICATES: tuple[str, ...] = ("keep", "drop", "error")
SHOWN = 3  # locations quoted in a log message

T = TypeVar("T")


@dataclass
class RowReport:
    """Rows left out (``skipped``: their error messages) and duplicates found (``duplicates``:
    ``(location, location of the first copy)``) while building a data set."""

    skipped: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    duplicates_dropped: bool = False


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r}{did_you_mean(value, choices)}; "
                          f"choose one of: {', '.join(choices)}")


def keep_or_raise(error: DataError, on_bad_row: str, report: RowReport) -> None:
    """Apply ``on_bad_row`` to one bad row: raise ``error``, or record it as skipped."""
    if on_bad_row == "error":
        raise error
    report.skipped.append(str(error))


def build_each(rows: Sequence[dict[str, Any]], locations: Sequence[str],
               build: Callable[[dict[str, Any], str, int], T], on_bad_row: str,
               report: RowReport) -> list[T]:
    """``build(row, location, index)`` for every row, ``index`` counting the rows kept so far;
    a row whose build raises :class:`DataError` is handled by ``on_bad_row``."""
    out: list[T] = []
    for row, where in zip(rows, locations):
        try:
            out.append(build(row, where, len(out)))
        except DataError as e:
            keep_or_raise(e, on_bad_row, report)
    return out


def row_key(row: dict[str, Any]) -> str:
    """A canonical text of a row's content (two rows are duplicates when their keys match)."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, default=repr)


def filter_duplicates(rows: Sequence[dict[str, Any]], locations: Sequence[str], policy: str,
                      report: RowReport) -> tuple[list[dict[str, Any]], list[str]]:
    """Apply ``duplicates`` = ``policy`` to the rows; record what was found in ``report``."""
    check_choice("data.duplicates", policy, DUPLICATES)
    first: dict[str, str] = {}
    kept_rows, kept_locations = [], []
    for row, where in zip(rows, locations):
        key = row_key(row)
        if key in first:
            if policy == "error":
                raise DataError(f"{where}: duplicate of the row at {first[key]}; remove it or set "
                                f"data.duplicates to 'keep' or 'drop'")
            report.duplicates.append((where, first[key]))
            if policy == "drop":
                report.duplicates_dropped = True
                continue
        else:
            first[key] = where
        kept_rows.append(row)
        kept_locations.append(where)
    return kept_rows, kept_locations


def no_rows_left(total: int, report: RowReport) -> DataError:
    """The error when every row was left out."""
    return DataError(f"all {total} rows were left out as malformed (data.on_bad_row=skip); "
                     f"first: {report.skipped[0] if report.skipped else '(none)'}")


def source_label(locations: Sequence[str]) -> str:
    """The file (or in-memory source) that row locations such as ``a.jsonl:3`` point into."""
    if not locations:
        return "data"
    return re.sub(r"(?::\d+|\[row \d+\])$", "", locations[0])


def log_report(what: str, total: int, report: RowReport) -> None:
    """One warning per kind of problem, with counts and the first locations."""
    if report.skipped:
        first = "; ".join(report.skipped[:SHOWN])
        logger.warning("%s: skipped %d of %d rows as malformed (data.on_bad_row=skip); first: %s",
                       what, len(report.skipped), total, first)
    if report.duplicates:
        first = ", ".join(f"{a} (= {b})" for a, b in report.duplicates[:SHOWN])
        action = "dropped" if report.duplicates_dropped else "kept (data.duplicates=keep)"
        logger.warning("%s: %d duplicate rows %s; first: %s", what, len(report.duplicates),
                       action, first)
