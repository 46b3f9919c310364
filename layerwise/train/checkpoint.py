"""Resumable checkpoints and adapter folders, each written to a temporary folder and renamed into place.

``out_dir/checkpoint/`` holds:

- ``trainable.safetensors``: every parameter with ``requires_grad`` (adapter and head), by name;
- ``optimizer.pt`` / ``scheduler.pt``: state dicts of tensors, numbers and plain containers only, so
  ``torch.load(..., weights_only=True)`` reads them (no arbitrary pickles);
- ``rng.safetensors``: the torch CPU (and CUDA) generator states (in a data-parallel run rank ``r > 0``'s are
  in ``rng_rank<r>.safetensors``: dropout draws differ per rank);
- ``state.json``: :class:`TrainState`, the python/numpy RNG states, the run's config (with the size of its
  training data) and the trainable parameter names;
- ``callbacks.pt`` (only when a callback has ``state_dict()``/``load_state_dict()``, e.g. La-LoRA's ranks):
  each such callback's state by its key (class name, ``#2`` ... for repeats), as plain containers of tensors
  and numbers (``weights_only=True``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from layerwise.adapters.loading import BASE_RECORD
from layerwise.runtime.errors import ConfigError, ModelError
from layerwise.runtime.io import atomic_write_json, atomic_write_text, follow_umask, temp_dir_beside
from layerwise.train.hooks import Stateful
from layerwise.train.log import json_safe
from layerwise.train.state import TrainState

__all__ = ["CHECKPOINT_DIR", "CALLBACKS_FILE", "SCHEMA_VERSION", "replace_dir", "save_adapter", "save_checkpoint",
           "load_checkpoint", "find_checkpoint", "trainable_parameters", "stateful_callbacks"]

CHECKPOINT_DIR = "checkpoint"
CALLBACKS_FILE = "callbacks.pt"
SCHEMA_VERSION = 1
"""Version of the checkpoint layout (``state.json``) and of ``metrics.json``."""

_PLAIN = (int, float, bool, str, type(None))


def trainable_parameters(model: Any) -> dict[str, Any]:
    """Name -> parameter of every parameter that requires grad, in ``named_parameters`` order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def replace_dir(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_dir)``, then swap ``tmp_dir`` in for ``path`` (the old one is kept as ``path.old``
    until the new one is in place, so a crash leaves one complete copy)."""
    path = Path(path)
    tmp = temp_dir_beside(path)
    try:
        write(tmp)
        follow_umask(tmp)  # safetensors makes its files 0o600
        old = path.with_name(path.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def save_adapter(model: Any, path: str | os.PathLike) -> Path:
    """``model.save_pretrained(path)`` (a standard peft adapter folder), written atomically.

    In a data-parallel run only rank 0 writes (the weights are the same on every rank).
    """
    from layerwise.runtime import distributed

    if not distributed.is_main():
        return Path(path)

    def write(tmp: Path) -> None:
        # layerwise never adapts embeddings; "auto" would look the base model's name up on the hub
        model.save_pretrained(str(tmp), save_embedding_layers=False)
        write_base_record(model, tmp)
        portable_model_card(tmp)

    return replace_dir(path, write)




def base_record(model: Any) -> dict[str, Any]:
    """What loading the adapter on another machine needs besides ``adapter_config.json``: the base model's
    name (alias, hub id or the user's folder), the transformers class with its head, and the label count."""
    from layerwise.models.layers import unwrap_model

    base = unwrap_model(model)
    name = type(base).__name__
    head = ("classification" if name.endswith("ForSequenceClassification") else
            "causal-lm" if name.endswith(("ForCausalLM", "LMHeadModel")) else "base")
    record: dict[str, Any] = {"schema_version": 1, "base_model": base.__dict__.get("name_or_path"),
                              "model_class": name, "head": head}
    if head == "classification" and getattr(base.config, "problem_type", None) == "regression":
        record["head"] = "regression"
    if head == "classification":
        record["num_labels"] = int(base.config.num_labels)
        record["problem_type"] = getattr(base.config, "problem_type", None)
        names = {int(i): str(n) for i, n in (getattr(base.config, "id2label", None) or {}).items()}
        if names and names != {i: f"LABEL_{i}" for i in range(len(names))}:  # the task's class names
            record["id2label"] = {str(i): names[i] for i in sorted(names)}
            record["label2id"] = {n: i for i, n in sorted(names.items())}
    return record


def portable_model_card(folder: str | os.PathLike) -> None:
    """peft's model card (``README.md``) names the base by the folder it was loaded from (for a bundled alias,
    a path inside the virtualenv); write there the portable name ``adapter_config.json`` holds."""
    card, config = Path(folder) / "README.md", Path(folder) / "adapter_config.json"
    if not card.is_file() or not config.is_file():
        return
    name = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    text = card.read_text(encoding="utf-8")
    if not name or not text.startswith("---"):
        return
    end = text.find("\n---", 3)
    head = "\n".join(f"base_model: {json.dumps(name)}" if line.startswith("base_model:") else line
                     for line in text[:end].split("\n"))
    atomic_write_text(card, head + text[end:])


def write_base_record(model: Any, folder: str | os.PathLike) -> Path:
    """Write :func:`base_record` of ``model`` as ``folder/layerwise_base.json``."""
    from layerwise.runtime.io import atomic_write_json

    return atomic_write_json(Path(folder) / BASE_RECORD, base_record(model))


def find_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint folder of ``out_dir`` (or its ``.old`` copy after a crash mid-swap); ``None`` if none."""
    for name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old"):
        folder = Path(out_dir) / name
        if (folder / "state.json").is_file():
            return folder
    return None


def save_checkpoint(out_dir: str | os.PathLike, model: Any, optimizer: Any, scheduler: Any,
                    state: TrainState, config: dict, callbacks: Sequence[Any] = (),
                    named: dict[str, Any] | None = None) -> Path:
    """Write everything :func:`load_checkpoint` needs to continue at ``state.step`` exactly.

    ``callbacks`` with ``state_dict()``/``load_state_dict()`` have their state saved in ``callbacks.pt``.
    ``named`` (name -> parameter) is the run's parameter set when it differs from what requires grad now (a
    freezing schedule turns ``requires_grad`` off on frozen blocks, whose weights the checkpoint still holds).

    In a data-parallel run every rank must call it (it gathers each rank's RNG state); rank 0 writes.
    """
    from layerwise.runtime import distributed
    from layerwise.train.parallel import rank_rng_file

    rng = distributed.all_gather_objects(torch_rng_states())  # every rank's states, in rank order

    def write(tmp: Path) -> None:
        import torch
        from safetensors.torch import save_file

        params = named if named is not None else trainable_parameters(model)
        save_file({k: p.detach().contiguous() for k, p in params.items()}, str(tmp / "trainable.safetensors"))
        for name, obj in (("optimizer", optimizer.state_dict()), ("scheduler", scheduler.state_dict())):
            _check_plain(obj, name)
            torch.save(obj, tmp / f"{name}.pt")
        stateful = {key: cb.state_dict() for key, cb in stateful_callbacks(callbacks)}
        if stateful:
            _check_plain(stateful, "callback")
            torch.save(stateful, tmp / CALLBACKS_FILE)
        for r, states in enumerate(rng):
            save_file(states, str(tmp / rank_rng_file(r)))
        atomic_write_json(tmp / "state.json", {
            "schema_version": SCHEMA_VERSION, "state": json_safe(state.to_dict()), "config": config,
            "trainable": list(params), "python_rng": _python_rng(), "numpy_rng": _numpy_rng()})

    path = Path(out_dir) / CHECKPOINT_DIR
    if distributed.is_main():
        replace_dir(path, write)
    distributed.barrier()  # complete before any rank goes on (or reads it back)
    return path


def load_checkpoint(out_dir: str | os.PathLike, model: Any, optimizer: Any,
                    scheduler: Any, callbacks: Sequence[Any] = (),
                    named: dict[str, Any] | None = None) -> tuple[TrainState, dict]:
    """Restore trainable weights, optimizer, scheduler, RNG and callback states from ``out_dir``'s checkpoint.

    Returns the saved :class:`TrainState` and the config dict it was trained with. Raises
    :class:`ConfigError` when the checkpoint's callback states do not match ``callbacks`` with ``state_dict``.
    """
    from safetensors.torch import load_file

    folder = find_checkpoint(out_dir)
    if folder is None:
        raise ConfigError(f"--resume: no checkpoint in {Path(out_dir) / CHECKPOINT_DIR}; "
                          "run without --resume to start training")
    meta = _read(folder / "state.json", lambda f: json.loads(f.read_text(encoding="utf-8")))
    if not isinstance(meta, dict) or meta.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(f"--resume: {folder} has checkpoint schema "
                          f"{meta.get('schema_version') if isinstance(meta, dict) else None}, "
                          f"this version reads {SCHEMA_VERSION}")
    _load_trainable(model, _read(folder / "trainable.safetensors", lambda f: load_file(str(f))), meta["trainable"],
                    folder, named)
    optimizer.load_state_dict(_read(folder / "optimizer.pt", _torch_load))
    scheduler.load_state_dict(_read(folder / "scheduler.pt", _torch_load))
    _load_callbacks(folder, callbacks)
    set_torch_rng_states(_read(_rng_file(folder), lambda f: load_file(str(f))))
    _set_python_rng(meta["python_rng"])
    _set_numpy_rng(meta["numpy_rng"])
    return TrainState.from_dict(meta["state"]), meta["config"]


def _torch_load(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _read(path: Path, read: Any) -> Any:
    """``read(path)``; a missing, corrupt or pickled file is a one-line ``ConfigError`` naming it."""
    try:
        return read(path)
    except FileNotFoundError as err:
        raise ConfigError(f"--resume: {path} is missing; the checkpoint is incomplete (start again without "
                          f"--resume, with --overwrite)") from err
    except Exception as err:  # json, safetensors and torch raise many types for a damaged file
        text = " ".join(str(err).split())[:200]
        what = ("holds pickled objects that are not loaded for safety (it was not written by layerwise)"
                if any(w in text.lower() for w in ("weights_only", "weights only", "pickle")) else f"is corrupt or truncated ({text})")
        raise ConfigError(f"--resume: {path} {what}; start again without --resume, with --overwrite") from err


def _rng_file(folder: Path) -> Path:
    """This rank's RNG file (rank 0's where the checkpoint has none for this rank: another process count,
    which the caller then refuses with a clear error)."""
    from layerwise.runtime import distributed
    from layerwise.train.parallel import rank_rng_file

    own = folder / rank_rng_file(distributed.rank())
    return own if own.is_file() else folder / rank_rng_file(0)


def stateful_callbacks(callbacks: Sequence[Any]) -> list[tuple[str, Any]]:
    """(key, callback) for every callback with ``state_dict``/``load_state_dict``; the key is its class name,
    with ``#2``, ``#3`` ... for later callbacks of the same class."""
    out, seen = [], Counter()
    for cb in callbacks:
        if isinstance(cb, Stateful):
            name = type(cb).__name__
            seen[name] += 1
            out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", cb))
    return out


