"""Deprecated path of :mod:`layerwise.evaluate.inference` (one release): warns, then is that module."""

from layerwise._deprecated import alias

alias(__name__)
