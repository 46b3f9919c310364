"""Deprecated path of :mod:`layerwise.card.profiling` (one release): warns, then is that module."""

from layerwise._deprecated import alias

alias(__name__)
