"""The majority-class baseline on the dev examples a run actually scores, and whether a score is no better."""

from __future__ import annotations

from typing import Any

__all__ = ["scored_majority", "at_or_below"]


def scored_majority(task_data: Any, max_examples: int | None = None) -> dict[str, Any] | None:
    """:func:`~layerwise.data.task_metrics.majority_baseline` of ``task_data`` (a loaded
    :class:`~layerwise.data.TaskData`) on the dev examples an evaluation with ``--eval-max-examples``
    ``max_examples`` scores (the same seeded sample), with ``dev_examples`` (scored) and ``dev_total``; None for
    causal LM."""
    from layerwise.data.task_metrics import majority_baseline
    from layerwise.train.evaluate import eval_sample

    scored = eval_sample(task_data.dev, max_examples)
    out = majority_baseline(task_data.task, [e.label for e in task_data.train], [e.label for e in scored])
    if out is None:
        return None
    return {**out, "dev_examples": len(scored), "dev_total": len(task_data.dev)}


def at_or_below(score: float | None, majority: dict[str, Any] | None, metric: str) -> bool:
    """Whether ``score`` (of ``metric``) is at or below the majority baseline's (False when either is unknown)."""
    base = None if majority is None else (majority.get("metrics") or {}).get(metric)
    return score is not None and base is not None and score <= base + 1e-12
