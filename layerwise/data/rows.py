"""Rows of a table into a task's examples: column lookup, label interpretation, the seeded train/dev split of a
single file and the report of skipped rows. Every data source (``layerwise.data.sources``) ends here."""

from __future__ import annotations

import math
import random
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerwise.data.examples import Example, TaskData
from layerwise.data.readers import FORMATS, DataWarning, SkipLog, Table, find_column, read_table
from layerwise.data.sampling import class_labels, draw_indices
from layerwise.data.tasks import TaskSpec
from layerwise.runtime.errors import ConfigError, DataError

__all__ = ["COLUMN_FLAGS", "Columns", "Raw", "LabelIntent", "ColumnFlags", "custom_columns", "task_columns",
           "no_column_flags",
           "raw_rows", "cell", "to_examples", "load_files", "infer_spec", "class_values", "check_label_column",
           "finish"]

COLUMN_FLAGS = ("--text-column", "--pair-column", "--label-column")
"""The flags that name the text, pair and label columns of a csv/jsonl file."""

ColumnFlags = tuple[str | None, str | None, str | None]
"""The values of :data:`COLUMN_FLAGS` (``None`` where not given)."""


@dataclass(frozen=True)
class Columns:
    """Where to find the text, pair and label: header names (candidates) or indices, and the flag to blame."""

    text: Sequence[str] | int
    pair: Sequence[str] | int | None
    label: Sequence[str] | int
    flags: tuple[str, str, str] = COLUMN_FLAGS


@dataclass(frozen=True)
class Raw:
    """One usable row before its label is interpreted."""

    where: str
    """'file:line' for messages."""
    text: str
    pair: str | None
    label: str
    label_column: str = "label"
    """The header name of the column the label was read from (for messages)."""


@dataclass(frozen=True)
class LabelIntent:
    """What the user stated about a file's classes (``--num-labels``, ``--label-names``); ``None``: not stated."""

    num_labels: int | None = None
    label_names: tuple[str, ...] | None = None


def custom_columns(flags: ColumnFlags) -> Columns:
    """Columns of the user's own file: the flags, else 'text' and 'label' (a pair only with --pair-column)."""
    text, pair, label = flags
    return Columns([text or "text"], [pair] if pair else None, [label or "label"])


def task_columns(spec: TaskSpec, flags: ColumnFlags, usual: tuple[Sequence[str], Sequence[str], Sequence[str]]
                 ) -> Columns:
    """Columns of a csv/jsonl file for a named task: the flags, or else the ``usual`` (text, pair, label)
    header names; the pair is read only for sentence-pair tasks."""
    text, pair, label = flags
    if not spec.pair and pair is not None:
        raise ConfigError(f"--pair-column {pair!r}: task {spec.name!r} has one text per example")
    if spec.pair and text is not None and pair is None:
        raise ConfigError(f"task {spec.name!r} is a sentence-pair task: give --pair-column as well as "
                          f"--text-column {text!r}")
    return Columns([text] if text else list(usual[0]),
                   ([pair] if pair else list(usual[1])) if spec.pair else None,
                   [label] if label else list(usual[2]))


