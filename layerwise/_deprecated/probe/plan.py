"""Deprecated path of :mod:`layerwise.card.probe.plan` (one release): warns, then is that module."""

from layerwise._deprecated import alias

alias(__name__)
