"""Task metrics: hand-computed values, independent formulas, scipy, degenerate inputs, GSM8K answers."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from layerwise.data import TASKS, get_task
from layerwise.runtime.errors import ConfigError
from layerwise.data.task_metrics import (METRICS, EvalMetric, accuracy, compute_metrics, exact_match, extract_final_number,
                                  f1, get_metric, matthews, pearson, register_metric, spearman)

_NUMERIC = ["accuracy", "f1", "matthews", "pearson", "spearman"]


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_metric_is_perfect_on_perfect_predictions(name):
    metric = METRICS[name]
    assert isinstance(metric, EvalMetric) and metric.name == name and metric.higher_is_better
    refs = ["#### 3", "#### 1,000"] if name == "exact_match" else [0, 1, 1, 0, 1]
    value = metric.fn(refs, refs)
    assert isinstance(value, float) and value == pytest.approx(1.0)


def test_accuracy_and_f1_hand_computed():
    preds, refs = [1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0]
    assert accuracy(preds, refs) == pytest.approx(4 / 6)
    # tp=2 fp=1 fn=1: precision 2/3, recall 2/3
    assert f1(preds, refs) == pytest.approx(2 / 3)
    assert f1([0, 0, 0], [0, 0, 0]) == 0.0 and f1([1, 1], [0, 0]) == 0.0


def _mcc_binary(p: np.ndarray, r: np.ndarray) -> float:
    tp, tn = np.sum((p == 1) & (r == 1)), np.sum((p == 0) & (r == 0))
    fp, fn = np.sum((p == 1) & (r == 0)), np.sum((p == 0) & (r == 1))
    return (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))


def _mcc_onehot(p: np.ndarray, r: np.ndarray, k: int) -> float:
    """MCC as the correlation of one-hot matrices: cov(X, Y) / sqrt(cov(X, X) cov(Y, Y))."""
    x, y = np.eye(k)[p], np.eye(k)[r]
    x, y = x - x.mean(0), y - y.mean(0)
    return float(np.sum(x * y) / math.sqrt(np.sum(x * x) * np.sum(y * y)))


def test_matthews_matches_direct_formulas():
    assert matthews([1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0]) == pytest.approx((2 * 2 - 1 * 1) / 9)
    rng = np.random.default_rng(0)
    for _ in range(5):
        r = rng.integers(0, 2, 200)
        p = np.where(rng.random(200) < 0.7, r, 1 - r)
        assert matthews(p, r) == pytest.approx(_mcc_binary(p, r))
        r3, p3 = rng.integers(0, 3, 150), rng.integers(0, 3, 150)
        assert matthews(p3, r3) == pytest.approx(_mcc_onehot(p3, r3, 3))
    assert matthews([0, 1, 0, 1], [1, 0, 1, 0]) == pytest.approx(-1.0)


def test_degenerate_inputs_give_zero_not_nan():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert matthews([1, 1, 1, 1], [0, 1, 0, 1]) == 0.0
        assert matthews([0, 0], [0, 0]) == 0.0
        assert pearson([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
        assert spearman([1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == 0.0


def test_correlations_match_scipy():
    rng = np.random.default_rng(1)
    r = rng.uniform(0, 5, 300)
    p = r + rng.normal(0, 1, 300)
    assert pearson(p, r) == pytest.approx(stats.pearsonr(p, r)[0])
    assert spearman(p, r) == pytest.approx(stats.spearmanr(p, r)[0])
    assert pearson([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0) and spearman([1, 2, 3], [30, 20, 10]) == -1.0


def test_shape_errors():
    with pytest.raises(ValueError, match="same length"):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(ValueError, match="as many predictions"):
        exact_match(["1"], [])


@pytest.mark.parametrize("text, number", [
    ("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
    ("#### 1,000", "1000"),
    ("The answer is $18.00.", "18"),
    ("She pays $1,250.50 in total", "1250.5"),
    ("so the result is 72.0", "72"),
    ("It drops by -5 degrees #### -5", "-5"),
    ("5-3 = 2", "2"),
    ("#### 7\n\nQuestion: next one #### 9", "7"),
    ("no number here", None),
    ("####", None),
])
def test_extract_final_number(text, number):
    assert extract_final_number(text) == number


def test_exact_match_hand_computed():
    refs = ["step\n#### 72", "#### 1,000", "#### 5", "#### 3"]
    preds = [" 24+48=72\n#### 72.0", "so it costs $1000", "#### 6", "nothing"]
    assert exact_match(preds, refs) == pytest.approx(2 / 4)
    assert exact_match(["yes "], [" yes"]) == 1.0  # a reference without a number is compared as text


@pytest.mark.parametrize("name", sorted(TASKS))
def test_compute_metrics_reports_every_task_metric(name):
    task = TASKS[name]
    if task.kind == "causal-lm":
        preds, refs = ["#### 1", "#### 3"], ["#### 1", "#### 2"]
    elif task.kind == "regression":
        preds, refs = [[0.5], [1.5], [4.0], [3.0]], [0.0, 2.0, 5.0, 3.5]
    else:
        preds, refs = [0, 1, 1, 0], [0, 1, 0, 0]
    scores = compute_metrics(task, preds, refs)
    assert list(scores) == list(task.metrics) and all(isinstance(v, float) for v in scores.values())
    assert task.main_metric in scores


def test_compute_metrics_hand_computed():
    logits = np.array([[2.0, -1.0], [0.1, 0.3], [-1.0, 1.0], [3.0, 0.0]])  # argmax 0, 1, 1, 0
    refs = [0, 1, 0, 1]
    assert compute_metrics(get_task("mrpc"), logits, refs) == pytest.approx({"accuracy": 0.5, "f1": 0.5})
    assert compute_metrics(get_task("cola"), logits, refs) == pytest.approx({"matthews": 0.0, "accuracy": 0.5})
    stsb = compute_metrics(get_task("stsb"), [[1.0], [2.0], [3.0]], [1.0, 2.0, 3.0])
    assert stsb == pytest.approx({"pearson": 1.0, "spearman": 1.0})
    assert compute_metrics(get_task("gsm8k"), ["#### 4"], ["#### 4"]) == {"exact_match": 1.0}


def test_register_metric_and_get_metric():
    try:
        @register_metric("test_error_rate", higher_is_better=False)
        def error_rate(predictions, references):
            return 1.0 - accuracy(predictions, references)

        metric = get_metric("test_error_rate")
        assert metric.higher_is_better is False and metric.fn([1, 0], [1, 1]) == pytest.approx(0.5)
    finally:
        METRICS.pop("test_error_rate", None)
    with pytest.raises(ConfigError, match=r"--metric 'bleu' is not a known metric; known: accuracy"):
        get_metric("bleu")


def test_majority_baseline_is_the_constant_predictor_scored_on_dev() -> None:
    from layerwise.data.tasks import get_task
    from layerwise.data.task_metrics import majority_baseline

    mrpc = get_task("mrpc")
    got = majority_baseline(mrpc, [1, 1, 0, 1], [1, 0, 1, 1, 0])
    assert got["predictor"].startswith("always class 1")
    assert got["metrics"]["accuracy"] == pytest.approx(3 / 5)
    assert got["metrics"]["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2))  # precision 3/5, recall 1
    cola = majority_baseline(get_task("cola"), [0, 1, 1], [0, 1, 0])
    assert cola["metrics"]["matthews"] == pytest.approx(0.0)
    stsb = majority_baseline(get_task("stsb"), [1.0, 3.0], [0.5, 4.0])
    assert stsb["predictor"] == "always the training mean 2.0000"
    assert majority_baseline(get_task("gsm8k"), ["a"], ["b"]) is None


def test_eval_batches_sorted_by_length_give_each_example_its_own_logits(minilm, glue_dir, one_thread):
    """Dev batches hold examples sorted by length (less padding); the logits come back in example order. Each
    example's logits are those of file-order batches within fp32's own spread (float64 reference), and the loss
    batches pad fewer tokens than file order does (real MRPC pairs, the bundled MiniLM)."""
    import copy
    import dataclasses

    import torch

    from layerwise.data.collate import Collator, encode_examples
    from layerwise.data.load import load_task
    from layerwise.train.evaluate import _in_example_order, _loss_and_outputs, prepare_eval, run_eval
    from numerics import assert_within_fp32_spread

    model, tok = minilm.model, minilm.tokenizer
    data = load_task("mrpc", glue_dir / "MRPC")
    examples = data.dev[:40]
    evalset = prepare_eval(examples, data.task, tok, batch_size=8, max_length=128)
    assert sorted(evalset.order) == list(range(40)) and evalset.order != list(range(40))
    feats = encode_examples(examples, tok, data.task, 128)
    collate = Collator(tok, data.task)
    file_order = [collate(feats[s: s + 8]) for s in range(0, 40, 8)]
    padded = sum(b["input_ids"].numel() for b in evalset.loss_batches)
    assert padded < sum(b["input_ids"].numel() for b in file_order)

    def logits(m, batches, dtype):
        with torch.inference_mode():
            return torch.cat([m(**{k: v for k, v in b.items()}).logits.to(dtype) for b in batches])

    was = model.training
    model.eval()
    try:
        baseline = logits(model, file_order, torch.float32)
        reference = logits(copy.deepcopy(model).double(), file_order, torch.float64)
        with torch.inference_mode():
            _, outputs = _loss_and_outputs(model, evalset)
        got = _in_example_order(torch.cat(outputs).float(), evalset.order)
        assert_within_fp32_spread(got, baseline, reference, "logits in example order")
        # the metrics see the predictions in example order: labels set to each example's own argmax score 1.0
        own = [int(i) for i in reference.argmax(-1)]
        relabelled = [dataclasses.replace(e, label=y) for e, y in zip(examples, own)]
        scored = run_eval(model, prepare_eval(relabelled, data.task, tok, batch_size=8, max_length=128))
        assert scored["accuracy"] == 1.0
    finally:
        model.train(was)
