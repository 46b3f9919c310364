"""The ``layerwise stability`` study: how stable each metric's layer ranking is across calibration seeds
(pairwise Kendall tau, top-k Jaccard for every k; Act-LoRA Tables 9-10), how much tasks agree, and, with
the ablation run, how each metric correlates with the measured score of adapting one layer at a time
(Pearson, Spearman, Kendall, cosine; Act-LoRA Table 11). Finished cards and ablation runs are reused."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from layerwise.runtime.io import slug
from layerwise.settings import Calibration, DataSource, ModelSource, ProbeSettings, SelectionChoice

__all__ = ["seed_agreement", "task_agreement", "score_correlation", "stability_study", "STUDY_METRICS"]

STUDY_METRICS = "default,weights"
"""The study's metrics unless told otherwise: the card's defaults and the data-free weight metrics (which agree
across seeds and tasks by construction, so the tables show what the data-driven metrics add)."""


def seed_agreement(rankings: Sequence[Sequence[float]], higher_is_better: bool = True) -> dict[str, Any]:
    """Pairwise agreement of per-seed score vectors (n_seeds, L): Kendall tau mean/std, Jaccard per k."""
    from layerwise.card.stability import kendall_tau, top_k_jaccard

    pairs = list(itertools.combinations(range(len(rankings)), 2))
    L = len(rankings[0])
    taus = [kendall_tau(rankings[a], rankings[b]) for a, b in pairs]
    jac = {k: float(np.mean([top_k_jaccard(rankings[a], rankings[b], k, higher_is_better) for a, b in pairs]))
           for k in range(1, L + 1)} if pairs else {}
    return {"kendall_tau_mean": float(np.mean(taus)) if taus else float("nan"),
            "kendall_tau_std": float(np.std(taus)) if taus else float("nan"),
            "top_k_jaccard": {str(k): v for k, v in jac.items()}, "seeds": len(rankings), "pairs": len(pairs)}


def task_agreement(per_task: dict[str, Sequence[float]]) -> dict[str, float]:
    """Kendall tau between the (seed-averaged) scores of every pair of tasks."""
    from layerwise.card.stability import kendall_tau

    return {f"{a} vs {b}": kendall_tau(per_task[a], per_task[b]) for a, b in itertools.combinations(per_task, 2)}


def score_correlation(metric_values: Sequence[float], scores: Sequence[float]) -> dict[str, float | None]:
    """How a metric's per-layer values track the measured per-layer scores (Act-LoRA Table 11).

    ``None`` everywhere when either side is constant (e.g. every single-layer run stayed at the majority
    class): a correlation is then undefined, not zero."""
    from scipy.stats import kendalltau, pearsonr, spearmanr

    x, y = np.asarray(metric_values, float), np.asarray(scores, float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": None, "spearman": None, "kendall": None, "cosine": None}
    cos = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
    return {"pearson": float(pearsonr(x, y).statistic), "spearman": float(spearmanr(x, y).statistic),
            "kendall": float(kendalltau(x, y).statistic), "cosine": cos}


def _cards_for_task(model: ModelSource, data: DataSource, seeds: Sequence[int], calibration: Calibration,
                    probe: ProbeSettings, out: Path) -> list[Any]:
    from dataclasses import replace

    from layerwise.card.layer_card import LayerCard
    from layerwise.workflows.card import make_card

    cards = []
    for seed in seeds:
        folder = out / "cards" / f"{slug(data.task)}-seed{seed}"
        if (folder / "card.json").exists():
            cards.append(LayerCard.load(folder))
            continue
        card, _ = make_card(model, data, folder, calibration=replace(calibration, seed=seed), probe=probe,
                            overwrite=True, plots=False, show_progress=False)
        cards.append(card)
    return cards




def _ablation_scores(model: ModelSource, data: DataSource, num_layers: int, train_config: Any,
                     out: Path) -> list[float]:
    """Dev score of LoRA on each single layer (same steps and seed for every layer; at the validation split's
    best step when the data hold one out, else at the end)."""
    from layerwise.evaluate.report import collect_run
    from layerwise.workflows.train import train_job

    scores = []
    for i in range(num_layers):
        folder = out / "ablation" / slug(data.task) / f"layer{i}"
        if not (folder / "metrics.json").exists():
            train_job(model, data, folder, train_config=train_config,
                      selection=SelectionChoice("manual", layers=str(i)), overwrite=True, show_progress=False)
        scores.append(float(collect_run(folder, f"layer{i}")["score"]))
    return scores


def stability_study(model: ModelSource | str, tasks: Sequence[DataSource | tuple[str, str | None]],
                    out: str | os.PathLike, *, seeds: Sequence[int] = range(10), calibration: Calibration | None = None,
                    metrics: str | None = None, ablation_config: Any = None,
                    settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the study into ``out`` (cards/, ablation/, stability.json/md/png, config.yaml with ``settings``)
    and return its results. ``tasks`` are data sources, or (task, data) pairs."""
    from layerwise.runtime.io import write_settings
    from layerwise.workflows.prepare import model_source

    out_dir = Path(out)
    model = model_source(model)
    calibration = calibration or Calibration()
    sources = [t if isinstance(t, DataSource) else DataSource(t[0], t[1], max_length=calibration.max_length)
               for t in tasks]
    if settings is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_settings(out_dir, settings)
    probe = ProbeSettings(metrics=metrics or STUDY_METRICS)
    result: dict[str, Any] = {"schema_version": 1, "model": model.model, "seeds": list(seeds), "tasks": {}}
    means: dict[str, dict[str, list[float]]] = {}
    for data in sources:
        task = data.task
        cards = _cards_for_task(model, data, seeds, calibration, probe, out_dir)
        per_metric = {}
        for name in cards[0].metric_names:
            result.setdefault("needs", {})[name] = cards[0].metrics[name]["needs"]
            values = [c.importance(name) for c in cards]
            per_metric[name] = seed_agreement(values)
            means.setdefault(name, {})[task] = np.mean(values, 0).tolist()
        entry: dict[str, Any] = {"layers": cards[0].num_layers, "metrics": per_metric}
        if ablation_config is not None:
            scores = _ablation_scores(model, data, cards[0].num_layers, ablation_config, out_dir)
            entry["ablation_scores"] = scores
            entry["correlation"] = {n: score_correlation(means[n][task], scores) for n in per_metric}
        result["tasks"][task] = entry
    result["task_agreement"] = {n: task_agreement(v) for n, v in means.items() if len(v) > 1}
    result["mean_importance"] = means
    return result