def no_column_flags(spec: TaskSpec, flags: ColumnFlags, what: str) -> None:
    """Refuse column flags for a source whose columns are fixed (``what`` says what it reads)."""
    given = [f for f, v in zip(COLUMN_FLAGS, flags) if v is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to csv/jsonl files; task {spec.name!r} reads {what}")


def raw_rows(table: Table, cols: Columns, skips: SkipLog) -> list[Raw]:
    """The rows with a non-empty text (and pair) and label; the others are counted in ``skips``."""
    idx = [_index(table, c, flag) for c, flag in zip((cols.text, cols.pair, cols.label), cols.flags)]
    label_name = table.columns[idx[2]] if table.columns is not None else f"column {idx[2] + 1}"
    out = []
    for line, fields in table.rows:
        where = table.where(line)
        text, pair, label = (None if i is None else cell(fields[i]) for i in idx)
        if not text.strip():
            skips.skip("empty text", where)
        elif pair is not None and not pair.strip():
            skips.skip("empty text pair", where)
        elif not label.strip():
            skips.skip("missing label", where)
        else:
            out.append(Raw(where, text, pair, label, label_name))
    return out


def _index(table: Table, col: Sequence[str] | int | None, flag: str) -> int | None:
    if col is None or isinstance(col, int):
        return col
    return find_column(table, col, flag)


def cell(value: Any) -> str:
    """A field as text: JSON numbers like 1.0 become '1' so they match class labels."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------- labels


def to_examples(raws: list[Raw], spec: TaskSpec, label_range: tuple[float, float] | None = None) -> list[Example]:
    """Examples with labels interpreted for ``spec``; a label outside the task's set raises ``DataError``."""
    if spec.kind == "causal-lm":
        return [Example(text=r.text, target=r.label) for r in raws]
    out = []
    for r in raws:
        label: int | float = (_float_label(r, label_range) if spec.kind == "regression"
                              else _class_label(r, spec))
        out.append(Example(r.text.strip(), None if r.pair is None else r.pair.strip(), label))
    return out


def _class_label(r: Raw, spec: TaskSpec) -> int:
    names = spec.label_names
    assert names is not None
    raw = r.label.strip()
    if raw in names:
        return names.index(raw)
    # Files exported from Hugging Face datasets hold class indices instead of the GLUE label strings.
    if raw.isdigit() and int(raw) < len(names) and not all(n.isdigit() for n in names):
        return int(raw)
    extra = "" if all(n.isdigit() for n in names) else f" (or their indices 0..{len(names) - 1})"
    if spec.name == "custom":  # the user's own file: the classes came from --num-labels / --label-names
        raise DataError(f"{r.where}: label {raw!r} is not one of the custom labels {', '.join(names)}{extra} "
                        f"(column {r.label_column!r}; the classes are the train rows' labels, or those given with "
                        f"--num-labels / --label-names)")
    raise DataError(f"{r.where}: label {raw!r} is not one of the {spec.name} labels "
                    f"{', '.join(names)}{extra}")


def _float_label(r: Raw, label_range: tuple[float, float] | None) -> float:
    try:
        value = float(r.label)
    except ValueError:
        raise DataError(f"{r.where}: regression target {r.label!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{r.where}: regression target {r.label.strip()!r} is not a finite number "
                        f"(column {r.label_column!r}); remove or fix the row")
    if label_range is not None and not label_range[0] <= value <= label_range[1]:
        raise DataError(f"{r.where}: score {value} is outside the allowed range "
                        f"{label_range[0]:g}..{label_range[1]:g}")
    return value


def infer_spec(raws: list[Raw], kind: str | None, pair: bool, path: Path,
               intent: LabelIntent = LabelIntent()) -> TaskSpec:
    """A 'custom' task shaped by the file: integer labels -> classes, or floats with ``--kind regression``.

    The label column is checked first (:func:`check_label_column`): text mixed with numbers, as many distinct
    values as rows (an id or text column) or more classes than ``--num-labels`` are errors naming the column
    and the counts; classes seen once are a :class:`DataWarning`."""
    if kind == "causal-lm":
        if pair:
            raise ConfigError("--pair-column does not apply to --kind causal-lm (the text is the prompt)")
        return TaskSpec("custom", "causal-lm", None, None, False, ("exact_match",), "exact_match")
    if kind == "regression":
        return TaskSpec("custom", "regression", None, None, pair, ("pearson", "spearman"), "pearson")
    values = class_values(raws, path, kind, intent)
    if len(values) < 2:
        raise DataError(f"{path}: the label column holds {len(values)} distinct value(s) {values}; "
                        f"classification needs at least 2 classes (check --label-column)")
    metrics = ("accuracy", "f1", "matthews") if len(values) == 2 else ("accuracy", "matthews")
    return TaskSpec("custom", "classification", len(values), tuple(values), pair, metrics, "accuracy")


def class_values(raws: list[Raw], path: Path, kind: str | None, intent: LabelIntent) -> list[str]:
    """The class labels of a file in class-index order, after the label column's checks."""
    column = raws[0].label_column if raws else "label"
    counts = Counter(r.label.strip() for r in raws)
    if intent.label_names is not None:
        return list(intent.label_names)  # any other value is refused with its line by to_examples
    values = sorted(counts)
    ints = [v for v in values if _is_number(v, int)]
    if ints and len(ints) < len(values):
        _mixed_labels(raws, path, column, counts, set(ints))
    if len(ints) == len(values):
        values = sorted(values, key=int)
        if intent.num_labels is not None:
            return [str(i) for i in range(intent.num_labels)]  # a label outside 0..n-1 is refused with its line
    elif kind is None and all(_is_number(v, float) for v in values):
        raise DataError(f"{path}: the labels look like real numbers (e.g. {values[0]!r}); "
                        f"pass --kind regression, or use integer class labels")
    check_label_column(counts, len(raws), path, column, intent.num_labels)
    if intent.num_labels is not None and len(values) != intent.num_labels:
        raise DataError(f"{path}: --label-column {column!r} holds {len(values)} distinct labels but --num-labels is "
                        f"{intent.num_labels}; name them in index order with --label-names")
    return values


def check_label_column(counts: Counter, n_rows: int, path: Path, column: str, num_labels: int | None) -> None:
    """Refuse a label column that looks like an id or text column; warn about classes seen once."""
    n = len(counts)
    if num_labels is not None and n > num_labels:
        raise DataError(f"{path}: --label-column {column!r} holds {n} distinct values but --num-labels is "
                        f"{num_labels}")
    if num_labels is None and n > 2 and 2 * n > n_rows:
        raise DataError(f"{path}: --label-column {column!r} holds {n} distinct values in {n_rows} rows: it looks "
                        f"like a text or id column, not class labels; name the label column with --label-column, "
                        f"or state the classes with --num-labels / --label-names")
    once = sorted(v for v, c in counts.items() if c == 1)
    if once and n_rows >= 10:  # in a few rows every class is rare; that is no sign of a wrong column
        shown = ", ".join(repr(v) for v in once[:5]) + (", ..." if len(once) > 5 else "")
        warnings.warn(f"{path}: --label-column {column!r}: {len(once)} of {n} classes occur in only one row "
                      f"({shown}); check the column, or state the classes with --label-names", DataWarning,
                      stacklevel=4)


def _mixed_labels(raws: list[Raw], path: Path, column: str, counts: Counter, ints: set[str]) -> None:
    n_int = sum(c for v, c in counts.items() if v in ints)
    n_text = sum(c for v, c in counts.items() if v not in ints)
    minority_int = n_int < n_text
    first = next(r for r in raws if (r.label.strip() in ints) == minority_int)
    odd = "integer" if minority_int else "text"
    raise DataError(f"{path}: --label-column {column!r} mixes numbers and text: {n_int} row(s) hold integers and "
                    f"{n_text} hold text (first {odd} label {first.label.strip()!r} at {first.where}); fix those "
                    f"rows, or list every label with --label-names")


def _is_number(v: str, kind: type) -> bool:
    try:
        kind(v)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- files -> task data


def load_files(path: Path, cols: Columns, spec: TaskSpec | None, kind: str | None, dev_fraction: float,
               seed: int, *, fmt: str | None = None, label_range: tuple[float, float] | None = None,
               intent: LabelIntent = LabelIntent()) -> TaskData:
    """A csv/tsv/jsonl file (split into train/dev with ``dev_fraction`` and ``seed``) or a folder with
    ``train.*`` and ``dev.*``/``validation.*``; ``spec=None`` infers the task from the labels (:func:`infer_spec`)."""
    skips = SkipLog()
    paths = _split_files(path) if path.is_dir() else [path]
    tables = [read_table(p, skips, fmt) for p in paths]
    raws = [raw_rows(t, cols, skips) for t in tables]
    if spec is None and not raws[0]:  # said before the label checks, which would speak of a column of 0 values
        raise DataError(f"{tables[0].path}: no usable rows ({_skip_summary(skips)})")
    if spec is None:
        spec = infer_spec(raws[0], kind, cols.pair is not None, tables[0].path, intent)
    return finish(spec, raws, dev_fraction, seed, skips, " + ".join(str(p) for p in paths), label_range)


def _split_files(folder: Path) -> list[Path]:
    """train.* and dev.* (or validation.*) in ``folder``, with a readable suffix."""
    found = []
    for stems in (("train",), ("dev", "validation", "valid", "val")):
        hits = [folder / f"{s}{x}" for s in stems for x in FORMATS if (folder / f"{s}{x}").is_file()]
        if not hits:
            wanted = " or ".join(f"{s}.*" for s in stems)
            raise DataError(f"{folder}: no {wanted} file (expected a suffix among {', '.join(FORMATS)})")
        found.append(hits[0])
    return found


def finish(spec: TaskSpec, raws: list[list[Raw]], dev_fraction: float, seed: int, skips: SkipLog, source: str,
           label_range: tuple[float, float] | None = None) -> TaskData:
    """Interpret labels, split a single file into train/dev, refuse empty splits, report skipped rows."""
    parts = [to_examples(r, spec, label_range) for r in raws]
    skips.warn(source)
    if len(parts) == 1:
        if not parts[0]:
            raise DataError(f"{source}: no usable rows ({_skip_summary(skips)})")
        train, dev = _split(parts[0], dev_fraction, seed, source)
    else:
        train, dev = parts
    for name, split in (("train", train), ("dev", dev)):
        if not split:
            raise DataError(f"{source}: the {name} split is empty ({_skip_summary(skips)})")
    return TaskData(spec, train, dev, source, dict(skips.counts))


def _skip_summary(skips: SkipLog) -> str:
    if not skips.counts:
        return "no rows skipped"
    return "skipped: " + "; ".join(f"{n} {r}, first at {skips.first[r]}" for r, n in skips.counts.items())


def _split(examples: list[Example], dev_fraction: float, seed: int, source: str) -> tuple[list, list]:
    """Seeded train/dev split of one file (stratified by class), each split shuffled with the seed.

    Files are often sorted by label (the Rotten Tomatoes csv is): shuffling means the first n examples of
    either split are a fair sample, not one class.
    """
    n_dev = round(len(examples) * dev_fraction)
    if n_dev == 0 or n_dev == len(examples):
        raise DataError(f"{source}: {len(examples)} usable rows cannot be split with --dev-fraction "
                        f"{dev_fraction}: one split would be empty")
    dev_idx = set(draw_indices(len(examples), n_dev, random.Random(seed), class_labels(examples)))
    train = [e for i, e in enumerate(examples) if i not in dev_idx]
    dev = [e for i, e in enumerate(examples) if i in dev_idx]
    rng = random.Random(seed + 1)
    rng.shuffle(train)
    rng.shuffle(dev)
    return train, dev
