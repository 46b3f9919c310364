"""Readable views of a Layer Card: a Markdown table and a PNG (heatmap + cumulative-importance curves)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["render_markdown", "render_png", "normalised_matrix"]


def _fmt(v: float | None) -> str:
    if v is None:
        return "undefined"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e4 or a < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


def _statistics_line(p: dict) -> list[str]:
    """How the (d x d) statistics were kept (``layerwise.card.probe.plan``): a line only when not exact in one pass."""
    plan = p.get("stat_plan")
    if not plan or (plan.get("passes", 1) == 1 and all(v.get("representation") == "exact"
                                                        for v in plan.get("statistics", {}).values())):
        return []
    parts = [f"{name}: {v['representation']}" + (f" (k={v['shape'][0]})" if v["representation"] != "exact" else "")
             for name, v in plan.get("statistics", {}).items()]
    bounds = [f"{name} within {b['error_bound']:.3g} ({b.get('error_kind', '')}, delta {b.get('delta')})"
              for name, b in p.get("metric_statistics", {}).items() if b.get("error_bound")]
    return [f"- statistics: {', '.join(parts)}; {plan['passes']} pass(es) over the batches, "
            f"{plan['stat_bytes'] / 2**20:.0f} MiB of {plan['max_stat_memory'] / 2**20:.0f} MiB (--max-stat-memory)"
            + (f"; {'; '.join(bounds)}" if bounds else "")]


def render_markdown(card: Any) -> str:
    """The card as Markdown: provenance, a per-layer table (value and rank), cumulative and stability tables."""
    m, d, p = card.model, card.data, card.probe
    lines = [
        f"# Layer Card: {m.get('name')}", "",
        f"- model: {m.get('name')} ({m.get('model_type')}, {m.get('parameters', 0) / 1e6:.1f}M parameters, "
        f"config {m.get('config_hash')})",
        _data_line(d),
        f"- probe: {p.get('seconds', 0):.1f} s, peak memory {p.get('peak_memory', 0) / 2**20:.0f} MiB, "
        f"{p.get('batches')} batches, {p.get('tokens')} tokens"
        + (f"; weight spectra {p['weights_seconds']:.1f} s ({p.get('weights_modules')} SVDs)"
           if "weights_seconds" in p else ""),
        *_statistics_line(p),
        f"- schema {card.schema_version}, created {card.created}", "",
        "## Per-layer values (rank: 1 = most important)", "",
    ]
    names = card.metric_names
    lines.append("| layer | " + " | ".join(names) + " |")
    lines.append("|---:|" + "---:|" * len(names))
    for i in range(card.num_layers):
        cells = [f"{_fmt(card.metrics[n]['values'][i])} ({card.metrics[n]['ranks'][i]})" for n in names]
        lines.append(f"| {i} | " + " | ".join(cells) + " |")
    lines += ["", "## Metrics", "", "| metric | needs | higher is better | top layers | stability (bootstrap "
              "Kendall tau) | description |", "|---|---|---|---|---|---|"]
    for n in names:
        e = card.metrics[n]
        top = ", ".join(str(i) for i in card.order(n)[:5])
        lines.append(f"| {n} | {e['needs']} | {'yes' if e['higher_is_better'] else 'no'} | {top} | "
                     f"{_stability_text(e.get('stability'))} | {e['description']} |")
    lines += _cumulative_lines(card)
    for note in card.notes:
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


def _data_line(d: dict) -> str:
    if d.get("task") is None:
        return "- data: none (data-free metrics only: they read the weights)"
    return (f"- data: {d.get('task')} from {d.get('source')}; {d.get('samples')} samples, seed {d.get('seed')}, "
            f"batch {d.get('batch_size')}, max length {d.get('max_length')}, pooling {d.get('pooling')}")


def _stability_text(s: dict | None) -> str:
    if not s:
        return "n/a"
    if s.get("deterministic"):
        return "deterministic"
    tau = s.get("kendall_tau_mean")
    if tau is None or tau != tau:
        n = s.get("n_batches")
        from layerwise.card.stability import MIN_STABILITY_BATCHES

        return ("n/a (one batch)" if n == 1 else f"n/a ({n} batches; needs {MIN_STABILITY_BATCHES})" if n
                else "n/a")
    return f"{tau:.2f} ± {s['kendall_tau_std']:.2f} (top-{s['top_k']} Jaccard {s['top_k_jaccard_mean']:.2f})"


def _cumulative_lines(card: Any) -> list[str]:
    rows = [(n, e["cumulative"]) for n, e in card.metrics.items() if e.get("cumulative")]
    if not rows:
        return []
    levels = list(rows[0][1])
    out = ["", "## Cumulative importance: fewest top layers reaching a share of the total", "",
           "| metric | " + " | ".join(f"{p}%" for p in levels) + " |", "|---|" + "---:|" * len(levels)]
    for n, table in rows:
        out.append(f"| {n} | " + " | ".join(str(table[p]) for p in levels) + " |")
    return out + [""]


def normalised_matrix(card: Any) -> tuple[list[str], list[list[float]]]:
    """Metrics x layers, each row scaled to [0, 1] with 1 = most important (lower-is-better flipped)."""
    names, rows = [], []
    for n in card.metric_names:
        v = card.importance(n)
        lo, hi = min(v), max(v)
        rows.append([(x - lo) / (hi - lo) if hi > lo else 0.5 for x in v])
        names.append(n)
    return names, rows


CELL_VALUES_MAX_LAYERS = 48
"""card.png writes each cell's value when the model has at most this many layers (more would not be legible)."""


def render_png(card: Any, path: str | os.PathLike) -> Path:
    """Heatmap of normalised metrics per layer, and cumulative-importance curves, written atomically."""
    from layerwise.runtime.figures import new_figure, save_png

    names, rows = normalised_matrix(card)
    L = card.num_layers
    fig = new_figure((max(10, 0.35 * L + 6), 0.45 * len(names) + 2.5))
    ax1, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [max(L, 6), 6]})
    im = ax1.imshow(rows, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    ax1.set_yticks(range(len(names)), names)
    ax1.set_xticks(range(L), [str(i) for i in range(L)], fontsize=7 if L > 16 else 9)
    ax1.set_xlabel("layer")
    ax1.set_title(f"{card.model.get('name')}: importance per layer, scaled per metric "
                  "(1 = that metric's most important layer, 0 = its least)", fontsize=9)
    bar = fig.colorbar(im, ax=ax1, fraction=0.03)
    bar.set_label("scaled importance (1 = most important)", fontsize=8)
    if L <= CELL_VALUES_MAX_LAYERS:  # the value in each cell, so no colour has to be read off the bar
        for r, row in enumerate(rows):
            for c, v in enumerate(row):
                ax1.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=6 if L > 12 else 8,
                         color="black" if v > 0.6 else "white")
    for n in names:
        if card.metrics[n].get("cumulative"):
            imp = sorted(card.importance(n), reverse=True)
            total = sum(imp) or 1.0
            acc, ys = 0.0, [0.0]
            for x in imp:
                acc += x
                ys.append(acc / total)
            ax2.plot(range(L + 1), ys, label=n)
    ax2.axhline(0.9, color="grey", lw=0.6, ls="--")
    ax2.set_xlabel("top layers kept")
    ax2.set_ylabel("share of total importance")
    ax2.set_title("cumulative importance")
    ax2.legend(fontsize=7)
    return save_png(fig, path)
