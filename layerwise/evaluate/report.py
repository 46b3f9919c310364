"""The comparison report of ``layerwise run``: each trained adapter against uniform LoRA, as ratios
(in the manner of Act-LoRA's trade-off table), written as report.json, report.md and report.png."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

__all__ = ["REPORT_SCHEMA", "collect_run", "compare", "freeze_lines", "render_report_md", "render_report_png",
           "write_report"]

REPORT_SCHEMA = 1
PHASES = ("forward", "backward", "optimizer")


def collect_run(run_dir: str | os.PathLike, label: str) -> dict[str, Any]:
    """One trained run's figures from its metrics.json and selection.json.

    The score is the dev score of the final weights, or, when a validation split chose the checkpoint, the dev
    score at the step the validation split chose (never a step chosen by the dev set itself)."""
    d = Path(run_dir)
    metrics = json.loads((d / "metrics.json").read_text())
    selection = json.loads((d / "selection.json").read_text()) if (d / "selection.json").exists() else {}
    main = metrics["main_metric"]
    on_validation = metrics.get("selected_on") == "validation" and metrics.get("best") is not None
    scored = (metrics.get("best") if on_validation else metrics.get("final")) or {}
    return {
        "label": label, "dir": str(d), "main_metric": main,
        "score": scored.get(main), "metrics": scored, "scored_at": metrics.get("best_step") if on_validation
        else metrics["steps"], "selected_on": metrics.get("selected_on", "dev"),
        "validation": metrics.get("best_validation"),
        "best": metrics.get("best"), "trainable_params": metrics["trainable_params"],
        "train_seconds": metrics["train_seconds"], "steps": metrics["steps"],
        "phase_seconds": {p: metrics["phase_totals"].get(f"{p}_s", 0.0) for p in PHASES},
        "peak_memory": metrics["peak_memory"], "memory_kind": metrics.get("memory_kind"),
        "layers": (selection.get("selection") or {}).get("layers"),
        "selection": selection.get("selection"), "adapter": selection.get("adapter"),
        "prefix_cache": metrics.get("prefix_cache"),
        "freeze": metrics.get("freeze"),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b in (None, 0) else a / b


def compare(runs: Sequence[dict[str, Any]], baseline: dict[str, Any]) -> list[dict[str, Any]]:
    """Each run with its ratios to the baseline (score, parameters, time, each phase, peak memory)."""
    rows = []
    for r in runs:
        ratios = {"score": _ratio(r["score"], baseline["score"]),
                  "trainable_params": _ratio(r["trainable_params"], baseline["trainable_params"]),
                  "train_seconds": _ratio(r["train_seconds"], baseline["train_seconds"]),
                  "peak_memory": _ratio(r["peak_memory"], baseline["peak_memory"])}
        ratios.update({f"{p}_seconds": _ratio(r["phase_seconds"][p], baseline["phase_seconds"][p]) for p in PHASES})
        rows.append({**r, "vs_uniform": ratios})
    return rows


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def render_report_md(rows: Sequence[dict[str, Any]], context: dict[str, Any]) -> str:
    """Markdown: one table of absolute figures, one of ratios to uniform LoRA."""
    main = rows[0]["main_metric"]
    lines = [f"# layerwise run: {context.get('model')} on {context.get('task')}", "",
             f"- selection: {context.get('selection')}",
             f"- same steps ({rows[0]['steps']}), seed and data for every row; time is training only (no eval)"
             + (f"; trained {context['trained']}" if context.get("trained") else ""),
             f"- memory: {rows[0].get('memory_kind')} peak per step", *_baseline_lines(rows, context), "",
             f"| run | layers | {main} | trainable params | train s | forward s | backward s | optimizer s | peak MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ph = r["phase_seconds"]
        layers = ",".join(str(i) for i in r["layers"]) if r.get("layers") is not None else "-"
        score = "n/a" if r["score"] is None else f"{r['score']:.4f}"
        lines.append(f"| {r['label']} | {layers} | {score} | {r['trainable_params']:,} | {r['train_seconds']:.1f} | "
                     f"{ph['forward']:.1f} | {ph['backward']:.1f} | {ph['optimizer']:.1f} | "
                     f"{r['peak_memory'] / 2**20:.0f} |")
    lines += ["", "Relative to uniform LoRA:", "",
              f"| run | {main} | trainable params | train time | forward | backward | optimizer | peak memory |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        v = r["vs_uniform"]
        lines.append(f"| {r['label']} | {_pct(v['score'])} | {_pct(v['trainable_params'])} | "
                     f"{_pct(v['train_seconds'])} | {_pct(v['forward_seconds'])} | {_pct(v['backward_seconds'])} | "
                     f"{_pct(v['optimizer_seconds'])} | {_pct(v['peak_memory'])} |")
    return "\n".join(lines + _prefix_cache_lines(rows) + freeze_lines(rows)) + "\n"


def freeze_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Each run's freezing schedule (``--freeze``): which block froze at which step, the trainable depth at the
    end, the time per epoch, the cache fills (part of the train time) and the card's Kendall tau."""
    runs = [(r["label"], r.get("freeze")) for r in rows if r.get("freeze")]
    if not runs:
        return []
    lines = ["", "Freezing schedule (cache fills are part of the train time above):", ""]
    for label, f in runs:
        froze = ", ".join(f"{b}@{s}" for b, s in f["freeze_step"].items() if s is not None) or "none"
        epochs = ", ".join(f"{e:.1f}" for e in f.get("epoch_seconds") or []) or "n/a"
        tau = "" if f.get("kendall_tau") is None else f"; Kendall tau, card ({f['metric']}) vs observed order: " \
                                                       f"{f['kendall_tau']:.2f}"
        lines.append(f"- {label}: --freeze {f['mode']}; frozen (block@step) {froze}; "
                     f"{len(f['blocks']) - f['frozen']} of {len(f['blocks'])} adapted blocks train at the end; "
                     f"seconds per epoch {epochs}; cache fills {f['cache_fill_seconds']:.1f} s{tau}")
    return lines


