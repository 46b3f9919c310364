"""layerwise: decide where LoRA goes in a transformer, and how much of it.

The package import is cheap on purpose (no torch, no transformers): the heavy parts are imported
by the modules that need them, so ``layerwise --help`` answers instantly.
"""

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "suggest", "Suggestion", "prepare_gradient_checkpointing"]


def __getattr__(name: str) -> Any:
    """``layerwise.suggest`` and ``layerwise.Suggestion``, imported on first use (PEP 562) so that
    ``import layerwise`` stays cheap. They live in ``layerwise.adapters.suggestion``: a submodule named ``suggest``
    would replace the function on the package once imported."""
    if name in ("suggest", "Suggestion"):
        from layerwise.adapters import suggestion as module

        return getattr(module, name)
    if name == "prepare_gradient_checkpointing":  # for Trainer / TRL users (layerwise.train.prefix.recompute)
        from layerwise.train.prefix.recompute import prepare_gradient_checkpointing

        return prepare_gradient_checkpointing
    raise AttributeError(f"module 'layerwise' has no attribute {name!r}")
