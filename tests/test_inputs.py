"""Inputs that used to surprise: hub ids without a namespace, a CSV given without --task, and training data
longer than --max-length (GSM8K at the default 128 tokens)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest

from layerwise.models.resolve import resolve_model
from layerwise.runtime.errors import ModelError
from layerwise.settings import DataSource


def test_hub_ids_with_and_without_a_namespace() -> None:
    for name in ("bert-base-uncased", "gpt2", "google-bert/bert-base-uncased", "Qwen/Qwen2.5-0.5B"):
        source = resolve_model(name)
        assert (source.kind, source.path, source.portable_name) == ("hub", name, name)
    for bad in ("a b", "org/name/extra", "-x", "org/"):
        with pytest.raises(ModelError, match="not a hub id"):
            resolve_model(bad)
    assert resolve_model("minilm").kind == "bundled"  # an alias is still an alias


def test_an_unknown_bare_name_offline_is_one_clear_error(monkeypatch) -> None:
    from layerwise.models.loading import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"^unknown model 'no-such-model-xyz': not a directory, .gguf file or "
                                         r"bundled alias \(minilm"):
        load_tokenizer(resolve_model("no-such-model-xyz"))


def test_a_data_file_without_task_is_read_as_its_own_task(tmp_path: Path) -> None:
    from layerwise.cli import build_parser
    from layerwise.commands.common import DATA
    from layerwise.commands.flags import build

    rows = ["text,label"] + [f"{w} film {i},{'pos' if w == 'good' else 'neg'}" for i in range(20)
                             for w in ("good", "bad")]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    parser = build_parser()
    args = parser.parse_args(["train", "--data", str(tmp_path / "reviews.csv")])
    data = build(DATA, args)
    assert data.task == "csv"
    loaded = data.load()
    assert loaded.task.label_names == ("neg", "pos") and len(loaded.train) + len(loaded.dev) == 40
    assert DataSource(None, "x.jsonl").task == "jsonl" and DataSource(None, "x.TSV").task == "csv"
    assert DataSource(None, None).task == "rotten-tomatoes" == DataSource().task
    assert DataSource(None, "../shared/data/glue/SST-2").task == "rotten-tomatoes"  # a folder names no format
    assert DataSource("rotten-tomatoes", "x.csv").task == "rotten-tomatoes"  # a task given is kept


def test_truncation_warning_names_the_share_and_the_length_that_keeps_95(gsm8k_dir: Path) -> None:
    from layerwise.data import load_task
    from layerwise.data.collate import encode_examples, example_lengths, warn_truncation
    from layerwise.models.loading import load_tokenizer
    from layerwise.data.readers import DataWarning

    data = load_task("gsm8k", gsm8k_dir)
    tokenizer = load_tokenizer(resolve_model("smollm2-135m"))
    examples = data.train[:300]
    lengths = example_lengths(examples, tokenizer, data.task)
    whole = encode_examples(examples, tokenizer, data.task, max_length=100_000)  # nothing truncated
    assert lengths == [len(f["input_ids"]) for f in whole]
    by_hand = sorted(lengths)
    share = sum(n > 128 for n in lengths) / len(lengths)
    keep95 = by_hand[math.ceil(0.95 * len(by_hand)) - 1]
    assert sum(n <= keep95 for n in lengths) >= 0.95 * len(lengths) > sum(n < keep95 for n in lengths)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_truncation(examples, tokenizer, data.task, 128) == (share, keep95)
        assert warn_truncation(examples, tokenizer, data.task, keep95 + 10**4) == (0.0, keep95)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert share > 0.5 and messages == [
        f"{share:.0%} of the 300 training examples are longer than --max-length 128 and are truncated (median "
        f"{by_hand[150]} tokens); --max-length {keep95} keeps 95% of them whole"]
