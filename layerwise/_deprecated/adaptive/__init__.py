"""Deprecated path of :mod:`layerwise.train.lalora` (one release): warns, then hands out its names."""

from typing import Any

from layerwise._deprecated import package

package(__name__)


def __getattr__(name: str) -> Any:
    import layerwise.train.lalora as moved

    return getattr(moved, name)
