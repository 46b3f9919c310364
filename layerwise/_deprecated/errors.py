"""Deprecated path of :mod:`layerwise.runtime.errors` (one release): warns, then is that module."""

from layerwise._deprecated import alias

alias(__name__)
