"""Training: an explicit loop with named phases, evaluation, checkpoints and exact resume.

``TrainConfig`` and ``evaluate`` are imported eagerly (neither imports torch at import time; ``evaluate``
must be, or its own module ``layerwise.train.evaluate`` would shadow it here once imported). The rest loads
on first use so importing the package stays cheap, ``PhaseTimingCallback`` (transformers) included.
"""

from __future__ import annotations

from typing import Any

from layerwise.train.config import TrainConfig
from layerwise.train.evaluate import evaluate

__all__ = ["TrainConfig", "train", "TrainResult", "TrainState", "evaluate", "PhaseTimer", "PhaseTimingCallback",
           "FrozenPrefixCallback", "FreezeTrainerCallback"]

_LAZY = {
    "train": "layerwise.train.loop",
    "TrainResult": "layerwise.train.loop",
    "TrainState": "layerwise.train.state",
    "PhaseTimer": "layerwise.train.phases",
    "PhaseTimingCallback": "layerwise.train.callback",
    "FrozenPrefixCallback": "layerwise.train.prefix.callback",
    "FreezeTrainerCallback": "layerwise.train.callback",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'layerwise.train' has no attribute {name!r}")
