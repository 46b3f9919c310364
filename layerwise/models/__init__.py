"""Model resolution and loading: local directories, bundled offline aliases, hub ids, GGUF conversion."""

from layerwise.models.aliases import BUNDLED_MODELS, BundledModel, bundled_model
from layerwise.models.resolve import ModelSource, resolve_model

__all__ = ["BUNDLED_MODELS", "BundledModel", "ModelSource", "bundled_model", "resolve_model", "load_model"]


def __getattr__(name: str):
    # load_model imports torch and transformers: keep it out of the package import.
    if name in ("load_model", "LoadedModel", "HEADS"):
        from layerwise.models import loading

        return getattr(loading, name)
    raise AttributeError(name)
