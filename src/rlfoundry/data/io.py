"""Reading data rows from files, Hugging Face datasets and Python lists.

Every row keeps a *location* string so that later validation errors can point at it:

* ``path:LINE`` for JSON Lines files (1-based line numbers, as editors show them);
* ``path[row N]`` for ``.json``, ``.parquet`` and ``.csv`` files (0-based row index);
* ``<dataset>[row N]``, ``<dataframe>[row N]`` and ``<python>[row N]`` for in-memory sources.

Supported files: ``.jsonl``/``.ndjson`` (one JSON object per line, blank lines skipped),
``.json`` (a list of objects, or an object ``{"data": [...]}``), ``.parquet`` and ``.csv``.
CSV cells are typed by pandas (a column of numbers becomes numbers, empty cells become
``None``); columns named in ``text_columns`` are always read as strings.
"""

from __future__ import annotations

import io
import json
import math
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlfoundry.data.row_policy import (
    ON_BAD_ROW,
    RowReport,
    check_choice,
    keep_or_raise,
    no_rows_left,
)
from rlfoundry.errors import DataError

SUFFIXES = (".jsonl", ".ndjson", ".json", ".parquet", ".csv")
MAX_DEPTH = 64  # nesting of lists/objects in one row (messages are 3 deep)


@dataclass(frozen=True)
class Row:
    """One data row: its fields and where it came from (e.g. ``"train.jsonl:17"``)."""

    data: dict[str, Any]
    location: str


def read_rows(path: str | Path, *, text_columns: Collection[str] = (), on_bad_row: str = "error",
              report: RowReport | None = None) -> list[Row]:
    """Read every row of a ``.jsonl``, ``.json``, ``.parquet`` or ``.csv`` file.

    Raises :class:`DataError` (naming the file and line or row) for a missing file, an
    unsupported suffix, an empty file, invalid UTF-8, malformed JSON or a row that is not
    an object. With ``on_bad_row="skip"`` a bad JSON Lines line (invalid UTF-8 or JSON, not
    an object) or a non-object item of a ``.json`` list is left out and its message added to
    ``report.skipped`` instead; whole-file problems are still errors. ``text_columns`` only
    matters for CSV: those columns stay strings.
    """
    check_choice("data.on_bad_row", on_bad_row, ON_BAD_ROW)
    report = report if report is not None else RowReport()
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    if not p.is_file():
        raise DataError(f"data path is not a file: {p}")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        rows = _read_jsonl(p, on_bad_row, report)
    elif suffix == ".json":
        rows = _read_json(p, on_bad_row, report)
    elif suffix == ".parquet":
        rows = _read_parquet(p)
    elif suffix == ".csv":
        rows = _read_csv(p, text_columns)
    else:
        raise DataError(
            f"{p}: unsupported data file type '{p.suffix or '(none)'}'; "
            f"use one of {', '.join(SUFFIXES)}"
        )
    if not rows:
        if report.skipped:
            raise no_rows_left(len(report.skipped), report)
        raise DataError(f"{p}: no rows (the file is empty)")
    return rows


