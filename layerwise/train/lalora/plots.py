"""``ranks.png``: the rank of each adapted block over training (with the budget) and the final ranks as bars."""

from __future__ import annotations

import os
from pathlib import Path

from layerwise.train.lalora.history import RankHistory
from layerwise.runtime.io import atomic_write_with

__all__ = ["PLOT_NAME", "plot_ranks"]

PLOT_NAME = "ranks.png"


def plot_ranks(history: RankHistory, out_path: str | os.PathLike) -> Path:
    """Draw rank per block over steps (left, budget / L dashed) and final rank per block (right), atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    over_time, final = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2, 1]})
    num = len(history.blocks)
    for col, block in enumerate(history.blocks):
        over_time.step(history.steps, [row[col] for row in history.ranks], where="post", lw=1.0,
                       label=f"block {block}")
    if history.steps and num:
        over_time.plot(history.steps, [b / num for b in history.budget], "k--", lw=1.0, label="budget / L")
    over_time.set(title="rank per block (La-LoRA)", xlabel="optimizer step", ylabel="rank",
                  ylim=(0, history.r_max + 0.5))
    if num <= 16:
        over_time.legend(fontsize="small", ncol=2 if num > 8 else 1, loc="upper left")
    last = history.ranks[-1] if history.ranks else [0] * num
    final.bar([str(b) for b in history.blocks], last, color="tab:green")
    final.axhline(history.r_max, color="gray", lw=0.8, ls=":")
    final.set(title=f"final ranks (sum {sum(last)}, r_max {history.r_max})", xlabel="block", ylabel="rank",
              ylim=(0, history.r_max + 0.5))
    for ax in (over_time, final):
        ax.grid(alpha=0.3)
    return atomic_write_with(out_path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
