"""Deprecated path of :mod:`layerwise.card.probe` (one release): warns, then hands out its names."""

from typing import Any

from layerwise._deprecated import package

package(__name__)


def __getattr__(name: str) -> Any:
    import layerwise.card.probe as moved

    return getattr(moved, name)