def load_rows(
    source: Any, *, text_columns: Collection[str] = (), on_bad_row: str = "error",
    report: RowReport | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and their locations from a path, a ``datasets.Dataset``, a pandas DataFrame, or
    a list of dicts (or of :class:`Row`). Returns ``(rows, locations)``, never empty.
    ``on_bad_row``/``report``: see :func:`read_rows` (an item that is not a mapping is a bad
    row too)."""
    check_choice("data.on_bad_row", on_bad_row, ON_BAD_ROW)
    report = report if report is not None else RowReport()
    if isinstance(source, (str, Path)):
        rows = read_rows(source, text_columns=text_columns, on_bad_row=on_bad_row, report=report)
        return [r.data for r in rows], [r.location for r in rows]

    if _is_instance_of(source, "datasets", "DatasetDict", "IterableDatasetDict"):
        splits = ", ".join(repr(s) for s in source)
        raise DataError(
            f"got a DatasetDict with splits {splits}; pass one split, e.g. dataset['train']"
        )
    if _is_instance_of(source, "datasets", "Dataset", "IterableDataset"):
        return _from_mappings(source, "<dataset>", on_bad_row, report)
    if _is_instance_of(source, "pandas", "DataFrame"):
        return _from_mappings(source.to_dict("records"), "<dataframe>", on_bad_row, report)
    if isinstance(source, Mapping):
        raise DataError(
            "got a single mapping; pass a list of row dicts (one per example), a file path "
            "or a datasets.Dataset"
        )
    if isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
        return _from_mappings(source, "<python>", on_bad_row, report)
    raise DataError(
        f"cannot read rows from {type(source).__name__}; pass a file path, a datasets.Dataset "
        "or a list of dicts"
    )


def _is_instance_of(obj: Any, module: str, *names: str) -> bool:
    # Only look when the library is already imported: if it is not, obj cannot be one of its types.
    mod = sys.modules.get(module)
    return mod is not None and any(
        isinstance(obj, cls) for cls in (getattr(mod, n, None) for n in names) if cls is not None
    )


def _from_mappings(items: Any, label: str, on_bad_row: str,
                   report: RowReport) -> tuple[list[dict[str, Any]], list[str]]:
    rows: list[dict[str, Any]] = []
    locations: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, Row):
            rows.append(dict(item.data))
            locations.append(item.location)
            continue
        where = f"{label}[row {i}]"
        try:
            if not isinstance(item, Mapping):
                raise DataError(f"{where}: expected a dict, got {type(item).__name__}")
            check_depth(item, where)
        except DataError as e:
            keep_or_raise(e, on_bad_row, report)
            continue
        rows.append(dict(item))
        locations.append(where)
    if not rows:
        if report.skipped:
            raise no_rows_left(len(report.skipped), report)
        raise DataError(f"{label}: no rows (the data set is empty)")
    return rows, locations


def _decode(data: bytes, path: Path) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}:{line}: invalid UTF-8 ({e.reason}); re-save the file as UTF-8") from e


def _read_jsonl(path: Path, on_bad_row: str, report: RowReport) -> list[Row]:
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    rows: list[Row] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        where = f"{path}:{lineno}"
        try:
            row = _parse_line(raw, where)
        except DataError as e:
            keep_or_raise(e, on_bad_row, report)
            continue
        if row is not None:
            rows.append(row)
    return rows


def _parse_line(raw: bytes, where: str) -> Row | None:
    """One JSON Lines line -> a Row (None for a blank line); DataError naming ``where``."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where}: invalid UTF-8 at byte {e.start} of the line ({e.reason}); "
            "re-save the file as UTF-8"
        ) from e
    if not line.strip():
        return None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON: {e.msg} (column {e.colno})") from e
    except ValueError as e:  # an integer beyond Python's 4,300-digit conversion limit
        raise DataError(f"{where}: invalid JSON: {e}") from e
    except RecursionError:
        raise _too_deep(where) from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object per line, got {_json_type(obj)}")
    check_depth(obj, where)
    return Row(obj, where)


def _too_deep(where: str) -> DataError:
    return DataError(f"{where}: nested more than {MAX_DEPTH} levels deep (lists/objects inside "
                     "each other); rows hold text, messages and flat extra columns")


def check_depth(value: Any, where: str, limit: int = MAX_DEPTH) -> None:
    """Raise :class:`DataError` naming ``where`` when ``value`` nests lists/dicts deeper than
    ``limit`` (checked without recursion, so any depth is safe to check) or holds a string
    with a lone surrogate (JSON ``"\\ud800"``: not text; the tokenizer fails on it)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item, where)
            continue
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth >= limit:
            raise _too_deep(where)
        stack.extend((child, depth + 1) for child in children)


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where}: a string holds a lone surrogate {text[e.start]!r} at position "
                        f"{e.start} (an escape such as \\ud800 without its pair), which is not "
                        f"text; fix the row") from None


def _read_json(path: Path, on_bad_row: str, report: RowReport) -> list[Row]:
    text = _decode(path.read_bytes(), path)
    if not text.strip():
        return []
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})") from e
    except ValueError as e:  # an integer beyond Python's 4,300-digit conversion limit
        raise DataError(f"{path}: invalid JSON: {e}") from e
    except RecursionError:
        raise _too_deep(str(path)) from None
    if isinstance(obj, dict):
        if "data" not in obj or not isinstance(obj["data"], list):
            raise DataError(
                f"{path}: expected a JSON list of objects or an object with a 'data' list; "
                f"got an object with keys {sorted(obj)[:10]}"
            )
        obj = obj["data"]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {_json_type(obj)}")
    rows: list[Row] = []
    for i, item in enumerate(obj):
        where = f"{path}[row {i}]"
        try:
            if not isinstance(item, dict):
                raise DataError(f"{where}: expected a JSON object, got {_json_type(item)}")
            check_depth(item, where)
        except DataError as e:
            keep_or_raise(e, on_bad_row, report)
            continue
        rows.append(Row(item, where))
    return rows


def _read_parquet(path: Path) -> list[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        records = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read Parquet file: {e}") from e
    return [Row(r, f"{path}[row {i}]") for i, r in enumerate(records)]


def _read_csv(path: Path, text_columns: Collection[str]) -> list[Row]:
    import pandas as pd

    text = _decode(path.read_bytes(), path)
    if not text.strip():
        return []
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            keep_default_na=False,  # the text "NA" or "null" is text, not a missing value
            na_values=[""],
            dtype={c: str for c in text_columns},
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise DataError(f"{path}: cannot parse CSV: {e}") from e
    rows: list[Row] = []
    for i, record in enumerate(frame.to_dict("records")):
        data = {str(k): (None if _is_nan(v) else v) for k, v in record.items()}
        rows.append(Row(data, f"{path}[row {i}]"))
    return rows


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _json_type(obj: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null", dict: "an object"}
    return names.get(type(obj), type(obj).__name__)
