"""Readable views of a bench (``layerwise bench``): bench.md tables in the manner of Act-LoRA's Tables 4-7 and
La-LoRA's Table 13, and bench_*.png plots, all written atomically next to bench.json."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

__all__ = ["render_bench_md", "plot_score_vs_params", "plot_phases", "plot_memory", "plot_k_sweep", "k_sweep",
           "write_bench"]

_PHASES = ("forward", "backward", "optimizer")
_TOP_K = re.compile(r"^actnorm-top(\d+)$")


def _mean(stat: dict[str, Any] | None) -> float | None:
    return None if stat is None else stat.get("mean")


def _ms(stat: dict[str, Any] | None, digits: int = 4) -> str:
    """``mean ± std`` of a summary, or n/a."""
    if stat is None or stat.get("mean") is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _num(x: float | None, fmt: str = ".1f", suffix: str = "") -> str:
    return "n/a" if x is None else f"{x:{fmt}}{suffix}"


def _mib(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 2**20:.0f}"


def _layers(row: dict[str, Any]) -> str:
    layers = row.get("layers")
    return "-" if layers is None else ",".join(map(str, layers))


def _steps(r: dict[str, Any]) -> str:
    """Steps trained / step scored (means over seeds)."""
    steps, at = r.get("steps"), r.get("scored_at")
    steps = _mean(steps) if isinstance(steps, dict) else steps
    at = _mean(at) if isinstance(at, dict) else at
    return f"{_num(steps, '.0f')} / {_num(at, '.0f')}"


def _training_table(rows: Sequence[dict[str, Any]], main: str) -> list[str]:
    lines = [f"| method | layers | {main} (mean ± std) | steps / scored at | trainable params | share of model | "
             "train s | forward s | backward s | optimizer s | peak MiB |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ph = r["phase_seconds"]
        share = None if r["params_share"] is None else 100 * r["params_share"]
        lines.append(f"| {r['method']} | {_layers(r)} | {_ms(r['score'])} | {_steps(r)} | "
                     f"{_num(r['trainable_params'], ',.0f')} | "
                     f"{_num(share, '.3f', '%')} | {_ms(r['train_seconds'], 1)} | "
                     + " | ".join(_num(_mean(ph[p]), '.2f') for p in _PHASES)
                     + f" | {_mib(_mean(r['peak_memory']))} |")
    return lines


def _metrics_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    names = list(dict.fromkeys(n for r in rows for n in r["metrics"]))
    lines = ["| method | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(_ms(r["metrics"].get(n)) for n in names) + " |")
    return lines


def _relative_table(rows: Sequence[dict[str, Any]], main: str) -> list[str]:
    lines = [f"| method | {main} difference | {main} change | trainable params | train time | forward | backward | "
             "optimizer | peak memory |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        v = r.get("vs_baseline")
        if v is None:
            continue
        change = _num(v["score_change_pct"], "+.2f", "%")
        lines.append(f"| {r['method']} | {_num(v.get('score_diff'), '+.4f')} | {change} | {_num(v['params_pct'], '.2f', '%')} | "
                     f"{_num(v['time_pct'], '.1f', '%')} | "
                     + " | ".join(_num(v["phase_pct"][p], ".1f", "%") for p in _PHASES)
                     + f" | {_num(v['memory_pct'], '.1f', '%')} |")
    return lines


def _inference_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    measured = [r for r in rows if r.get("inference")]
    if not measured:
        return ["(inference not measured: --inference-examples 0)"]
    gen = any(r["inference"]["unmerged"].get("ttft_ms") is not None for r in measured)
    head = ["ms/example", "examples/s"] + (["TTFT ms", "ITL ms"] if gen else [])
    keys = [("latency_ms", ".2f"), ("throughput", ".1f")] + ([("ttft_ms", ".2f"), ("itl_ms", ".2f")] if gen else [])
    lines = ["| method | " + " | ".join(f"{h} unmerged | {h} merged" for h in head) + " |",
             "|---|" + "---:|" * (2 * len(head))]
    for r in measured:
        inf = r["inference"]
        cells = []
        for key, fmt in keys:
            for which in ("unmerged", "merged"):
                cells.append(_num((inf.get(which) or {}).get(key), fmt))
        lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
    return lines


def k_sweep(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The actnorm-top{k} rows by increasing k: ``{k, layers, score, train_seconds, peak_memory}`` (means)."""
    out = []
    for r in rows:
        m = _TOP_K.match(r["method"])
        if m:
            out.append({"k": int(m.group(1)), "layers": r.get("layers"), "score": _mean(r["score"]),
                        "train_seconds": _mean(r["train_seconds"]), "peak_memory": _mean(r["peak_memory"])})
    return sorted(out, key=lambda x: x["k"])


