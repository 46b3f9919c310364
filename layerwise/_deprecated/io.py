"""Deprecated path of :mod:`layerwise.runtime.io` (one release): warns, then is that module."""

from layerwise._deprecated import alias

alias(__name__)