def _baseline_lines(rows: Sequence[dict[str, Any]], context: dict[str, Any]) -> list[str]:
    """The dev set's size, the majority-class baseline, and a warning for each run at or below it."""
    from layerwise.evaluate.baseline import at_or_below

    majority, main = context.get("majority"), rows[0]["main_metric"]
    if not majority:
        return []
    lines = [f"- dev set: {majority['dev_examples']:,} examples scored (of {majority['dev_total']:,})",
             f"- majority-class baseline ({majority['predictor']}): {main} "
             f"{_score((majority.get('metrics') or {}).get(main))}"]
    base = (majority.get("metrics") or {}).get(main)
    for r in rows:
        if at_or_below(r["score"], majority, main):
            lines.append(f"- **warning: {r['label']} scores at or below the majority-class baseline ({main} "
                         f"{r['score']:.4f} <= {base:.4f}): it has not learned the task; train longer (--steps) "
                         "or check --lr**")
    return lines


def _score(value: float | None) -> str:
    return "n/a (undefined for a constant prediction)" if value is None else f"{value:.4f}"


def _prefix_cache_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Whether each run used the frozen-prefix cache: size and build time (not in train time), or why not."""
    caches = [(r["label"], r.get("prefix_cache")) for r in rows]
    if not any(c for _, c in caches):
        return []
    lines = ["", "Frozen-prefix cache (its build time is not part of the train time above):", ""]
    for label, c in caches:
        if not c:
            continue
        if c["used"]:
            how = "reused from disk" if c["reused"] else f"built in {c['build_seconds']:.1f} s"
            lines.append(f"- {label}: {c['mode']}, input of block {c['layer']}, {c['dtype']}, "
                         f"{c['bytes'] / 2**20:.1f} MiB, {how}")
        else:
            lines.append(f"- {label}: off ({c['reason']})")
    return lines


def render_report_png(rows: Sequence[dict[str, Any]], path: str | os.PathLike,
                      majority: dict[str, Any] | None = None) -> Path:
    """Score (with the majority-class baseline drawn), trainable parameters and stacked phase times per run:
    linear scales from 0, each bar labelled with its value."""
    from layerwise.runtime.figures import new_figure, save_png

    labels = [r["label"] for r in rows]
    main = rows[0]["main_metric"]
    fig = new_figure((12, 3.8))
    axes = fig.subplots(1, 3)
    scores = [r["score"] or 0.0 for r in rows]
    bars = axes[0].bar(labels, scores, color="tab:green")
    axes[0].bar_label(bars, labels=[f"{v:.4f}" for v in scores], fontsize=8)
    base = None if majority is None else (majority.get("metrics") or {}).get(main)
    if base is not None:
        axes[0].axhline(base, color="tab:red", linestyle="--", linewidth=1)
        axes[0].text(len(rows) - 0.5, base, f"majority class {base:.4f}", color="tab:red", fontsize=8,
                     ha="right", va="bottom")
    top = max([*scores, base or 0.0, 1e-9])
    axes[0].set_ylim(0, top * 1.15)
    axes[0].set_title(f"dev {main}")
    params = [r["trainable_params"] for r in rows]
    bars = axes[1].bar(labels, params, color="tab:purple")
    axes[1].bar_label(bars, labels=[f"{p:,}" for p in params], fontsize=8)
    axes[1].set_ylim(0, max([*params, 1]) * 1.15)
    axes[1].set_title("trainable parameters")
    bottom = [0.0] * len(rows)
    for phase, color in zip(PHASES, ("tab:blue", "tab:orange", "tab:gray")):
        vals = [r["phase_seconds"][phase] for r in rows]
        axes[2].bar(labels, vals, bottom=bottom, label=phase, color=color)
        bottom = [b + v for b, v in zip(bottom, vals)]
    totals = axes[2].bar(labels, [0.0] * len(rows), bottom=bottom)  # invisible: carries the totals' labels
    axes[2].bar_label(totals, labels=[f"{b:.1f} s" for b in bottom], fontsize=8)
    axes[2].set_ylim(0, max([*bottom, 1e-9]) * 1.2)
    axes[2].set_title("training seconds by phase")
    axes[2].legend(fontsize=8)
    for ax in axes:
        ax.tick_params(axis="x", labelsize=8)
    return save_png(fig, path)


def write_report(out_dir: str | os.PathLike, rows: Sequence[dict[str, Any]], context: dict[str, Any]) -> dict[str, Path]:
    """report.json, report.md and report.png, atomically."""
    from layerwise.runtime.io import atomic_write_json, atomic_write_text

    out = Path(out_dir)
    return {"json": atomic_write_json(out / "report.json", {"schema_version": REPORT_SCHEMA, "context": context,
                                                             "runs": list(rows)}),
            "md": atomic_write_text(out / "report.md", render_report_md(rows, context)),
            "png": render_report_png(rows, out / "report.png", context.get("majority"))}
