"""Deprecated path of :mod:`layerwise.adapters.lalora` (one release): warns, then hands out its names."""

from typing import Any

from layerwise._deprecated import package

package(__name__)


def __getattr__(name: str) -> Any:
    import layerwise.adapters.lalora as moved

    return getattr(moved, name)