def _load_callbacks(folder: Path, callbacks: Sequence[Any]) -> None:
    path = folder / CALLBACKS_FILE
    saved = _read(path, _torch_load) if path.exists() else {}
    stateful = stateful_callbacks(callbacks)
    missing = [key for key, _ in stateful if key not in saved]
    extra = sorted(set(saved) - {key for key, _ in stateful})
    if missing or extra:
        raise ConfigError(f"--resume: the checkpoint in {folder} holds state for callback(s) {extra or 'none'} and "
                          f"none for {missing or 'none'} of this run; resume with the same flags (e.g. --ranks)")
    for key, cb in stateful:
        cb.load_state_dict(saved[key])


def _load_trainable(model: Any, tensors: dict, names: list[str], folder: Path,
                    named: dict[str, Any] | None = None) -> None:
    import torch

    params = named if named is not None else trainable_parameters(model)
    if list(params) != names:
        missing, extra = sorted(set(names) - set(params)), sorted(set(params) - set(names))
        raise ModelError(f"--resume: the checkpoint in {folder} was saved for other trainable parameters "
                         f"(missing in the model: {missing[:3]}, not in the checkpoint: {extra[:3]}); "
                         "resume with the same model and adapter config")
    with torch.no_grad():
        for name, p in params.items():
            if tensors[name].shape != p.shape:
                raise ModelError(f"--resume: {name} is {tuple(tensors[name].shape)} in the checkpoint in "
                                 f"{folder} but {tuple(p.shape)} in the model")
            p.copy_(tensors[name])


