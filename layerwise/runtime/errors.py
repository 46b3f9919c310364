"""Exceptions that carry a user-facing message (the CLI prints them without a traceback)."""

from __future__ import annotations

__all__ = ["LayerwiseError", "DataError", "ModelError", "ConfigError"]


class LayerwiseError(Exception):
    """Base class for errors caused by user input: bad flags, files, models or data."""


class ConfigError(LayerwiseError, ValueError):
    """A flag or argument has a value outside what is allowed; the message names the flag."""


class DataError(LayerwiseError, ValueError):
    """A data file or data set cannot be read as the task needs; the message names file and line."""


class ModelError(LayerwiseError, ValueError):
    """A model cannot be resolved, loaded or analysed; the message names the model and the fix."""
