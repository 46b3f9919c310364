"""``plots.png``: the training-loss curve and the dev main-metric curve of a run, drawn from its train log."""

from __future__ import annotations

import os
from pathlib import Path

from layerwise.runtime.io import atomic_write_with
from layerwise.train.log import eval_lines, read_log, step_lines

__all__ = ["plot_training", "plot_freezing"]


def plot_training(log_path: str | os.PathLike, out_path: str | os.PathLike, main_metric: str) -> Path:
    """Draw loss per step (left) and ``main_metric`` per evaluation (right) into a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
    from matplotlib.figure import Figure

    records = read_log(log_path)
    steps = [(r["step"], r["loss"]) for r in step_lines(records) if r.get("loss") is not None]
    evals = [(r["step"], r["eval"][main_metric]) for r in eval_lines(records)
             if r["eval"].get(main_metric) is not None]
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, metric_ax = fig.subplots(1, 2)
    if steps:
        loss_ax.plot(*zip(*steps), lw=1.0, color="tab:blue")
    loss_ax.set(title="training loss", xlabel="optimizer step", ylabel="loss")
    if len(evals) > 1:
        metric_ax.plot(*zip(*evals), marker="o", color="tab:orange")
    elif evals:  # one evaluation: a labelled bar at its step, not a lone dot
        (step, value), = evals
        bars = metric_ax.bar([step], [value], width=max(1.0, 0.1 * step), color="tab:orange")
        metric_ax.bar_label(bars, labels=[f"{value:.4f} at step {step}"], fontsize=9)
        metric_ax.set_xlim(0, max(2 * step, 2))
        metric_ax.set_ylim(min(0.0, value) * 1.15, max(value, 1e-9) * 1.2)
    metric_ax.set(title=f"dev {main_metric}" + (" (one evaluation)" if len(evals) == 1 else ""),
                  xlabel="optimizer step", ylabel=main_metric)
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
    return atomic_write_with(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def plot_freezing(record: dict, steps: int, out_path: str | os.PathLike) -> Path:
    """``freeze.png``: trainable adapted blocks over the steps (left) and the step each block froze at
    (right, with the card's schedule when there is one), from the ``freeze`` record of ``metrics.json``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    depth_ax, step_ax = fig.subplots(1, 2)
    points = [list(p) for p in record["depth"]] + [[steps, record["depth"][-1][1]]]
    depth_ax.step([p[0] for p in points], [p[1] for p in points], where="post", color="tab:blue")
    depth_ax.set(title=f"trainable depth (--freeze {record['mode']})", xlabel="optimizer step",
                 ylabel="adapted blocks still training")
    blocks = record["blocks"]
    frozen = [(b, s) for b, s in zip(blocks, record["freeze_step"].values()) if s is not None]
    if frozen:
        step_ax.plot([b for b, _ in frozen], [s for _, s in frozen], marker="o", ls="", color="tab:orange",
                     label="observed")
    if record.get("card_schedule"):
        step_ax.plot(blocks[: len(record["card_schedule"])], record["card_schedule"], marker="x", ls="--",
                     color="tab:gray", label="card schedule")
    step_ax.set(title="freeze step per block", xlabel="block", ylabel="frozen after step", ylim=(0, steps))
    if frozen or record.get("card_schedule"):
        step_ax.legend(loc="best")
    for ax in (depth_ax, step_ax):
        ax.grid(alpha=0.3)
    return atomic_write_with(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
