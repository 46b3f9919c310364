"""Deprecated path of :mod:`layerwise.card.stability` (one release): warns, then is that module."""

from layerwise._deprecated import alias

alias(__name__)
