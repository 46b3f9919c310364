"""Selection: policies that choose layers from a card, and the split of a rank budget over them."""

from typing import Any


def __getattr__(name: str) -> Any:
    # layerwise.selection was the module layerwise.selection.policies until 0.1: its names still resolve here,
    # with a DeprecationWarning, for one release.
    from layerwise._deprecated import forward

    return forward(__name__, name)