def _k_table(rows: Sequence[dict[str, Any]], main: str) -> list[str]:
    sweep = k_sweep(rows)
    if not sweep:
        return []
    lines = ["## Sweep over k (top-k by actnorm; Act-LoRA Table 7)", "",
             f"| k | layers | {main} | train s | peak MiB |", "|---:|---|---:|---:|---:|"]
    for s in sweep:
        layers = "-" if s["layers"] is None else ",".join(map(str, s["layers"]))
        lines.append(f"| {s['k']} | {layers} | {_num(s['score'], '.4f')} | {_num(s['train_seconds'], '.1f')} | "
                     f"{_mib(s['peak_memory'])} |")
    return lines + [""]


def _selection_lines(rows: Sequence[dict[str, Any]], cfg: dict[str, Any]) -> list[str]:
    """How the scored step was chosen, and the majority-class baseline."""
    lines = []
    if rows and rows[0].get("selected_on") == "validation":
        lines.append("- scores: dev at the step where the validation split (held out of train) was best; early "
                     "stopping on that split; the dev set chose nothing")
    else:
        lines.append("- scores: dev at the final step")
    majority = cfg.get("majority")
    if majority:
        shown = ", ".join(f"{k} {_num(v, '.4f')}" for k, v in (majority.get("metrics") or {}).items())
        size = (f", {majority['dev_examples']} of {majority['dev_total']} dev examples, those the cells score"
                if "dev_examples" in majority else "")
        lines.append(f"- majority-class baseline on dev ({majority['predictor']}{size}): {shown}")
    return lines


def _full_lr(cfg: dict[str, Any]) -> str:
    return f" (full fine-tuning {cfg['full_lr']})" if cfg.get("full_lr") is not None else ""


def render_bench_md(result: dict[str, Any]) -> str:
    """bench.md: training table (mean ± std over seeds), all dev metrics, inference, ratios to LoRA, k sweep."""
    cfg, rows = result["config"], result["table"]
    main = rows[0]["main_metric"] if rows else "score"
    tc = cfg["train_config"]
    lines = [f"# layerwise bench: {cfg['model']} on {cfg['task']}", "",
             f"- {len(cfg['methods'])} methods x seeds {cfg['seeds']}; every cell: {tc['steps']} steps, lr "
             f"{tc['lr']}{_full_lr(cfg)}, batch {tc['batch_size']}, rank {cfg['rank']} on {cfg['targets']}",
             "- time is training only (no evaluation); phases summed over steps; mean over seeds",
             *_selection_lines(rows, cfg),
             f"- memory: {rows[0].get('memory_kind') if rows else 'n/a'} peak per step (on the CPU the process RSS, "
             "which can carry earlier cells' memory: compare memory on a GPU)", "",
             "## Training", "", *_training_table(rows, main), "",
             "## Every dev metric (mean ± std over seeds)", "", *_metrics_table(rows), "",
             f"## Relative to uniform LoRA ({cfg.get('baseline', 'lora')})", ""]
    relative = _relative_table(rows, main)
    lines += (relative if len(relative) > 2 else ["(no uniform LoRA row: add lora to --methods)"]) + [""]
    lines += ["## Inference (median of repeats, per example at the training batch size; La-LoRA Table 13)", "",
              *_inference_table(rows), "", *_k_table(rows, main)]
    return "\n".join(lines).rstrip() + "\n"


# -- plots ------------------------------------------------------------------------------------------------
def _figure(ncols: int = 1, width: float = 6.0) -> tuple[Any, Any]:
    from layerwise.runtime.figures import new_figure

    fig = new_figure((width, 3.8))
    return fig, fig.subplots(1, ncols, squeeze=False)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    from layerwise.runtime.figures import save_png

    return save_png(fig, path)


