"""Readable views of a stability study: stability.md tables and stability.png (Jaccard against k)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["render_stability_md", "render_stability_png", "write_stability"]


def _corr(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_stability_md(result: dict[str, Any]) -> str:
    """Act-LoRA-style tables: seed stability per metric and task, task agreement, score correlations."""
    lines = [f"# Ranking stability: {result['model']}", "", f"- calibration seeds: {result['seeds']}", ""]
    for task, entry in result["tasks"].items():
        L = entry["layers"]
        ks = [k for k in (1, 2, 3, L // 2, L) if 1 <= k <= L]
        ks = sorted(set(ks))
        lines += [f"## {task} ({L} layers)", "",
                  "| metric | Kendall tau (mean ± std) | " + " | ".join(f"Jaccard top-{k}" for k in ks) + " |",
                  "|---|---:|" + "---:|" * len(ks)]
        for name, s in entry["metrics"].items():
            jac = " | ".join(f"{s['top_k_jaccard'].get(str(k), float('nan')):.2f}" for k in ks)
            lines.append(f"| {name} | {s['kendall_tau_mean']:.3f} ± {s['kendall_tau_std']:.3f} | {jac} |")
        if "correlation" in entry:
            lines += ["", f"Correlation with the measured score of adapting one layer at a time "
                      f"(scores: {', '.join(f'{x:.3f}' for x in entry['ablation_scores'])}):", "",
                      "| metric | Pearson | Spearman | Kendall | cosine |", "|---|---:|---:|---:|---:|"]
            for name, c in entry["correlation"].items():
                lines.append("| " + " | ".join([name] + [_corr(c[k]) for k in ("pearson", "spearman", "kendall",
                                                                                 "cosine")]) + " |")
            if len(set(entry["ablation_scores"])) == 1:
                lines += ["", "Every single-layer run reached the same score, so no correlation is defined: train "
                          "longer (`--ablation-steps`)."]
        lines.append("")
    if result.get("task_agreement"):
        lines += _task_agreement_lines(result["task_agreement"], result.get("needs", {}))
    return "\n".join(lines) + "\n"


def _task_agreement_lines(agreement: dict[str, dict[str, float]], needs: dict[str, str]) -> list[str]:
    """One row per metric: what it reads and its Kendall tau for every pair of tasks. Data-free metrics
    (``needs: weights``/``static``) agree by construction (1.00): the gap to them is what the data buys."""
    pairs = list(next(iter(agreement.values())))
    out = ["## Agreement across tasks (Kendall tau of seed-averaged importance)", "",
           "| metric | reads | " + " | ".join(pairs) + " |", "|---|---|" + "---:|" * len(pairs)]
    for name, values in agreement.items():
        need = needs.get(name, "?")
        reads = {"weights": "weights only", "static": "shapes only"}.get(need, f"data ({need})")
        out.append(f"| {name} | {reads} | " + " | ".join(f"{values[p]:.2f}" for p in pairs) + " |")
    return out + ["", "Metrics that read only the weights or shapes ignore the data, so they agree across tasks "
                  "by construction (1.00)."]


def render_stability_png(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Top-k Jaccard against k for every metric, one panel per task."""
    from layerwise.runtime.figures import new_figure, save_png

    tasks = list(result["tasks"])
    fig = new_figure((5 * len(tasks), 3.6))
    axes = fig.subplots(1, len(tasks), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for name, s in result["tasks"][task]["metrics"].items():
            ks = sorted(int(k) for k in s["top_k_jaccard"])
            ax.plot(ks, [s["top_k_jaccard"][str(k)] for k in ks], marker="o", ms=3, label=name)
        ax.set_title(f"{task}: top-k Jaccard across seeds")
        ax.set_xlabel("k")
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=7)
    return save_png(fig, path)


def write_stability(out_dir: str | os.PathLike, result: dict[str, Any]) -> dict[str, Path]:
    from layerwise.runtime.io import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    return {"json": atomic_write_json(out / "stability.json", result),
            "md": atomic_write_text(out / "stability.md", render_stability_md(result)),
            "png": render_stability_png(result, out / "stability.png")}
