"""Task metrics, registered by name with their direction (``higher_is_better``).

Every metric takes ``(predictions, references)`` and returns a float in the metric's natural scale
(accuracy 0..1, correlations -1..1). Predictions are class indices for classification (2-D logits are
reduced with argmax by :func:`compute_metrics`), floats for regression and generated text for GSM8K.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from layerwise.runtime.errors import ConfigError

if TYPE_CHECKING:
    from layerwise.data.tasks import TaskSpec

__all__ = ["EvalMetric", "METRICS", "register_metric", "get_metric", "compute_metrics", "extract_final_number",
           "accuracy", "f1", "matthews", "pearson", "spearman", "exact_match", "majority_baseline"]


@dataclass(frozen=True)
class EvalMetric:
    """A named metric and its direction."""

    name: str
    """Registry name, as used in ``TaskSpec.metrics``."""
    fn: Callable[[Sequence, Sequence], float]
    """``fn(predictions, references) -> float``."""
    higher_is_better: bool = True
    """Direction used when comparing checkpoints."""


METRICS: dict[str, EvalMetric] = {}
"""Every registered metric by name."""


def register_metric(name: str, higher_is_better: bool = True) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn(predictions, references) -> float`` as metric ``name``."""

    def decorate(fn: Callable[[Sequence, Sequence], float]) -> Callable[[Sequence, Sequence], float]:
        assert name not in METRICS, f"metric {name!r} registered twice"
        METRICS[name] = EvalMetric(name, fn, higher_is_better)
        return fn

    return decorate


def get_metric(name: str) -> EvalMetric:
    """The metric registered as ``name``; unknown names raise ``ConfigError`` listing the known ones."""
    if name not in METRICS:
        raise ConfigError(f"--metric {name!r} is not a known metric; known: {', '.join(METRICS)}")
    return METRICS[name]


def _arrays(predictions: Sequence, references: Sequence) -> tuple[np.ndarray, np.ndarray]:
    p, r = np.asarray(predictions), np.asarray(references)
    if p.shape != r.shape or p.ndim != 1:
        raise ValueError(f"predictions {p.shape} and references {r.shape} must be 1-D of the same length")
    if p.size == 0:
        raise ValueError("cannot score an empty set of predictions")
    return p, r


@register_metric("accuracy")
def accuracy(predictions: Sequence, references: Sequence) -> float:
    """Fraction of predictions equal to their reference."""
    p, r = _arrays(predictions, references)
    return float(np.mean(p == r))


@register_metric("f1")
def f1(predictions: Sequence, references: Sequence) -> float:
    """Binary F1 of the positive class 1 (0.0 when there are no true positives)."""
    p, r = _arrays(predictions, references)
    tp = float(np.sum((p == 1) & (r == 1)))
    fp = float(np.sum((p == 1) & (r != 1)))
    fn = float(np.sum((p != 1) & (r == 1)))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


@register_metric("matthews")
def matthews(predictions: Sequence, references: Sequence) -> float:
    """Matthews correlation coefficient (multi-class form of Gorodkin 2004; binary MCC for 2 classes).

    Constant predictions or references make the denominator 0: the score is then 0.0, not NaN.
    """
    p, r = _arrays(predictions, references)
    classes, idx = np.unique(np.concatenate([r, p]), return_inverse=True)
    k, n = len(classes), len(r)
    confusion = np.zeros((k, k), dtype=np.float64)  # (true, predicted)
    np.add.at(confusion, (idx[:n], idx[n:]), 1.0)
    t, q = confusion.sum(axis=1), confusion.sum(axis=0)  # true and predicted counts per class; shape (k,)
    c, s = np.trace(confusion), float(n)
    cov = c * s - t @ q
    denom = np.sqrt(s * s - q @ q) * np.sqrt(s * s - t @ t)
    return 0.0 if denom == 0 else float(cov / denom)


