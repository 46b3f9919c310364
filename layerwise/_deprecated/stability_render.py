"""Deprecated path of :mod:`layerwise.evaluate.stability_render` (one release): warns, then is that module."""

from layerwise._deprecated import alias

alias(__name__)
