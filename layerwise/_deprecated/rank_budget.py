"""Deprecated path of :mod:`layerwise.selection.rank_budget` (one release): warns, then is that module."""

from layerwise._deprecated import alias

alias(__name__)