def _correlation(kind: str, predictions: Sequence, references: Sequence) -> float:
    from scipy import stats

    p, r = _arrays(predictions, references)
    p, r = p.astype(np.float64), r.astype(np.float64)
    if len(p) < 2 or np.all(p == p[0]) or np.all(r == r[0]):
        return 0.0  # undefined for constant inputs; 0.0 keeps checkpoint comparison meaningful
    result = stats.pearsonr(p, r) if kind == "pearson" else stats.spearmanr(p, r)
    return float(result[0])


@register_metric("pearson")
def pearson(predictions: Sequence, references: Sequence) -> float:
    """Pearson correlation (0.0 when either side is constant)."""
    return _correlation("pearson", predictions, references)


@register_metric("spearman")
def spearman(predictions: Sequence, references: Sequence) -> float:
    """Spearman rank correlation (0.0 when either side is constant)."""
    return _correlation("spearman", predictions, references)


# A number not glued to a word or another number: '-3', '$1,000.50', '72' (not the '3' of 'x3' or '5-3').
_NUMBER = re.compile(r"(?<![\w.-])-?\$?\s?\d[\d,]*(?:\.\d+)?")


def _normalise_number(token: str) -> str:
    """'$1,000.50' -> '1000.5'; '72.0' -> '72'; '-3' -> '-3'."""
    s = token.replace("$", "").replace(",", "").replace(" ", "")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def extract_final_number(text: str) -> str | None:
    """The answer number of a GSM8K solution or generation, normalised (commas, '$', trailing '.0' removed).

    With '####' in the text: the first number after the first '####' (a model may keep generating after
    its answer); otherwise the last number in the text. ``None`` when there is no number.
    """
    if "####" in text:
        found = _NUMBER.findall(text.split("####", 1)[1])
        return _normalise_number(found[0]) if found else None
    found = _NUMBER.findall(text)
    return _normalise_number(found[-1]) if found else None


@register_metric("exact_match")
def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Fraction of generations whose final number equals the reference's number after '####'.

    References without a number are compared as whitespace-normalised text.
    """
    if len(predictions) != len(references) or not references:
        raise ValueError(f"need as many predictions ({len(predictions)}) as references ({len(references)}), >0")
    hits = 0
    for pred, ref in zip(predictions, references):
        want = extract_final_number(ref)
        if want is None:
            hits += " ".join(pred.split()) == " ".join(ref.split())
        else:
            hits += extract_final_number(pred) == want
    return hits / len(references)


def compute_metrics(task: TaskSpec, predictions: Sequence, references: Sequence) -> dict[str, float]:
    """Every metric of ``task`` (``task.metrics``) on ``predictions`` vs ``references``.

    Classification predictions may be class indices or 2-D logits/probabilities (argmax is taken);
    regression predictions of shape (n, 1) are flattened.
    """
    if task.kind != "causal-lm":
        p = np.asarray(predictions)
        if task.kind == "classification" and p.ndim == 2:
            p = p.argmax(axis=-1)
        elif task.kind == "regression" and p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        predictions, references = p, np.asarray(references)
    return {name: get_metric(name).fn(predictions, references) for name in task.metrics}


def majority_baseline(task: "TaskSpec", train_labels: Sequence, dev_labels: Sequence) -> dict | None:
    """What a model that ignores its input scores on dev: the most frequent training class for classification
    (ties: the lower class index), the training mean for regression (a constant, so its correlations are
    undefined: None); ``None`` for causal LM. ``{"predictor": ..., "metrics": {name: value or None}}``."""
    import math
    import warnings
    from collections import Counter

    if task.kind == "causal-lm" or not train_labels or not dev_labels:
        return None
    if task.kind == "classification":
        counts = Counter(int(y) for y in train_labels)
        value: float = min(counts, key=lambda c: (-counts[c], c))
        predictor = f"always class {value} ({counts[value]} of {len(train_labels)} training labels)"
    else:
        value = float(np.mean(np.asarray(train_labels, dtype=float)))
        predictor = f"always the training mean {value:.4f}"
    predictions = np.full(len(dev_labels), value)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # a constant prediction's correlation is 0/0
        metrics = compute_metrics(task, predictions, list(dev_labels))
    return {"predictor": predictor,
            "metrics": {k: (float(v) if v is not None and math.isfinite(float(v)) else None)
                        for k, v in metrics.items()}}
