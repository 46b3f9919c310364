"""The converged-results tables of docs/BENCHMARKS.md and the README (and one figure per model and task), from
the result files.

Every ``benchmarks/results/<model>-<task>/`` folder becomes the text between the markers
``<!-- results <model>-<task>: begin -->`` and ``<!-- results <model>-<task>: end -->`` in docs/BENCHMARKS.md
(a folder whose markers are missing is not placed; ``--check`` says so). Nothing in those blocks is typed by
hand: run this after new results land. ``--check`` regenerates the text and fails when the committed file
differs (the figures are not compared; they are redrawn without ``--check``).

Per model and task:
- the learning-rate sweep of uniform LoRA (seed 0, chosen on the validation split);
- the methods at uniform's rate: validation and dev score at the step the validation split chose (mean, std
  over seeds), layers, trainable parameters, counted training FLOPs to that step against uniform's;
- compute-matched, for each method: its validation score at uniform's chosen step (equal steps), its best
  validation score within uniform's FLOPs to its chosen step (equal compute), and the FLOPs to first reach 99%
  of uniform's best validation score (mean over seeds that reach it; "never" when none does);
- each method's own rate (seed 0, the best validation of the rates it was run at);
- figure ``docs/img/<model>-<task>-flops.png``: the best validation score reached within each amount of training
  FLOPs, the mean over seeds as a line and the seeds' range as a band, with 99% of uniform LoRA's best.

    python benchmarks/tables.py            # rewrite the blocks and figures
    python benchmarks/tables.py --check    # exit 1 when docs/BENCHMARKS.md or README.md is not what they give

The README's block between ``<!-- results:begin -->`` and ``<!-- results:end -->`` gets a compact table per
``<model>-<task>`` with main-stage results (dev scores at the validation-chosen step against uniform LoRA), and the
block between ``<!-- default-policy:begin -->`` and ``<!-- default-policy:end -->`` applies issue 28's rule for
the default policy of ``layerwise run`` to all of them (:func:`default_policy`). docs/BENCHMARKS.md's block
between ``<!-- stability-vs-score:begin -->`` and ``<!-- stability-vs-score:end -->`` relates each metric's
seed stability (``benchmarks/results/stability/<model>.json``) to its selection's score
(:func:`stability_vs_score`).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BASELINE = "lora"


def _main(r: dict, split: str, where: dict | None = None) -> float | None:
    block = (where if where is not None else r.get("chosen") or {}).get(split) or {}
    return block.get(r["main_metric"])


def _mean_std(xs: list[float | None]) -> tuple[float | None, float | None, int]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None, 0
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0), len(xs)


def _f(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"

def _ms(m: float | None, s: float | None, n: int) -> str:
    if m is None:
        return "n/a"
    return f"{m:.4f} ± {s:.4f} (n={n})" if n > 1 else f"{m:.4f} (n=1)"


def _flops(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def _layers(layers) -> str:
    if layers is None:
        return "all (full)"
    if isinstance(layers, dict):
        return "; ".join(",".join(map(str, v)) for v in layers.values())
    return ",".join(map(str, layers)) if len(layers) <= 12 else f"{len(layers)} blocks: {_ranges(layers)}"


def _ranges(xs: list[int]) -> str:
    out, start, prev = [], None, None
    for x in sorted(xs) + [None]:
        if start is None:
            start = prev = x
        elif x is not None and x == prev + 1:
            prev = x
        else:
            out.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = x
    return ",".join(out)


def _value_at(r: dict, step: int) -> float | None:
    """Validation score at the last evaluation at or before ``step``."""
    before = [e for e in r["evaluations"] if e["step"] <= step and e.get("validation")]
    return None if not before else before[-1]["validation"].get(r["main_metric"])


def _best_within(r: dict, flops: float) -> float | None:
    within = [e["validation"].get(r["main_metric"]) for e in r["evaluations"]
              if e.get("flops") is not None and e["flops"] <= flops * (1 + 1e-9) and e.get("validation")]
    within = [x for x in within if x is not None]
    return None if not within else (max(within) if r["higher_is_better"] else min(within))


def _reach(r: dict, target: float) -> float | None:
    for e in r["evaluations"]:
        v = (e.get("validation") or {}).get(r["main_metric"])
        if v is not None and e.get("flops") is not None and (v >= target if r["higher_is_better"] else v <= target):
            return e["flops"]
    return None


def _main_groups(records: list[dict], base_lr: float | None) -> dict[str, list[dict]]:
    """The main stage's cells at uniform LoRA's rate (full fine-tuning at its own), by method. Uniform's seed-0
    sweep cell at that rate is the same run as the main stage's seed 0, and stands for it."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("stage") == "main" and r["lr"] is not None and (r["lr"] == base_lr or r["method"] == "full"):
            groups[r["method"]].append(r)
    for r in records:
        if r.get("stage") == "sweep" and r["method"] == BASELINE and r["lr"] == base_lr and not any(
                0 in (x.get("seeds") or [x["seed"]]) for x in groups[BASELINE]):
            groups[BASELINE].append(r)
    full = [r for r in records if r.get("stage") == "sweep" and r["method"] == "full"
            and _main(r, "validation") is not None]
    if full and not groups.get("full"):  # full fine-tuning's own sweep (seed 0): the rate validation chose
        sign = 1 if full[0]["higher_is_better"] else -1
        groups["full"].append(max(full, key=lambda r: (sign * _main(r, "validation"), -r["lr"])))
    return {m: rs for m, rs in groups.items() if rs}


