"""Load a model with a task head and its tokenizer from any resolvable name."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layerwise.runtime.errors import ConfigError, ModelError
from layerwise.models.resolve import ModelSource, resolve_model
from layerwise.runtime.quiet import transformers_errors_only

__all__ = ["fault", "HEADS", "LoadedModel", "load_model", "load_tokenizer", "model_fingerprint"]

HEADS = ("classification", "regression", "causal-lm", "base")
"""Task heads: sequence classification with k labels, regression (one output), causal LM, or none."""


@dataclass
class LoadedModel:
    """A model, its tokenizer, where it came from and the head it carries."""

    model: Any
    tokenizer: Any
    source: ModelSource
    head: str

    @property
    def fingerprint(self) -> dict:
        """Name, config hash and parameter count; cards refuse models whose fingerprint differs."""
        return model_fingerprint(self.model, self.source.name)


def model_fingerprint(model: Any, name: str) -> dict:
    """A stable identity for a model's architecture and size (not its fine-tuned weights).

    The hash covers the config fields that define the architecture, so the same base model loaded
    with another head or on another machine keeps its fingerprint.
    """
    cfg = model.config.to_dict()
    keep = {k: cfg.get(k) for k in sorted(cfg) if k in _ARCH_KEYS}
    keep["model_type"] = cfg.get("model_type")
    digest = hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]
    base = getattr(model, "base_model", model)
    if hasattr(base, "get_base_model"):
        base = base.get_base_model()
    params = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n and not _is_head(n))
    prefix = getattr(model, "base_model_prefix", None)
    return {"name": name, "model_type": cfg.get("model_type"), "config_hash": digest, "parameters": params,
            **({"base_model_prefix": prefix} if isinstance(prefix, str) else {})}


_ARCH_KEYS = {
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
    "vocab_size", "n_embd", "n_layer", "n_head", "dim", "n_layers", "hidden_dim", "head_dim",
    "max_position_embeddings", "n_positions", "type_vocab_size", "hidden_act", "activation_function",
}

_HEAD_PREFIXES = ("classifier", "score", "lm_head", "pre_classifier", "qa_outputs")


def _is_head(param_name: str) -> bool:
    return any(part in _HEAD_PREFIXES for part in param_name.split("."))


def fault(err: BaseException, folder: str, part: str) -> str:
    """One line saying which file of a model ``folder`` is at fault and what is wrong with it.

    ``part`` is what was being read ('tokenizer' or 'weights'); the file is told from the error: a JSON syntax
    error is config.json (or tokenizer.json for the tokenizer), a safetensors error the weights file, a pickle
    refused the .bin file."""
    # transformers names its keyword argument; the user of this command types the flag
    text = " ".join(str(err).split()).replace("`trust_remote_code=True`", "--trust-remote-code")
    text = text.replace("trust_remote_code=True", "--trust-remote-code")
    text = text if len(text) <= 240 else text[:237] + "..."
    path = Path(folder)
    kind = type(err).__name__
    if not path.is_dir():  # a hub id: the network or the name
        return f"{folder}: {text} (a hub id needs the network or the Hugging Face cache; HF_HUB_OFFLINE is " \
               f"{os.environ.get('HF_HUB_OFFLINE', 'unset')})"
    if "safetensor" in kind.lower() or "safetensor" in text.lower() or "header" in text.lower():
        files = sorted(p.name for p in path.glob("*.safetensors"))
        return f"{path / (files[0] if len(files) == 1 else '*.safetensors')} is corrupt or truncated ({text})"
    if any(w in text.lower() for w in ("pickle", "weights_only", "weights only", "torch.load")):
        return f"{path} holds pickled weights (.bin) that are not loaded for safety; convert them to safetensors"
    if part == "tokenizer" and (path / "tokenizer.json").exists() and "config.json" not in text:
        return f"{path / 'tokenizer.json'} cannot be read ({kind}: {text})"
    if isinstance(err, (ValueError, OSError)) and ("json" in text.lower() or "decode" in text.lower()
                                                   or "config" in text.lower()):
        return f"{path / 'config.json'} cannot be read ({kind}: {text})"
    return f"{path}: {kind}: {text}"


def load_tokenizer(source: ModelSource, trust_remote_code: bool = False) -> Any:
    """Load the tokenizer and make sure it can pad (decoders often lack a pad token: EOS is used)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except Exception as err:  # tokenizers, json and transformers raise many types for a bad or missing file
        if source.kind == "hub" and "/" not in source.name:  # a mistyped alias reads as a hub id without a namespace
            from layerwise.models.aliases import BUNDLED_MODELS

            raise ModelError(f"unknown model {source.name!r}: not a directory, .gguf file or bundled alias "
                             f"({', '.join(BUNDLED_MODELS)}), and not loadable as a hub id: "
                             f"{fault(err, source.path, 'tokenizer')}") from err
        raise ModelError(f"could not load the tokenizer of {source.name!r}: {fault(err, source.path, 'tokenizer')}"
                         ) from err
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"tokenizer of {source.name!r} has neither a pad nor an EOS token to pad with")
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    name: str,
    head: str = "classification",
    num_labels: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False,
    dtype: str = "float32",
    seed: int = 0,
    quantization: Any = None,
    device: Any = None,
) -> LoadedModel:
    """Resolve ``name`` and load it with a task ``head`` (one of :data:`HEADS`).

    ``num_labels`` is required for ``classification``. Weights the checkpoint lacks (a new task head) are
    initialised from ``seed``, so two loads give the same head (the global RNG is left as it was).
    Remote code runs only with
    ``trust_remote_code=True`` (the CLI's ``--trust-remote-code``). Weights load from safetensors
    wherever the model folder has them. ``dtype`` is a concrete dtype name (see
    :func:`layerwise.models.precision.resolve_dtype` for ``auto``); ``quantization`` a transformers
    quantization config (:func:`layerwise.models.precision.quantization_config`), whose weights are placed on
    ``device`` while loading (a quantized model cannot be moved afterwards).
    """
    import torch
    import transformers

    if head not in HEADS:
        raise ConfigError(f"--head must be one of {', '.join(HEADS)}, got {head!r}")
    if head == "classification" and (num_labels is None or num_labels < 2):
        raise ConfigError(f"a classification head needs num_labels >= 2, got {num_labels}")
    source = resolve_model(name, cache_dir, trust_remote_code)
    tokenizer = load_tokenizer(source, trust_remote_code)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": getattr(torch, dtype)}
    if source.kind != "hub" and any(Path(source.path).glob("*.safetensors")):
        kwargs["use_safetensors"] = True
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = {"": str(device if device is not None else "cuda")}
    auto, extra = _auto_class(transformers, head, num_labels)
    try:
        # The load report (e.g. "classifier.weight MISSING" for a fresh head) is expected, not news.
        with transformers_errors_only(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, info = auto.from_pretrained(source.path, **kwargs, **extra, output_loading_info=True)
    except Exception as err:  # a corrupt config.json, a truncated safetensors file, a pickle refused, offline hub
        raise ModelError(f"could not load {name!r} with a {head} head: {fault(err, source.path, 'weights')}"
                         ) from err
    # Only a new task head may be missing from the checkpoint: any other weight left at its random
    # initialisation (e.g. a tied embedding stored under the LM head's name) is a model that cannot learn.
    missing = [k for k in info.get("missing_keys", ()) if not _is_head(k)]
    if missing:
        shown = ", ".join(sorted(missing)[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ModelError(f"could not load {name!r} with a {head} head: {source.path} lacks {shown} (only a new "
                         "task head may be missing; the rest would be random weights)")
    # peft records this as the adapter's base_model_name_or_path: the alias or hub id, not the folder in the venv
    model.name_or_path = source.portable_name
    if getattr(model.config, "pad_token_id", None) is None and tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, head=head)


def _auto_class(transformers: Any, head: str, num_labels: int | None) -> tuple[Any, dict]:
    if head == "classification":
        return transformers.AutoModelForSequenceClassification, {
            "num_labels": num_labels, "problem_type": "single_label_classification"}
    if head == "regression":
        return transformers.AutoModelForSequenceClassification, {"num_labels": 1, "problem_type": "regression"}
    if head == "causal-lm":
        return transformers.AutoModelForCausalLM, {}
    return transformers.AutoModel, {}
