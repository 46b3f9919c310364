"""Deprecated path of :mod:`layerwise.data.task_metrics` (one release): warns, then is that module."""

from layerwise._deprecated import alias

alias(__name__)
