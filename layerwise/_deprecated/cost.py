"""Deprecated path of :mod:`layerwise.card.cost` (one release): warns, then is that module."""

from layerwise._deprecated import alias

alias(__name__)
