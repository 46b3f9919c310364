"""Read tsv/csv/jsonl files into tables of rows with line numbers; bad files raise ``DataError`` naming file and line.

Rows that cannot be used (too few fields, an empty text, ...) are never dropped silently: callers record
them in a :class:`SkipLog`, which counts them by reason and warns once per reason with the first location.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerwise.runtime.errors import DataError

__all__ = ["DataWarning", "SkipLog", "Table", "require_file", "read_delimited", "read_jsonl", "read_table",
           "find_column", "FORMATS"]

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
"""File suffix -> format read by :func:`read_table`."""


class DataWarning(UserWarning):
    """Rows of a data file were skipped (the message gives the count, the reason and the first file:line)."""


@dataclass
class SkipLog:
    """Counts skipped rows by reason and remembers where each reason was first seen."""

    counts: dict[str, int] = field(default_factory=dict)
    """Reason -> number of rows skipped for it."""
    first: dict[str, str] = field(default_factory=dict)
    """Reason -> 'file:line' of the first row skipped for it."""

    def skip(self, reason: str, where: str) -> None:
        """Record one skipped row at ``where`` ('file:line')."""
        self.counts[reason] = self.counts.get(reason, 0) + 1
        self.first.setdefault(reason, where)

    def warn(self, source: str) -> None:
        """Emit one :class:`DataWarning` per reason (nothing when no row was skipped)."""
        for reason, n in self.counts.items():
            warnings.warn(f"{source}: skipped {n} row(s): {reason} (first at {self.first[reason]})",
                          DataWarning, stacklevel=3)


@dataclass
class Table:
    """The rows of one file: header names (``None`` without header) and ``(line number, fields)`` pairs."""

    path: Path
    columns: list[str] | None
    rows: list[tuple[int, list[Any]]]

    def where(self, line: int) -> str:
        """'file:line' for messages."""
        return f"{self.path}:{line}"


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path; ``DataError`` naming ``what`` when it is not an existing file."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what}: file not found: {p}")
    return p


def read_delimited(path: Path, delimiter: str, skips: SkipLog, *, header: bool = True,
                   n_fields: int | None = None, quoting: int = csv.QUOTE_MINIMAL) -> Table:
    """Read a csv/tsv file; rows whose field count differs from the header (or ``n_fields``) are skipped.

    GLUE tsv files need ``quoting=csv.QUOTE_NONE``: their sentences contain unbalanced quote characters.
    """
    rows: list[tuple[int, list[Any]]] = []
    columns: list[str] | None = None
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            start = 1
            for fields in reader:
                line, start = start, reader.line_num + 1
                if columns is None and header:
                    columns = [c.strip() for c in fields]
                    n_fields = len(columns)
                    _no_duplicate_columns(path, columns)
                elif fields:
                    if reader.line_num > line and n_fields:
                        _no_merged_rows(path, line, reader.line_num, fields, delimiter, n_fields)
                    _keep_row(rows, line, fields, n_fields, skips, path)
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: cannot parse as {delimiter!r}-separated text: {err}") from err
    if header and columns is None:
        raise DataError(f"{path}: the file is empty (expected a header line and rows)")
    return Table(path, columns, rows)


def _no_duplicate_columns(path: Path, columns: list[str]) -> None:
    """A header that names a column twice would make every lookup of that name ambiguous."""
    seen: dict[str, int] = {}
    for i, name in enumerate(columns):
        if name in seen:
            raise DataError(f"{path}:1: the header names column {name!r} twice (columns {seen[name] + 1} and "
                            f"{i + 1}); rename one of them")
        seen[name] = i


def _no_merged_rows(path: Path, first: int, last: int, fields: list[str], delimiter: str, n_fields: int) -> None:
    """A record over several lines whose inner lines each look like a whole row is rows merged by a quote
    that was never closed (or closed rows later), not a text with line breaks: refuse it with both lines."""
    for i, value in enumerate(fields):
        parts = value.split("\n")
        # the inner lines; the last part is a whole line too when the record ends inside this (last) field
        inner = parts[1:] if i == len(fields) - 1 else parts[1:-1]
        rows_inside = [p for p in inner if p.strip() and p.count(delimiter) == n_fields - 1]
        if rows_inside:
            raise DataError(f"{path}:{first}: a quote opened on line {first} runs to line {last}, so "
                            f"{last - first + 1} lines were read as one row (e.g. {rows_inside[0].strip()[:40]!r} "
                            f"inside it looks like a row of its own); close or escape the quote (\"\")")
    _two_rows_in_one(path, first, last, fields, delimiter, n_fields)


def _two_rows_in_one(path: Path, first: int, last: int, fields: list[str], delimiter: str, n_fields: int) -> None:
    """A record whose first line and last line each hold a whole row's fields (``"a,1`` then ``b",0``) has no
    inner line to look at: two rows merged by an unterminated quote read as one, one row short. A quoted text
    with a line break and a delimiter on each side reads the same, so this is a warning naming both lines."""
    with_break = [i for i, value in enumerate(fields) if "\n" in value]
    if not with_break:
        return
    head_part = delimiter.join(fields[:with_break[0]] + [fields[with_break[0]].split("\n")[0]])
    tail_part = delimiter.join([fields[with_break[-1]].split("\n")[-1]] + fields[with_break[-1] + 1:])
    if head_part.count(delimiter) >= n_fields - 1 and tail_part.count(delimiter) >= n_fields - 1:
        warnings.warn(f"{path}:{first}: a quote opened on line {first} runs to line {last}, and each of those lines "
                      f"holds a whole row's {n_fields} fields ({head_part.strip()[:40]!r}, {tail_part.strip()[:40]!r}): "
                      "if they are two rows, they were read as one; close or escape the quote (\"\")",
                      DataWarning, stacklevel=2)


def _keep_row(rows: list, line: int, fields: list[str], n_fields: int | None, skips: SkipLog, path: Path) -> None:
    if n_fields is not None and len(fields) < n_fields:
        skips.skip(f"too few fields (expected {n_fields})", f"{path}:{line}")
    elif n_fields is not None and len(fields) > n_fields:
        skips.skip(f"too many fields (expected {n_fields})", f"{path}:{line}")
    else:
        rows.append((line, list(fields)))


def read_jsonl(path: Path, skips: SkipLog) -> Table:
    """Read JSON lines (one object a line) or a JSON array of objects; keys become the columns."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    if text.lstrip().startswith("["):
        objects = _parse_json_array(path, text)
    else:
        objects = []
        for line, raw in enumerate(text.splitlines(), start=1):
            if not raw.strip():
                skips.skip("blank line", f"{path}:{line}")
                continue
            try:
                objects.append((line, json.loads(raw, object_pairs_hook=_unique_keys(path, line))))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{line}: not valid JSON ({err.msg}); expected one object a line") from err
    return _objects_to_table(path, objects)


def _unique_keys(path: Path, line: int | None) -> Any:
    """An ``object_pairs_hook`` refusing an object that names a field twice (JSON keeps the last silently)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                where = path if line is None else f"{path}:{line}"
                raise DataError(f"{where}: an object names the field {key!r} twice; keep one")
            out[key] = value
        return out

    return hook


def _parse_json_array(path: Path, text: str) -> list[tuple[int, Any]]:
    try:
        items = json.loads(text, object_pairs_hook=_unique_keys(path, None))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    # A JSON array has no per-row lines: number rows by position (1-based) instead.
    return list(enumerate(items, start=1))


def _objects_to_table(path: Path, objects: list[tuple[int, Any]]) -> Table:
    columns: dict[str, None] = {}
    for line, obj in objects:
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{line}: expected a JSON object with named fields, got {type(obj).__name__}")
        columns.update(dict.fromkeys(obj))
    names = list(columns)
    return Table(path, names, [(line, [obj.get(c) for c in names]) for line, obj in objects])


def read_table(path: Path, skips: SkipLog, fmt: str | None = None) -> Table:
    """Read a csv, tsv or jsonl file with a header (format from ``fmt`` or else the file suffix)."""
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt == "csv":
        return read_delimited(path, ",", skips)
    if fmt == "tsv":
        return read_delimited(path, "\t", skips, quoting=csv.QUOTE_NONE)
    if fmt == "jsonl":
        return read_jsonl(path, skips)
    raise DataError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
                    f"expected one of {', '.join(FORMATS)}")


def find_column(table: Table, candidates: Sequence[str], flag: str) -> int:
    """Index of the first of ``candidates`` among the table's columns (exact, then case-insensitive match).

    A missing column raises ``DataError`` naming the flag, the expected names and the columns found.
    """
    assert table.columns is not None, "find_column needs a header"
    for exact in (True, False):
        for name in candidates:
            for i, col in enumerate(table.columns):
                if col == name or (not exact and col.lower() == name.lower()):
                    return i
    expected = " or ".join(repr(c) for c in candidates)
    raise DataError(f"{table.path}:1: expected a column {expected} ({flag}); "
                    f"found columns: {', '.join(repr(c) for c in table.columns) or 'none'}")
