"""The Layer Card: per-layer metrics measured on calibration batches (the probe) or on the weights, their
stability and cost, and the card that records and renders them (``profile_layers`` makes one).
"""

from typing import Any


def __getattr__(name: str) -> Any:
    # layerwise.card was the module layerwise.card.layer_card until 0.1: its names still resolve here, with a
    # DeprecationWarning, for one release.
    from layerwise._deprecated import forward

    return forward(__name__, name)