def _check_plain(obj: Any, what: str) -> None:
    """Refuse anything ``torch.load(weights_only=True)`` could not read back (an internal invariant)."""
    import torch

    if isinstance(obj, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            _check_plain(k, what)
            _check_plain(v, what)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _check_plain(v, what)
    else:
        raise TypeError(f"{what} state holds a {type(obj).__name__}; only tensors, numbers and containers "
                        "may be saved (a checkpoint must load with weights_only=True)")


def torch_rng_states() -> dict:
    """The torch CPU generator state, and each CUDA device's once CUDA is in use: ``{name: state tensor}``."""
    import torch

    states = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            states[f"torch_cuda_{i}"] = s
    return states


def set_torch_rng_states(states: dict) -> None:
    """Restore what :func:`torch_rng_states` returned (CUDA states only for devices this process has)."""
    import torch

    torch.set_rng_state(states["torch_cpu"])
    cuda = [states[k] for k in sorted(states, key=_cuda_index) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        for i, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def _cuda_index(key: str) -> int:
    return int(key.rsplit("_", 1)[1]) if key.startswith("torch_cuda_") else -1


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_python_rng(saved: list) -> None:
    version, internal, gauss = saved
    random.setstate((version, tuple(internal), gauss))


def _numpy_rng() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached)}


def _set_numpy_rng(saved: dict) -> None:
    np.random.set_state((saved["name"], np.asarray(saved["keys"], dtype=np.uint32), saved["pos"],
                         saved["has_gauss"], saved["cached_gaussian"]))
