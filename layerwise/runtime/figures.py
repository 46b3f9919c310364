"""Figures drawn without pyplot: a :class:`matplotlib.figure.Figure` on its own Agg canvas, so drawing a PNG
neither selects a backend for the user's process nor registers figures in pyplot's global state."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = ["new_figure", "save_png"]


def new_figure(figsize: tuple[float, float]) -> Any:
    """An empty ``Figure`` of ``figsize`` inches attached to an Agg canvas (freed with its last reference)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Lay ``fig`` out tightly and write it to ``path`` as a PNG, atomically."""
    from layerwise.runtime.io import atomic_write_with

    fig.tight_layout()
    return atomic_write_with(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
