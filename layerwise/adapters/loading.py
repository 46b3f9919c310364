"""``load_adapter(dir)``: a saved layerwise adapter folder back as a ready model, in one call.

A folder written by ``layerwise train`` or ``layerwise run`` (``adapter/``, ``best/``) is a standard peft folder
plus ``layerwise_base.json`` (:data:`BASE_RECORD`): the base model's portable name (an alias such as
``minilm``, a hub id or the user's own folder), its transformers class and head, the label count and the class
names. :func:`load_adapter` resolves the name (bundled aliases included), loads the base with that head and
those class names (``config.id2label``/``label2id``, where transformers reads them), and puts the adapter on it
with ``peft.PeftModel.from_pretrained``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerwise.runtime.errors import ConfigError

if TYPE_CHECKING:
    from peft import PeftModel

__all__ = ["BASE_RECORD", "LoadedAdapter", "load_adapter", "read_base_record"]

BASE_RECORD = "layerwise_base.json"
"""The file in an adapter folder naming the base model, its class and head, so it loads elsewhere."""


@dataclass(frozen=True)
class LoadedAdapter:
    """A base model with its head and the trained adapter on it, its tokenizer and its class names."""

    model: PeftModel = field(repr=False)
    """The base model with the adapter (a ``peft.PeftModel``), in eval mode."""
    tokenizer: Any = field(repr=False)
    """The base model's tokenizer."""
    base_model: str
    """The base model's portable name (alias, hub id or folder), as recorded."""
    head: str
    """``classification``, ``regression``, ``causal-lm`` or ``base``."""
    id2label: dict[int, str] | None
    """Class index -> class name for a classification head (None otherwise)."""

    @property
    def labels(self) -> list[str] | None:
        """The class names in index order (None without a classification head)."""
        return None if self.id2label is None else [self.id2label[i] for i in sorted(self.id2label)]


def read_base_record(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """``layerwise_base.json`` of ``adapter_dir``; a folder without it is a ConfigError naming the folder."""
    folder = Path(adapter_dir)
    if (folder / "adapter").is_dir() and not (folder / "adapter_config.json").exists():
        folder = folder / "adapter"  # a run folder: its final adapter
    path = folder / BASE_RECORD
    if not (folder / "adapter_config.json").is_file():
        raise ConfigError(f"{adapter_dir}: no adapter_config.json; give an adapter folder written by "
                          "`layerwise train` (runs/x/adapter or runs/x/best) or the run folder")
    if not path.is_file():
        raise ConfigError(f"{adapter_dir}: no {BASE_RECORD}; this adapter was not written by layerwise: load it "
                          "with peft.PeftModel.from_pretrained on its base model")
    record = json.loads(path.read_text(encoding="utf-8"))
    record["folder"] = str(folder)
    return record


def load_adapter(adapter_dir: str | os.PathLike, *, device: Any = None, dtype: str = "float32",
                 trust_remote_code: bool = False) -> LoadedAdapter:
    """The base model (resolved from its recorded name, bundled aliases included) with its head and class
    names, the trained adapter on it, and the tokenizer; ``adapter_dir`` is an adapter folder or a run folder
    (its ``adapter/``). ``device`` moves the model there (default: CPU)."""
    record = read_base_record(adapter_dir)
    import peft

    from layerwise.models.loading import load_model

    head = record.get("head", "base")
    names = record.get("id2label")
    id2label = {int(i): str(n) for i, n in names.items()} if names else None
    loaded = load_model(record["base_model"], head=head, num_labels=record.get("num_labels"),
                        trust_remote_code=trust_remote_code, dtype=dtype)
    base = loaded.model
    if head == "classification":
        if id2label is None:
            id2label = {i: f"LABEL_{i}" for i in range(int(record["num_labels"]))}
        base.config.id2label = dict(id2label)
        base.config.label2id = {n: i for i, n in id2label.items()}
    model = peft.PeftModel.from_pretrained(base, record["folder"])
    if device is not None:
        model = model.to(device)
    return LoadedAdapter(model=model.eval(), tokenizer=loaded.tokenizer, base_model=record["base_model"], head=head,
                         id2label=id2label if head == "classification" else None)
