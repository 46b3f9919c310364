"""Aggregation of a bench's cells (pure): mean and spread over seeds, and each method against the baseline."""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from layerwise.bench.methods import BASELINE

__all__ = ["summarize", "aggregate", "relative_to", "collect_cell", "CELL_FILE"]

CELL_FILE = "bench_cell.json"
"""Per-cell record of how it was trained (method, seed, resumed, wall time)."""


def summarize(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of the values that are not None."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "n": len(xs)}


def _method_row(method: str, cells: Sequence[dict[str, Any]], model_params: int | None) -> dict[str, Any]:
    from layerwise.evaluate.report import PHASES

    names = list(dict.fromkeys(k for c in cells for k in (c.get("metrics") or {})))
    mean_params = summarize([c["trainable_params"] for c in cells])["mean"]
    params = None if mean_params is None else int(round(mean_params))  # the same for every seed
    return {
        "method": method, "seeds": [c["seed"] for c in cells], "main_metric": cells[0]["main_metric"],
        "layers": cells[0].get("layers"), "score": summarize([c["score"] for c in cells]),
        "metrics": {n: summarize([(c.get("metrics") or {}).get(n) for c in cells]) for n in names},
        "trainable_params": params,
        "params_share": params / model_params if params is not None and model_params else None,
        "train_seconds": summarize([c["train_seconds"] for c in cells]),
        "phase_seconds": {p: summarize([c["phase_seconds"][p] for c in cells]) for p in PHASES},
        "peak_memory": summarize([c["peak_memory"] for c in cells]),
        "memory_kind": cells[0].get("memory_kind"), "steps": summarize([c.get("steps") for c in cells]),
        "scored_at": summarize([c.get("scored_at") for c in cells]),
        "selected_on": cells[0].get("selected_on", "dev"),
    }


def aggregate(cells: Sequence[dict[str, Any]], model_params: int | None = None,
              inference: dict[str, dict[str, Any]] | None = None, baseline: str = BASELINE) -> list[dict[str, Any]]:
    """One row per method (in the order of ``cells``): mean/std over seeds of every figure, the parameter share
    of the model, the method's inference figures, and ``vs_baseline`` (:func:`relative_to`)."""
    by_method: dict[str, list[dict[str, Any]]] = {}
    for cell in cells:
        by_method.setdefault(cell["method"], []).append(cell)
    rows = [_method_row(m, sorted(cs, key=lambda c: c["seed"]), model_params) for m, cs in by_method.items()]
    for row in rows:
        row["inference"] = (inference or {}).get(row["method"])
    base = next((r for r in rows if r["method"] == baseline), None)
    return [{**r, "vs_baseline": relative_to(r, base) if base is not None else None} for r in rows]


def _pct_of(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else 100.0 * a / b


def relative_to(row: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """``row`` against the baseline row: the score difference in the metric's own units (``score_diff``; a
    percentage of a score near zero says nothing) and in % of the baseline's score, and time, each phase,
    peak memory and trainable parameters as % of the baseline's (100 = the same)."""
    s, b = row["score"]["mean"], base["score"]["mean"]
    change = None if s is None or b in (None, 0) else 100.0 * (s - b) / abs(b)
    return {"score_diff": None if s is None or b is None else s - b, "score_change_pct": change,
            "time_pct": _pct_of(row["train_seconds"]["mean"], base["train_seconds"]["mean"]),
            "phase_pct": {p: _pct_of(v["mean"], base["phase_seconds"][p]["mean"])
                          for p, v in row["phase_seconds"].items()},
            "memory_pct": _pct_of(row["peak_memory"]["mean"], base["peak_memory"]["mean"]),
            "params_pct": _pct_of(row["trainable_params"], base["trainable_params"])}


def collect_cell(cell_dir: str | os.PathLike, method: str, seed: int) -> dict[str, Any]:
    """One finished cell's raw figures (``layerwise.evaluate.report.collect_run``) with its method, seed and
    wall time."""
    from layerwise.evaluate.report import collect_run

    d = Path(cell_dir)
    raw = collect_run(d, method)
    extra = json.loads((d / CELL_FILE).read_text()) if (d / CELL_FILE).exists() else {}
    return {**raw, "method": method, "seed": int(seed), "wall_seconds": extra.get("wall_seconds")}
