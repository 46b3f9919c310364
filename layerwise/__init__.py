"""layerwise: decide where LoRA goes in a transformer, and how much of it.

The package import is cheap on purpose (no torch, no transformers): the heavy parts are imported
by the modules that need them, so ``layerwise --help`` answers instantly.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
