"""La-LoRA: layer-wise adaptive LoRA ranks during training, with truncated compute and a standard peft export.

Modules, one concept each: :mod:`.allocator` (Eq. 5-10 as pure functions), :mod:`.truncation` (the truncated
forward), :mod:`.pruned` (the pruned part and its optimizer state kept exactly), :mod:`.callback` (``LaLoRA``),
:mod:`.history` (``rank_history.json``), :mod:`.export` (peft folder with ``rank_pattern``), :mod:`.plots`
(``ranks.png``) and :mod:`.trainer` (``LaLoRATrainerCallback``: La-LoRA in the Hugging Face Trainer). Names load on first use, so importing the package does not import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["LaLoRA", "NonFiniteNormError", "export_adapter", "plot_ranks", "RankHistory", "read_history",
           "DEFAULT_GAMMA", "LaLoRATrainerCallback"]

_LAZY = {
    "LaLoRA": "layerwise.train.lalora.callback",
    "NonFiniteNormError": "layerwise.train.lalora.callback",
    "export_adapter": "layerwise.train.lalora.export",
    "plot_ranks": "layerwise.train.lalora.plots",
    "RankHistory": "layerwise.train.lalora.history",
    "read_history": "layerwise.train.lalora.history",
    "DEFAULT_GAMMA": "layerwise.train.lalora.allocator",
    "LaLoRATrainerCallback": "layerwise.train.lalora.trainer",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'layerwise.train.lalora' has no attribute {name!r}")
