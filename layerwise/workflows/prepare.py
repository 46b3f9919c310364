"""The setup every workflow shares: load the task, load the model with the head it needs, move it to the
device and find its layer stack, once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from layerwise.settings import DataSource, ModelSource

__all__ = ["Prepared", "prepare", "model_source", "data_source", "fits_positions", "load_precision",
           "load_source"]


@dataclass
class Prepared:
    """A task and a model ready for a workflow."""

    task: Any
    """The loaded task (:class:`layerwise.data.TaskData`: spec, train and dev examples)."""
    loaded: Any
    """The loaded model (:class:`layerwise.models.LoadedModel`: model, tokenizer, fingerprint, source)."""
    stack: Any
    """The model's transformer blocks (:class:`layerwise.models.layers.LayerStack`)."""
    device: Any
    """The ``torch.device`` the model is on."""


def model_source(model: ModelSource | str) -> ModelSource:
    """A :class:`ModelSource` from itself or a model name (alias, folder, .gguf or hub id)."""
    return model if isinstance(model, ModelSource) else ModelSource(model)


def data_source(data: DataSource | str) -> DataSource:
    """A :class:`DataSource` from itself or a task name (for tasks that need no ``--data``)."""
    return data if isinstance(data, DataSource) else DataSource(data)


def prepare(model: ModelSource | str, data: DataSource | str, device: Any, task: Any = None) -> Prepared:
    """Load ``data`` (or use the already loaded ``task``) and ``model`` with the task's head, in the model's
    ``--dtype`` (and ``--quantize``) as ``device`` allows, put it on ``device`` (resolved with
    :func:`layerwise.runtime.device.resolve_device`) and find its layer stack."""
    from layerwise.models.layers import find_layer_stack

    model, data = model_source(model), data_source(data)
    precision = load_precision(model, device)  # refused before the data or the weights are read
    task_data = task if task is not None else data.load()
    spec = task_data.task
    loaded = load_source(model, device, precision, head=spec.head, num_labels=spec.num_labels)
    if spec.head == "classification" and spec.label_names:  # the class names, where transformers reads them
        loaded.model.config.id2label = dict(enumerate(spec.label_names))
        loaded.model.config.label2id = {name: i for i, name in enumerate(spec.label_names)}
    fits_positions(data.max_length, loaded.model)
    return Prepared(task_data, loaded, find_layer_stack(loaded.model, model.layers_path), device)


def load_precision(model: ModelSource, device: Any) -> tuple[str, Any]:
    """The concrete dtype of ``model.dtype`` on ``device`` and its quantization config (None without
    ``--quantize``); a dtype or quantization the device lacks is a ``ConfigError`` naming the flag."""
    from layerwise.models.precision import check_quantization, quantization_config, resolve_dtype
    from layerwise.settings import flag_name

    dtype = resolve_dtype(model.dtype, device, flag_name(model, "dtype"))
    check_quantization(model.quantize, device, flag_name(model, "quantize"))
    return dtype, quantization_config(model.quantize, dtype)


def load_source(model: ModelSource, device: Any, precision: tuple[str, Any], **head: Any) -> Any:
    """``load_model`` with ``model``'s settings and ``precision`` (from :func:`load_precision`), on ``device``."""
    from layerwise.models import load_model

    dtype, quantization = precision
    loaded = load_model(model.model, cache_dir=model.cache_dir, trust_remote_code=model.trust_remote_code,
                        dtype=dtype, quantization=quantization, device=device, **head)
    if quantization is None:  # a quantized model is placed while loading and cannot be moved
        loaded.model.to(device)
    return loaded


def fits_positions(max_length: int, model: Any) -> None:
    """Refuse a ``--max-length`` beyond the positions the model can embed (``max_position_embeddings``, less
    the padding offset of RoBERTa-style position ids): the first batch with a longer example would fail deep
    in the model with a tensor size mismatch, after the loading (and in ``run`` after the whole card stage)."""
    import torch

    from layerwise.runtime.errors import ConfigError

    limit = getattr(model.config, "max_position_embeddings", None)
    if not isinstance(limit, int):
        return
    limit -= next((m.padding_idx + 1 for m in model.modules()  # position ids after the padding index (RoBERTa)
                   if isinstance(m, torch.nn.Embedding) and m.num_embeddings == limit and m.padding_idx is not None),
                  0)
    if max_length > limit:
        raise ConfigError(f"--max-length {max_length} is more than the {limit} positions this model can embed "
                          f"({type(model).__name__}: max_position_embeddings); use --max-length {limit} or less")