def plot_score_vs_params(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Dev score (mean, std as error bar) against trainable parameters, log x axis, one labelled point per method."""
    fig, axes = _figure()
    ax = axes[0][0]
    for r in rows:
        x, y = r["trainable_params"], _mean(r["score"])
        if x and y is not None:
            ax.errorbar([x], [y], yerr=[r["score"]["std"]], fmt="o", capsize=3)
            ax.annotate(r["method"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters")
    ax.set_ylabel(f"dev {rows[0]['main_metric'] if rows else 'score'}")
    ax.set_title("score against trainable parameters")
    return _save(fig, path)


def plot_phases(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Training seconds per method, stacked by phase (forward, backward, optimizer)."""
    fig, axes = _figure(width=max(6.0, 0.7 * len(rows) + 2))
    ax, labels = axes[0][0], [r["method"] for r in rows]
    bottom = [0.0] * len(rows)
    for phase, color in zip(_PHASES, ("tab:blue", "tab:orange", "tab:gray")):
        vals = [_mean(r["phase_seconds"][phase]) or 0.0 for r in rows]
        ax.bar(labels, vals, bottom=bottom, label=phase, color=color)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.set_ylabel("seconds (mean over seeds)")
    ax.set_title("training time by phase")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", labelsize=7, labelrotation=45)
    return _save(fig, path)


def plot_memory(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Peak memory per method (MiB)."""
    fig, axes = _figure(width=max(6.0, 0.7 * len(rows) + 2))
    ax = axes[0][0]
    ax.bar([r["method"] for r in rows], [(_mean(r["peak_memory"]) or 0) / 2**20 for r in rows], color="tab:red")
    ax.set_ylabel(f"peak MiB ({rows[0].get('memory_kind') if rows else ''})")
    ax.set_title("peak memory")
    ax.tick_params(axis="x", labelsize=7, labelrotation=45)
    return _save(fig, path)


def plot_k_sweep(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path | None:
    """Training time and peak memory against k for the actnorm-top{k} methods (LoRA on every layer dashed);
    None when the bench has no such method."""
    sweep = k_sweep(rows)
    if not sweep:
        return None
    base = next((r for r in rows if r["method"] == "lora"), None)
    fig, axes = _figure(ncols=2, width=10.0)
    ks = [s["k"] for s in sweep]
    for ax, key, scale, label in ((axes[0][0], "train_seconds", 1.0, "train seconds"),
                                  (axes[0][1], "peak_memory", 2**20, "peak MiB")):
        ax.plot(ks, [(s[key] or 0) / scale for s in sweep], marker="o", label="actnorm-top k")
        if base is not None and _mean(base[key]) is not None:
            ax.axhline(_mean(base[key]) / scale, ls="--", color="gray", label="lora (all layers)")
        ax.set_xlabel("k (adapted layers)")
        ax.set_ylabel(label)
        ax.set_xticks(ks)
        ax.set_ylim(bottom=0)  # from zero: how time and memory grow with k reads off the slope
        ax.legend(fontsize=8)
    axes[0][0].set_title("compute against k")
    axes[0][1].set_title("memory against k")
    return _save(fig, path)


def write_bench(out_dir: str | os.PathLike, result: dict[str, Any]) -> dict[str, Path]:
    """bench.json, bench.md and the plots (bench_score, bench_phases, bench_memory, bench_k), atomically."""
    from layerwise.runtime.io import atomic_write_json, atomic_write_text
    from layerwise.train.log import json_safe

    out, rows = Path(out_dir), result["table"]
    files = {"json": atomic_write_json(out / "bench.json", json_safe({k: v for k, v in result.items()
                                                                      if k != "files"})),
             "md": atomic_write_text(out / "bench.md", render_bench_md(result))}
    if rows:
        files["score_png"] = plot_score_vs_params(rows, out / "bench_score.png")
        files["phases_png"] = plot_phases(rows, out / "bench_phases.png")
        files["memory_png"] = plot_memory(rows, out / "bench_memory.png")
        k_png = plot_k_sweep(rows, out / "bench_k.png")
        if k_png is not None:
            files["k_png"] = k_png
    return files