def render(key: str, records: list[dict]) -> str:
    """The Markdown block of one ``<model>-<task>`` folder."""
    lines: list[str] = []
    main = records[0]["main_metric"]
    sweep = sorted((r for r in records if r.get("stage") == "sweep"), key=lambda r: (r["method"], r["lr"]))
    if sweep:
        lines += [f"Learning-rate sweep (seed 0; {main} on the validation split at its best step, which chose the "
                  "rate; dev at that step only as a record):", "",
                  f"| method | lr | validation {main} | chosen step | of steps | dev {main} there | training FLOPs |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        best = {}
        for r in sweep:
            v = _main(r, "validation")
            if v is not None and (r["method"] not in best or v > best[r["method"]][0]):
                best[r["method"]] = (v, r["lr"])
        for r in sweep:
            mark = best.get(r["method"], (None, None))[1] == r["lr"]
            lr = f"**{r['lr']:g}**" if mark else f"{r['lr']:g}"
            lines.append(f"| {r['method']} | {lr} | {_f(_main(r, 'validation'))} | {r['chosen']['step']} | "
                         f"{r.get('steps', 'n/a')} | {_f(_main(r, 'dev'))} | {_flops(r.get('total_flops'))} |")
        lines.append("")
    base_lr = _base_lr(records)
    groups = _main_groups(records, base_lr)
    if groups:
        base = groups.get(BASELINE, [])
        base_flops = _mean_std([(r.get("chosen") or {}).get("flops") for r in base])[0]
        lines += [f"At uniform LoRA's rate ({base_lr:g}): the step the validation split chose, mean ± std over seeds:"
                  if base_lr is not None else "The methods:", "",
                  f"| method | lr | layers | seeds | validation {main} | dev {main} | dev, other metrics | vs uniform (dev) | "
                  "trainable params | FLOPs to chosen step | vs uniform | time vs uniform | step chosen (mean) |",
                  "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        base_secs = _mean_std([(r.get("chosen") or {}).get("seconds") for r in base])[0]
        base_dev = _dev_stats(base)[0] if base else None
        order = sorted(groups, key=lambda m: (m != "full", m != BASELINE, m))
        for m in order:
            rs = sorted(groups[m], key=lambda r: (r["seed"] is None, r["seed"]))
            dev, dev_sd, n = _dev_stats(rs)
            val, val_sd, nv = _mean_std([_main(r, "validation") for r in rs])
            fl = _mean_std([(r.get("chosen") or {}).get("flops") for r in rs])[0]
            step = _mean_std([(r.get("chosen") or {}).get("step") for r in rs])[0]
            seeds = ",".join(str(s) for r in rs for s in (r.get("seeds") or [r["seed"]]))
            diff = "n/a" if dev is None or base_dev is None else f"{100 * (dev - base_dev):+.1f} pts"
            rel = "n/a" if fl is None or not base_flops else f"{100 * fl / base_flops:.0f}%"
            layers = rs[0]["layers"] if len(rs) == 1 or all(r["layers"] == rs[0]["layers"] for r in rs) else \
                {str(r["seed"]): r["layers"] for r in rs}
            secs = _mean_std([(r.get("chosen") or {}).get("seconds") for r in rs])[0]
            recorded = (rs[0].get("summary") or {}).get("time_vs_lora_pct")
            if recorded is not None:
                time_rel = f"{recorded}% (seeds {','.join(map(str, rs[0]['summary']['time_from_seeds']))})"
            else:
                time_rel = "n/a" if secs is None or not base_secs else f"{100 * secs / base_secs:.0f}%"
            lines.append(f"| {m} | {rs[0]['lr']:g} | {_layers(layers)} | {seeds} | {_ms(val, val_sd, nv)} | "
                         f"{_ms(dev, dev_sd, n)} | {_other_metrics(rs)} | {diff} | {rs[0]['trainable_params']:,} | {_flops(fl)} | {rel} | "
                         f"{time_rel} | {_f(step, 0)} |")
        majority = ((records[0].get("config") or {}).get("bench") or {}).get("majority")
        if majority and isinstance(majority.get("metrics"), dict):  # layerwise bench's record: {predictor, metrics}
            majority = majority["metrics"]
        if majority and majority.get(main) is not None:
            others = "; ".join(f"{k} {v:.4f}" for k, v in sorted(majority.items()) if k != main) or "-"
            lines.append(f"| majority class | - | - | - | - | {majority[main]:.4f} | {others} | "
                         f"{'n/a' if base_dev is None else f'{100 * (majority[main] - base_dev):+.1f} pts'} | 0 | - | - | - | - |")
        lines.append("")
        lines += _compute_matched(groups, main)
        lines += _matched_runs(records, groups.get(BASELINE, []), main)
    own = _own_rates(records, base_lr)
    if own:
        lines += own
    return "\n".join(lines).rstrip() + "\n"


def _matched_runs(records: list[dict], base: list[dict], main: str) -> list[str]:
    """The compute-matched runs (``deep.py --stage matched``): each cheaper method trained again with a step budget
    spending uniform LoRA's FLOPs to its chosen step, scored at the step its validation split chose."""
    by: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("stage") == "matched":
            by[r["method"]].append(r)
    if not by or not base:
        return []
    base_dev = _dev_stats(base)[0]
    base_flops = _mean_std([(r.get("chosen") or {}).get("flops") for r in base])[0]
    lines = ["Compute-matched runs: a cheaper method trained again with a step budget spending uniform LoRA's mean "
             "FLOPs to its chosen step (same evaluation interval and early stopping), scored at the step the "
             "validation split chose:", "",
             f"| method | seeds | step budget | step chosen (mean) | validation {main} | dev {main} | vs uniform (dev) | "
             "FLOPs to chosen step vs uniform's |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for m, rs in sorted(by.items()):
        rs = sorted(rs, key=lambda r: r["seed"])
        dev = _dev_stats(rs)
        fl = _mean_std([(r.get("chosen") or {}).get("flops") for r in rs])[0]
        diff = "n/a" if dev[0] is None or base_dev is None else f"{100 * (dev[0] - base_dev):+.1f} pts"
        rel = "n/a" if fl is None or not base_flops else f"{100 * fl / base_flops:.0f}%"
        budgets = sorted({r["config"]["train"]["steps"] for r in rs})
        step = _mean_std([(r.get("chosen") or {}).get("step") for r in rs])[0]
        lines.append(f"| {m} | {','.join(str(r['seed']) for r in rs)} | {'/'.join(map(str, budgets))} | "
                     f"{_f(step, 0)} | {_ms(*_mean_std([_main(r, 'validation') for r in rs]))} | {_ms(*dev)} | "
                     f"{diff} | {rel} |")
    return lines + [""]


def _base_lr(records: list[dict]) -> float | None:
    """Uniform LoRA's rate: that of its main-stage cells, else the sweep's best validation score."""
    main = next((r["lr"] for r in records if r["method"] == BASELINE and r.get("stage") == "main"), None)
    if main is not None:
        return main
    sweep = [r for r in records if r["method"] == BASELINE and r.get("stage") == "sweep"
             and _main(r, "validation") is not None]
    return None if not sweep else max(sweep, key=lambda r: (_main(r, "validation"), -r["lr"]))["lr"]


def _dev_stats(rs: list[dict], metric: str | None = None) -> tuple[float | None, float | None, int]:
    metric = metric or rs[0]["main_metric"]
    if len(rs) == 1 and rs[0].get("summary"):
        s = rs[0]["summary"]["dev"].get(metric) or {"mean": None, "std": None, "n": 0}
        return s["mean"], s["std"], s["n"]
    return _mean_std([((r.get("chosen") or {}).get("dev") or {}).get(metric) for r in rs])


def _other_metrics(rs: list[dict]) -> str:
    names = sorted({k for r in rs for k in ((r.get("chosen") or {}).get("dev") or {})
                    if k not in (r["main_metric"], "loss")})
    return "; ".join(f"{n} {_ms(*_dev_stats(rs, n))}" for n in names) or "-"


def _target(base: list[dict]) -> float:
    """99% of uniform LoRA's mean best validation score: the compute-matched table's and the figure's target."""
    return 0.99 * statistics.fmean(_main(r, "validation") for r in base)


def _compute_matched(groups: dict[str, list[dict]], main: str) -> list[str]:
    base = [r for r in groups.get(BASELINE, []) if r["evaluations"] and r["chosen"] and r["chosen"].get("flops")]
    if not base:
        return ["Compute-matched results: not available (the runs recorded no FLOPs per evaluation).", ""]
    step = round(statistics.fmean(r["chosen"]["step"] for r in base))
    budget = statistics.fmean(r["chosen"]["flops"] for r in base)
    target = _target(base)
    lines = [f"Compute-matched (validation {main}; uniform LoRA chose step {step} on average, at "
             f"{_flops(budget)} training FLOPs; 99% of its best validation score is {target:.4f}). FLOPs are "
             "counted, not timed:", "",
             f"| method | seeds | at equal steps ({step}) | at equal compute ({_flops(budget)}) | "
             "FLOPs to 99% of uniform | vs uniform's FLOPs to its chosen step |", "|---|---:|---:|---:|---:|---:|"]
    for m in sorted(groups, key=lambda m: (m != BASELINE, m)):
        rs = [r for r in groups[m] if r["evaluations"] and any(e.get("flops") for e in r["evaluations"])]
        if not rs:
            continue
        at_steps = _mean_std([_value_at(r, step) for r in rs])
        at_flops = _mean_std([_best_within(r, budget) for r in rs])
        reach = [_reach(r, target) for r in rs]
        hit = [x for x in reach if x is not None]
        if not hit:
            to99, rel = "never", "-"
        else:
            mean = statistics.fmean(hit)
            to99 = f"{_flops(mean)}" + ("" if len(hit) == len(rs) else f" ({len(hit)} of {len(rs)} seeds)")
            rel = f"{100 * mean / budget:.0f}%"
        lines.append(f"| {m} | {len(rs)} | {_ms(*at_steps)} | {_ms(*at_flops)} | {to99} | {rel} |")
    return lines + [""]


def _own_rates(records: list[dict], base_lr: float | None) -> list[str]:
    by: dict[str, dict[float, dict]] = defaultdict(dict)
    seeds: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in records:
        if r.get("stage") in ("own", "main") and r["method"] != BASELINE and r["lr"] is not None:
            seeds[(r["method"], r["lr"])].append(r)
            if r["seed"] == 0:
                by[r["method"]][r["lr"]] = r
    by = {m: v for m, v in by.items() if len(v) > 1}
    if not by:
        return []
    sign = 1 if records[0].get("higher_is_better", True) else -1
    lines = ["Each selection's own rate (seed 0 chooses it: validation score at its chosen step, bold the best; "
             "dev over every seed run at that rate):", "",
             "| method | rate | validation (seed 0) | dev (seed 0) | dev, every seed |", "|---|---:|---:|---:|---:|"]
    for m, runs in sorted(by.items()):
        best = max(runs, key=lambda lr: sign * (_main(runs[lr], "validation") or -sign * 1e9))
        for lr, r in sorted(runs.items()):
            mark = "**" if lr == best else ""
            lines.append(f"| {m} | {mark}{lr:g}{mark} | {_f(_main(r, 'validation'))} | {_f(_main(r, 'dev'))} | "
                         f"{_ms(*_dev_stats(seeds[(m, lr)]))} |")
    return lines + [""]


def best_so_far(r: dict, grid):
    """The run's best validation score among its evaluations at or below each of ``grid``'s FLOPs (a step
    function that holds after the run ended; nan before its first evaluation): :func:`_best_within` at every
    grid point, as the figure draws it."""
    import numpy as np

    x = np.array([e["flops"] for e in r["evaluations"]], float)
    y = np.array([(e.get("validation") or {}).get(r["main_metric"]) for e in r["evaluations"]], float)
    y = np.where(np.isnan(y), -np.inf if r["higher_is_better"] else np.inf, y)
    best = np.maximum.accumulate(y) if r["higher_is_better"] else np.minimum.accumulate(y)
    at = np.searchsorted(x, np.asarray(grid, float) * (1 + 1e-9), side="right") - 1
    curve = np.where(at >= 0, best[np.clip(at, 0, None)], np.nan)
    return np.where(np.isfinite(curve), curve, np.nan)


def figure(key: str, records: list[dict], path: Path) -> bool:
    """The best validation score reached within each amount of training FLOPs (what the compute-matched table's
    "at equal compute" reads, and what early stopping would keep), one line (mean over seeds) and band (range
    over seeds) per method, with a dotted line at 99% of uniform LoRA's best validation score."""
    import numpy as np
    from matplotlib.figure import Figure

    runs = [r for r in records if r.get("stage") in ("main", "sweep") and r["evaluations"]
            and all(e.get("flops") is not None for e in r["evaluations"])]
    base_lr = _base_lr(records)
    runs = [r for r in runs if r.get("stage") == "main" or (r["method"] == BASELINE and r["lr"] == base_lr)]
    if not runs:
        return False
    fig = Figure(figsize=(8.5, 4.2))
    ax = fig.add_subplot()
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        groups[r["method"]].append(r)
    styles = ("-", "--", ":", "-.")  # ten colours, then the next line style: 14 methods stay distinguishable
    for i, (m, rs) in enumerate(sorted(groups.items())):
        grid = np.unique(np.concatenate([[e["flops"] for e in r["evaluations"]] for r in rs]))
        c = np.array([best_so_far(r, grid) for r in rs])
        with np.errstate(all="ignore"):
            mean, lo, hi = np.nanmean(c, axis=0), np.nanmin(c, axis=0), np.nanmax(c, axis=0)
        line, = ax.step(grid, mean, styles[i // 10 % len(styles)], where="post", color=f"C{i % 10}",
                        lw=2.2 if m == BASELINE else 1.2, label=f"{m} (n={len(rs)})")
        if len(rs) > 1:
            ax.fill_between(grid, lo, hi, step="post", alpha=0.08, color=line.get_color())
    if groups.get(BASELINE):  # the compute-matched table's target
        ax.axhline(_target(groups[BASELINE]), color="black", ls=":", lw=1, label="99% of uniform's best")
    ax.set_xlabel("training FLOPs (counted)")
    ax.set_ylabel(f"best validation {runs[0]['main_metric']} so far")
    ax.set_title(f"{key}: best validation score within the compute", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return True


def render_readme(key: str, records: list[dict]) -> str:
    """The README's compact table of one ``<model>-<task>``: the main stage at uniform LoRA's rate, dev scores at
    the step the validation split chose (mean ± std over seeds), against uniform LoRA and the majority class."""
    base_lr = _base_lr(records)
    groups = _main_groups(records, base_lr)
    if BASELINE not in groups:
        return ""
    main = records[0]["main_metric"]
    others = sorted({k for rs in groups.values() for r in rs for k in ((r.get("chosen") or {}).get("dev") or {})
                     if k not in (main, "loss")})
    base = groups[BASELINE]
    base_dev = _dev_stats(base)[0]
    base_params = base[0]["trainable_params"]
    base_secs = _mean_std([(r.get("chosen") or {}).get("seconds") for r in base])[0]
    head = ["method", "layers", f"{main} (mean ± std)", *[f"{o} (mean ± std)" for o in others],
            f"{main} vs uniform LoRA", "trainable params", "training time vs LoRA", "step scored (mean)"]
    lines = [f"**{key}**, at uniform LoRA's rate ({base_lr:g}), dev scores at the step the validation split "
             "chose:", "", "| " + " | ".join(head) + " |",
             "|---|---|" + "---:|" * (len(head) - 2)]
    for m in sorted(groups, key=lambda m: (m != "full", m != BASELINE, m)):
        rs = sorted(groups[m], key=lambda r: (r["seed"] is None, r["seed"]))
        dev, sd, n = _dev_stats(rs)
        cells = [_ms2(dev, sd, n)] + [_ms2(*_dev_stats(rs, o)) for o in others]
        layers = rs[0]["layers"] if all(r["layers"] == rs[0]["layers"] for r in rs) else \
            {str(r["seed"]): r["layers"] for r in rs}
        params = rs[0]["trainable_params"]
        share = "all" if m == "full" else f"{100 * params / base_params:.0f}%"
        recorded = (rs[0].get("summary") or {}).get("time_vs_lora_pct")
        secs = _mean_std([(r.get("chosen") or {}).get("seconds") for r in rs])[0]
        time_rel = f"{recorded}%" if recorded is not None else (
            "n/a" if secs is None or not base_secs else f"{100 * secs / base_secs:.0f}%")
        step = _mean_std([(r.get("chosen") or {}).get("step") for r in rs])[0]
        diff = "n/a" if dev is None or base_dev is None else f"{100 * (dev - base_dev):+.1f} pts"
        lines.append(f"| {m} | {_layers(layers)} | " + " | ".join(cells) + f" | {diff} | {params:,} ({share}) | "
                     f"{time_rel} | {_f(step, 0)} of {rs[0].get('steps', 'n/a')} |")
    majority = ((records[0].get("config") or {}).get("bench") or {}).get("majority")
    if majority and isinstance(majority.get("metrics"), dict):
        majority = majority["metrics"]
    if majority and majority.get(main) is not None:
        vals = " | ".join(_f(majority.get(o)) for o in [main, *others])
        lines.append(f"| majority class | - | {vals} | "
                     f"{'n/a' if base_dev is None else f'{100 * (majority[main] - base_dev):+.1f} pts'} | 0 | - | - |")
    return "\n".join(lines) + "\n"


def _ms2(m: float | None, s: float | None, n: int) -> str:
    return "n/a" if m is None else (f"{m:.4f} ± {s:.4f}" if n > 1 else f"{m:.4f} (one seed)")


def render_freeze(summary: dict) -> str:
    """The Markdown block of a combined ``benchmarks/freeze_lockstep.py`` summary (``results/freeze/<name>.json``):
    each seed's runs, then the means against uniform LoRA and the issue's two targets."""
    base, seeds, runs = summary["baseline"], summary["seeds"], summary["runs"]
    lines = ["| seed | run | frozen (block@step) | steps run | chosen step | validation acc | dev acc there | "
             "train s | time vs uniform |", "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    # time vs uniform: against the uniform run of the run's own lockstep process (a seed may span several)
    for seed in seeds:
        for m in summary["methods"]:
            r, f = runs[seed][m], runs[seed][m].get("freeze")
            froze = "-" if not f else ", ".join(f"{b}@{s}" for b, s in f["freeze_step"].items() if s is not None) \
                or "none"
            lines.append(f"| {seed} | {m} | {froze} | {r.get('steps', 'n/a')} | {r['best_step']} | "
                         f"{_f(r['validation'])} | {_f(r['dev_at_validation_step'])} | {r['train_seconds']:.0f} | "
                         f"{r.get('time_ratio') or r['train_seconds'] / runs[seed][base]['train_seconds']:.2f} |")
    lines += ["", f"Means over seeds {', '.join(seeds)} (dev accuracy at the step the validation split chose; the "
              "time ratio is the mean of each seed's ratio, cache fills included; targets: dev accuracy at least "
              "uniform's minus 0.5 points and a time ratio of at most 0.60):", "",
              "| method | validation acc | dev acc | vs uniform | time ratio (per seed) | Kendall tau | "
              "chosen on validation | targets |", "|---|---:|---:|---:|---:|---:|---|---|"]
    chosen = set(summary.get("chosen", {}).values())
    for m, r in summary["methods"].items():
        n = len(seeds)
        dev = _ms(r["dev_accuracy_mean"], r["dev_accuracy_std"] or 0.0, n)
        per = ", ".join(f"{x:.2f}" for x in r["time_ratio_per_seed"])
        tau = "n/a" if r["kendall_tau_mean"] is None else f"{r['kendall_tau_mean']:.2f}"
        if m == base:
            met = "-"
        else:
            acc_ok, time_ok = r["points_vs_baseline"] >= -0.5, r["time_ratio_mean"] <= 0.60
            met = ("met" if acc_ok and time_ok else "missed: " + ", ".join(
                x for x, ok in (("accuracy", acc_ok), ("time", time_ok)) if not ok))
        lines.append(f"| {m} | {_f(r['validation_mean'])} | {dev} | {r['points_vs_baseline']:+.2f} pts | "
                     f"{r['time_ratio_mean']:.3f} ({per}) | {tau} | {'yes' if m in chosen else ''} | {met} |")
    majority = (summary.get("majority") or {}).get("metrics") or {}
    if majority.get("accuracy") is not None:
        lines += ["", f"Majority-class baseline on dev: accuracy {majority['accuracy']:.4f} "
                  f"({summary['majority']['predictor']})."]
    return "\n".join(lines) + "\n"


def regenerate_freeze(text: str, folder: Path) -> tuple[str, list[str]]:
    """``text`` with the block of every combined freezing summary in ``folder`` (``<name>.json`` with per-seed
    ``runs`` and a ``chosen`` variant per method) replaced between ``<!-- freeze <name>: begin/end -->``."""
    missing = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        summary = json.loads(path.read_text())
        if "chosen" not in summary or "runs" not in summary:
            continue  # an older summary format (mrpc-800-means.json): described by hand in the text
        begin, end = f"<!-- freeze {path.stem}: begin -->", f"<!-- freeze {path.stem}: end -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            missing.append(f"freeze {path.stem}")
            continue
        block = render_freeze(summary)
        text = pattern.sub(lambda _: f"{begin}\n{block}{end}", text)
    return text, missing


def task_records(results: Path) -> dict[str, list[dict]]:
    """The cells of every ``<model>-<task>`` folder of ``results`` (folders of other files are left out)."""
    from layerwise.bench.store import load_results

    tasks = {}
    for folder in sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []:
        if any("schema" in json.loads(p.read_text()) for p in folder.glob("*.json")):
            tasks[folder.name] = [r for r in load_results(results, folder=folder.name)
                                  if f"{r['model']}-{r['task']}" == folder.name]
    return tasks


def _replace_block(text: str, name: str, make: Callable[[], str]) -> str:
    """``text`` with ``make()`` between ``<!-- name:begin -->`` and ``<!-- name:end -->`` (unchanged, and
    ``make`` not called, without the markers)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        return text
    block = make()
    return pattern.sub(lambda _: begin + "\n" + block + end, text)


def regenerate(text: str, results: Path, draw: bool, img: Path) -> tuple[str, list[str]]:
    """``text`` with every folder's block replaced; the folders whose markers are missing."""
    text, missing = regenerate_freeze(text, results / "freeze")
    for key, records in task_records(results).items():
        if not records:
            continue
        begin, end = f"<!-- results {key}: begin -->", f"<!-- results {key}: end -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if not pattern.search(text):
            missing.append(key)
            continue
        block = render(key, records)
        if draw and figure(key, records, img / f"{key}-flops.png"):
            pass
        if (img / f"{key}-flops.png").exists():
            block += f"\n![best validation score within the training FLOPs, {key}](img/{key}-flops.png)\n"
        text = pattern.sub(lambda _: f"{begin}\n{block}{end}", text)
    return text, missing


def regenerate_readme(text: str, results: Path) -> str:
    """``text`` (the README) with the block between ``<!-- results:begin -->`` and ``<!-- results:end -->``
    holding :func:`render_readme` of every ``<model>-<task>`` folder with main-stage results."""
    def blocks() -> str:
        rendered = (render_readme(key, records) if records else "" for key, records in task_records(results).items())
        return "\n".join(b for b in rendered if b)

    return _replace_block(text, "results", blocks)


# -- the default policy of `layerwise run` (issue 28's rule, stated before the results) ------------------------
NOT_POLICIES = ("full", "lalora", "lalora-selected", "energy-ranks", "freeze-auto", "freeze-card")
"""Bench methods that are not a layer policy of ``layerwise run`` (adapter kinds, training schedules)."""


def policy_of(method: str, n_layers: int) -> str | None:
    """The layer policy a bench method stands for, with a top-k's k as a share of the depth (``actnorm-top3``
    of 6 blocks and ``actnorm-top15`` of 30 are both ``actnorm-top(L/2)``); None for uniform LoRA, the random
    control and methods that are not layer policies."""
    if method == BASELINE or method in NOT_POLICIES or method.startswith("random"):
        return None
    m = re.fullmatch(r"(\w+)-top(\d+)", method)
    if not m:
        return method
    k = int(m.group(2))
    for name, share in (("L/2", 0.5), ("L/4", 0.25)):
        if abs(k - share * n_layers) <= 1:
            return f"{m.group(1)}-top({name})"
    return method


def _cost_share(rs: list[dict], base: list[dict]) -> tuple[float | None, str]:
    """A method's training cost to its chosen step over uniform LoRA's: counted FLOPs where both have them,
    else the recorded time ratio, else seconds."""
    flops = _mean_std([(r.get("chosen") or {}).get("flops") for r in rs])[0]
    base_flops = _mean_std([(r.get("chosen") or {}).get("flops") for r in base])[0]
    if flops is not None and base_flops:
        return flops / base_flops, "FLOPs"
    recorded = (rs[0].get("summary") or {}).get("time_vs_lora_pct")
    if recorded is not None:
        return recorded / 100, "time"
    secs = _mean_std([(r.get("chosen") or {}).get("seconds") for r in rs])[0]
    base_secs = _mean_std([(r.get("chosen") or {}).get("seconds") for r in base])[0]
    return (None, "-") if secs is None or not base_secs else (secs / base_secs, "time")


def _points_vs(dev: float, base_dev: float, higher_is_better: bool = True) -> float:
    """A score against uniform LoRA's, in points (100x the metric), positive when better: for a metric where
    lower is better (a loss), a lower score is a gain."""
    return (1 if higher_is_better else -1) * 100 * (dev - base_dev)


WITHIN = 1.0 + 1e-9
"""The rule's "within 1 point" (a difference of exactly -1.0 points, computed in floating point, is within)."""


def default_policy(tasks: dict[str, list[dict]]) -> str:
    """Apply the rule to the main-stage results of every ``<model>-<task>``: the cheapest policy whose mean dev
    score is within 1 point of uniform LoRA's on every task; if none is, the best score per unit of cost (mean
    over tasks of its score as a share of uniform's, over its mean cost share). Only policies measured on every
    task compete; the text names the rest and how many seeds each figure has."""
    per: dict[str, dict[str, dict]] = defaultdict(dict)
    for key, records in tasks.items():
        groups = _main_groups(records, _base_lr(records))
        base = groups.get(BASELINE)
        if not base:
            continue
        n_layers = len(base[0]["layers"] or [])
        base_dev = _dev_stats(base)[0]
        for method, rs in groups.items():
            policy = policy_of(method, n_layers)
            dev, _, n = _dev_stats(rs)
            if policy is None or dev is None or base_dev is None:
                continue
            if policy in per and key in per[policy]:
                raise SystemExit(f"{key}: {per[policy][key]['method']} and {method} both stand for policy "
                                 f"{policy}; the rule needs one result per policy and task")
            cost, unit = _cost_share(rs, base)
            higher = base[0].get("higher_is_better", True)
            # a share of uniform's score needs a positive score (a Matthews correlation at or below 0 has none)
            share = None if base_dev <= 0 or dev <= 0 else (dev / base_dev if higher else base_dev / dev)
            per[policy][key] = {"method": method, "diff": _points_vs(dev, base_dev, higher), "share": share,
                                "cost": cost, "unit": unit, "n": n}
    keys = sorted(k for k, rs in tasks.items() if _main_groups(rs, _base_lr(rs)).get(BASELINE))
    if not keys:
        return ""
    full = {p: t for p, t in per.items() if set(t) == set(keys)
            and all(x["cost"] is not None and x["share"] is not None for x in t.values())}
    lines = [f"Rule (issue 28, fixed before the results): the cheapest policy whose mean score is within 1 point "
             f"of uniform LoRA on every task ({', '.join(keys)}); if none, the best score per unit of cost. "
             "Cost: training to the step the validation split chose, as a share of uniform LoRA's (counted FLOPs "
             "where recorded, else time).", "",
             "| policy | " + " | ".join(f"{k}: vs uniform, cost" for k in keys) + " | within 1 point everywhere |",
             "|---|" + "---:|" * len(keys) + "---|"]
    for policy in sorted(full, key=lambda p: statistics.fmean(x["cost"] for x in full[p].values())):
        t = full[policy]
        cells = [f"{t[k]['diff']:+.1f} pts ({t[k]['method']}, n={t[k]['n']}), {100 * t[k]['cost']:.0f}% "
                 f"{t[k]['unit']}" for k in keys]
        ok = all(x["diff"] >= -WITHIN for x in t.values())
        lines.append(f"| {policy} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} |")
    lines.append("")
    within = [p for p in full if all(x["diff"] >= -WITHIN for x in full[p].values())]
    mean_cost = {p: statistics.fmean(x["cost"] for x in full[p].values()) for p in full}
    if within:
        pick = min(within, key=lambda p: mean_cost[p])
        why = f"it is the cheapest within 1 point of uniform LoRA on every task ({100 * mean_cost[pick]:.0f}% of its cost)"
    elif full:
        value = {p: statistics.fmean(x["share"] for x in full[p].values()) / mean_cost[p] for p in full}
        pick = max(full, key=lambda p: value[p])
        why = (f"no policy is within 1 point of uniform LoRA on every task, and it has the best score per unit of "
               f"cost ({value[pick]:.2f}: {100 * statistics.fmean(x['share'] for x in full[pick].values()):.1f}% "
               f"of uniform's score at {100 * mean_cost[pick]:.0f}% of its cost)")
    else:
        pick, why = None, "no policy has results on every task yet"
    lines.append(f"**By the rule: `{pick}`**, because {why}." if pick else f"**No choice yet:** {why}.")
    partial = sorted(p for p in per if p not in full)
    if partial:
        lines.append(f"Not on every task yet (not compared): " + ", ".join(
            f"{p} ({', '.join(sorted(per[p]))})" for p in partial) + ".")
    few = sorted({p for p in full for x in full[p].values() if x["n"] < 3})
    if few:
        lines.append(f"Fewer than 3 seeds on some task: {', '.join(few)}; the choice is provisional until they run.")
    return "\n".join(lines) + "\n"


def regenerate_default(text: str, results: Path) -> str:
    """``text`` with :func:`default_policy` of every results folder between ``<!-- default-policy:begin -->`` and
    ``<!-- default-policy:end -->`` (unchanged without the markers)."""
    return _replace_block(text, "default-policy", lambda: default_policy(task_records(results)))


# -- the stability ablation (issue 28): does a metric's seed stability predict its selection's score? ----------
STABILITY_POLICIES = {"actnorm": "actnorm-top(L/2)", "cka": "cka", "resnorm": "budget", "snr": "snr-top(L/2)"}
"""The metrics whose half-the-blocks selection ran at convergence, and the policy that ranks by each."""


def stability_vs_score(results: Path, tasks: dict[str, list[dict]]) -> str:
    """For every (task, metric) with both a seed-stability study (``results/stability/<model>.json``, written by
    ``layerwise stability``) and a converged selection ranking by that metric: the metric's mean pairwise Kendall
    tau across calibration seeds, the selection's dev score against uniform LoRA, and Spearman's rank correlation
    over the pairs (with its n and p), also without the data-free ``snr`` (stable by construction)."""
    from scipy.stats import spearmanr

    rows = []
    for path in sorted((results / "stability").glob("*.json")) if (results / "stability").is_dir() else []:
        study = json.loads(path.read_text())
        for task, entry in sorted(study.get("tasks", {}).items()):
            key = f"{path.stem}-{task}"
            records = tasks.get(key)
            if not records:
                continue
            groups = _main_groups(records, _base_lr(records))
            base = groups.get(BASELINE)
            if not base:
                continue
            base_dev = _dev_stats(base)[0]
            n_layers = len(base[0]["layers"] or [])
            by_policy = {policy_of(m, n_layers): m for m in groups}
            for metric, policy in STABILITY_POLICIES.items():
                method = by_policy.get(policy)
                stats = entry.get("metrics", {}).get(metric)
                if method is None or stats is None or base_dev is None:
                    continue
                dev, _, n = _dev_stats(groups[method])
                rows.append({"task": key, "metric": metric, "tau": stats["kendall_tau_mean"],
                             "tau_std": stats["kendall_tau_std"], "seeds": len(study.get("seeds", [])),
                             "method": method, "n": n,
                             "diff": _points_vs(dev, base_dev, base[0].get("higher_is_better", True))})
    if not rows:
        return ""
    lines = ["| task | metric | seed stability: Kendall tau (mean ± std over pairs) | calibration seeds | selection | "
             "vs uniform (dev) | training seeds |", "|---|---|---:|---:|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['metric']} | {r['tau']:.3f} ± {r['tau_std']:.3f} | {r['seeds']} | "
                     f"{r['method']} | {r['diff']:+.1f} pts | {r['n']} |")
    lines.append("")
    for label, subset in (("all pairs", rows), ("without snr (data-free: stable by construction)",
                                                [r for r in rows if r["metric"] != "snr"])):
        if len(subset) < 3:
            continue
        res = spearmanr([r["tau"] for r in subset], [r["diff"] for r in subset])
        lines.append(f"Spearman's rho between seed stability and score, {label}: {res.statistic:+.2f} "
                     f"(n={len(subset)}, p={res.pvalue:.2f}).")
    return "\n".join(lines) + "\n"


def regenerate_stability(text: str, results: Path) -> str:
    """``text`` with :func:`stability_vs_score` between ``<!-- stability-vs-score:begin -->`` and
    ``<!-- stability-vs-score:end -->`` (unchanged without the markers)."""
    return _replace_block(text, "stability-vs-score", lambda: stability_vs_score(results, task_records(results)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(ROOT / "benchmarks/results"))
    p.add_argument("--doc", default=str(ROOT / "docs/BENCHMARKS.md"))
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    doc = Path(args.doc)
    text = doc.read_text()
    new, missing = regenerate(text, Path(args.results), draw=not args.check, img=doc.parent / "img")
    new = regenerate_stability(new, Path(args.results))
    readme = Path(args.readme)
    readme_text = readme.read_text()
    readme_new = regenerate_default(regenerate_readme(readme_text, Path(args.results)), Path(args.results))
    for key in missing:
        print(f"{doc}: no markers for {key if key.startswith('freeze ') else 'results ' + key} "
              f"(add <!-- ... begin --> and <!-- ... end -->)")
    if args.check:
        stale = [str(path) for path, old, fresh in ((doc, text, new), (readme, readme_text, readme_new)) if old != fresh]
        for path in stale:
            print(f"{path} differs from the tables the result files give: run python benchmarks/tables.py")
        return 1 if stale else 0
    from layerwise.runtime.io import atomic_write_text

    for path, old, fresh in ((doc, text, new), (readme, readme_text, readme_new)):
        if old != fresh:
            atomic_write_text(path, fresh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
