"""Silent wrong data (issue 19, class 1): a label column that is not one, mixed label types, rare classes,
rows merged by an unclosed quote, duplicated header columns and non-finite regression targets are refused
(or warned about) with the file, the line or column and the counts. In-process: no model, fast."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from layerwise.data import load_task
from layerwise.data.readers import DataWarning
from layerwise.runtime.errors import ConfigError, DataError
from layerwise.settings import DataSource


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rows(n: int, label) -> list[str]:
    return [f"sentence number {i},{label(i)}" for i in range(n)]


def test_an_id_column_as_labels_is_refused_with_column_and_counts(tmp_path: Path) -> None:
    f = _write(tmp_path / "ids.csv", ["text,label", *_rows(30, lambda i: i)])
    with pytest.raises(DataError, match=r"ids\.csv: --label-column 'label' holds 30 distinct values in 30 rows"):
        load_task("csv", f)
    # the text column named as the label: every sentence is distinct
    with pytest.raises(DataError, match=r"--label-column 'text' holds 30 distinct values in 30 rows"):
        load_task("csv", f, label_column="text", text_column="label")


def test_num_labels_states_intent(tmp_path: Path) -> None:
    f = _write(tmp_path / "three.csv", ["text,label", *_rows(30, lambda i: i % 3)])
    assert load_task("csv", f, num_labels=3).task.num_labels == 3
    with pytest.raises(DataError, match=r"three\.csv:4: label '2' is not one of the custom labels 0, 1"):
        load_task("csv", f, num_labels=2)  # '2' is outside 0..1: refused with its line
    words = _write(tmp_path / "words.csv", ["text,label", *_rows(30, lambda i: "abc"[i % 3])])
    with pytest.raises(DataError, match=r"--label-column 'label' holds 3 distinct values but --num-labels is 2"):
        load_task("csv", words, num_labels=2)


def test_label_names_fix_the_class_order_and_refuse_other_values(tmp_path: Path) -> None:
    f = _write(tmp_path / "pn.csv", ["text,label", *_rows(20, lambda i: ("pos", "neg")[i % 2])])
    task = load_task("csv", f, label_names=("pos", "neg"), dev_fraction=0.5)
    assert task.task.label_names == ("pos", "neg")
    # independent count: 'neg' rows are the odd ones, and the names' order makes 'neg' class 1
    assert sum(e.label for e in task.train + task.dev) == 10
    with pytest.raises(DataError, match=r"pn\.csv:2: label 'pos' is not one of the custom labels neg, other"):
        load_task("csv", f, label_names=("neg", "other"))


def test_mixed_label_types_name_the_column_the_counts_and_the_first_odd_line(tmp_path: Path) -> None:
    lines = [f'{{"text": "t{i}", "label": {i % 2}}}' for i in range(9)]
    lines.insert(4, '{"text": "stray", "label": "positive"}')
    f = _write(tmp_path / "mixed.jsonl", lines)
    with pytest.raises(DataError, match=r"mixed\.jsonl: --label-column 'label' mixes numbers and text: 9 row\(s\) "
                                        r"hold integers and 1 hold text \(first text label 'positive' at "
                                        r".*mixed\.jsonl:5\)"):
        load_task("jsonl", f)


def test_a_class_seen_once_is_a_loud_warning(tmp_path: Path) -> None:
    f = _write(tmp_path / "rare.csv", ["text,label", *_rows(20, lambda i: i % 2), "odd one,7"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        task = load_task("csv", f)
    assert task.task.num_labels == 3
    msgs = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert any("--label-column 'label': 1 of 3 classes occur in only one row ('7')" in m for m in msgs), msgs


@pytest.mark.parametrize("body, first, last", [
    (['"hello,1', "world,0", 'fo"o,1', "bar,0"], 2, 4),   # closed three lines later: rows merged
    (['"hello,1', "world,0", "foo,1", "bar,0"], 2, 5),    # never closed: runs to the end of the file
])
def test_rows_merged_by_an_unbalanced_quote_are_refused_with_both_lines(tmp_path: Path, body, first, last) -> None:
    f = _write(tmp_path / "q.csv", ["text,label", *body])
    with pytest.raises(DataError, match=rf"q\.csv:{first}: a quote opened on line {first} runs to line {last}"):
        load_task("csv", f)


def test_a_quoted_text_with_line_breaks_is_still_one_row(tmp_path: Path) -> None:
    f = _write(tmp_path / "ml.csv", ["text,label", '"first line', 'second line, still text",1',
                                     *_rows(9, lambda i: i % 2)])
    task = load_task("csv", f, dev_fraction=0.5)
    assert sorted(e.text for e in task.train + task.dev)[0] == "first line\nsecond line, still text"


def test_a_duplicated_header_column_is_refused(tmp_path: Path) -> None:
    f = _write(tmp_path / "dup.csv", ["text,label,label", "a,0,1", "b,1,0"])
    with pytest.raises(DataError, match=r"dup\.csv:1: the header names column 'label' twice \(columns 2 and 3\)"):
        load_task("csv", f)
    j = _write(tmp_path / "dup.jsonl", ['{"text": "a", "label": 0}', '{"text": "b", "label": 0, "label": 1}'])
    with pytest.raises(DataError, match=r"dup\.jsonl:2: an object names the field 'label' twice"):
        load_task("jsonl", j)


@pytest.mark.parametrize("bad", ["nan", "inf", "-Infinity"])
def test_non_finite_regression_targets_are_refused_with_file_and_line(tmp_path: Path, bad: str) -> None:
    f = _write(tmp_path / "reg.csv", ["text,score", "a,1.5", f"b,{bad}", "c,2.0", "d,0.5"])
    with pytest.raises(DataError, match=rf"reg\.csv:3: regression target '{bad}' is not a finite number "
                                        rf"\(column 'score'\)"):
        load_task("csv", f, kind="regression", label_column="score")


def test_label_intent_settings_check_themselves() -> None:
    with pytest.raises(ConfigError, match="--num-labels must be a whole number >= 2"):
        DataSource(num_labels=1)
    with pytest.raises(ConfigError, match="--label-names must list at least 2 distinct"):
        DataSource(label_names="pos,pos")
    with pytest.raises(ConfigError, match="--num-labels 3 disagrees with --label-names"):
        DataSource(num_labels=3, label_names="a,b")
    with pytest.raises(ConfigError, match="--num-labels 3: task 'sst2' has 2 classes"):
        load_task("sst2", None, num_labels=3)


def test_a_file_without_usable_rows_says_so_and_not_that_the_label_column_is_odd(tmp_path: Path) -> None:
    header = _write(tmp_path / "header.csv", ["text,label"])
    with pytest.raises(DataError, match=r"^.*header\.csv: no usable rows \(no rows skipped\)$"):
        load_task("csv", header)
    short = _write(tmp_path / "short.csv", ["text,label", "one field", "another"])
    with pytest.raises(DataError, match=r"short\.csv: no usable rows \(skipped: 2 too few fields \(expected 2\), "
                                        r"first at .*short\.csv:2\)$"):
        load_task("csv", short)


@pytest.mark.skipif(not Path("/dev/null").is_char_device(), reason="needs /dev/null")
def test_a_device_as_data_is_refused_before_reading() -> None:
    """/dev/zero was read without end until the kernel killed the process for memory; /dev/null stands in for
    it here (a device too, but one that ends: without the check it is 'empty', another message)."""
    with pytest.raises(DataError, match=r"^--data /dev/null: not a file or folder \(a device or socket\)"):
        load_task("csv", "/dev/null")
