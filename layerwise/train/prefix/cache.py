"""Frozen-prefix cache: the hidden states entering the lowest adapted block ``l``, computed once per example.

With adapters only in blocks ``l..L-1`` and the prefix (embeddings, blocks ``0..l-1``) frozen and run without
dropout (``layerwise.train.prefix.frozen``), the prefix maps an example to the same hidden states in every epoch.
:func:`prepare_prefix_cache` computes them once, in inference mode and in batches of similar lengths, and
stores them token-major (``rows offsets[i]:offsets[i+1]`` hold example ``i``'s tokens, so dynamic padding still
works) in memory or in a memory-mapped file. A training step then runs the model's own forward with blocks
``0..l-1`` skipped (each returns its input untouched, uncomputed) and a forward pre-hook on block ``l`` that
replaces its hidden-state input by the cached rows, zero-padded to the batch's length. Everything else a
block needs (attention mask, rotary position embeddings, DeBERTa's relative embeddings) is still made by the
model's forward, so the mechanism is generic over the layer stacks :mod:`layerwise.models.layers` finds.

Exactness: padded positions are masked out of attention and get zero gradient, so their values do not
matter; with a float32 cache the only difference from recomputing the prefix is the rounding of the
prefix's matrix products at another batch shape (~1e-7 relative). The dev set is cached batch by batch as
the evaluation pads it, so its cached states are exactly those evaluation would compute.

A cache is keyed by a hash of the prefix's weights and the model config, the tokenized examples (which
covers the task, data files, max length and tokenizer), ``l`` and the storage dtype; a disk cache whose key
or size does not match is rebuilt, never reused.

Under ``torchrun`` every rank sees a different slice of every global batch, and over the epochs every
example, so the ranks share one disk cache of the whole training set: rank 0 loads or builds it while the
others wait at a barrier, then every rank maps the same file (read-only pages, shared by the OS). A memory
cache per rank would hold the whole set once per process, so under torchrun the cache is on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from layerwise.runtime import distributed
from layerwise.runtime.errors import ConfigError, ModelError

__all__ = ["PrefixStore", "PrefixSkipper", "PrefixCache", "PrefixCacheReport", "prepare_prefix_cache",
           "lowest_trainable_block", "fill_store", "prefix_digest", "cache_key", "SCHEMA_VERSION", "DTYPES"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
"""Version of the disk cache's ``.json`` metadata."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""Storage dtypes by ``--prefix-cache-dtype`` name."""
BUILD_BATCH = 32
"""Examples per batch when the training set's cache is built (sorted by length, so little padding)."""
MEMORY_SHARE, DISK_SHARE = 0.5, 0.9
"""A cache may take at most this share of the available memory / free disk."""
_ON_DISK = {"float32": np.float32, "float16": np.float16, "bfloat16": np.int16}  # numpy has no bfloat16
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class _Stop(Exception):
    """Raised by the capture hook once block ``l``'s input is known: the blocks above need not run."""


class PrefixStore:
    """Hidden states of many examples, token-major: ``data[offsets[i]:offsets[i+1]]`` are example ``i``'s
    tokens; ``data`` has shape (tokens, hidden)."""

    def __init__(self, data: torch.Tensor, offsets: np.ndarray) -> None:
        assert data.dim() == 2 and int(offsets[-1]) == data.shape[0], (tuple(data.shape), int(offsets[-1]))
        self.data, self.offsets = data, offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def nbytes(self) -> int:
        """Bytes of the hidden states (the offsets add 8 per example)."""
        return self.data.numel() * self.data.element_size()

    def gather(self, indices: Sequence[int], length: int, dtype: torch.dtype) -> torch.Tensor:
        """Examples ``indices`` right-padded with zeros to ``length`` tokens; shape (B, length, hidden)."""
        out = torch.zeros(len(indices), length, self.data.shape[1], dtype=dtype)
        for row, i in enumerate(indices):
            start, end = int(self.offsets[i]), int(self.offsets[i + 1])
            assert end - start <= length, (i, end - start, length)
            out[row, : end - start] = self.data[start:end]
        return out


class PrefixSkipper:
    """Runs only blocks ``layer..`` of a layer stack: blocks below return their input uncomputed and block
    ``layer`` gets the given hidden states as its input (a forward pre-hook), inside :meth:`feeding`.

    ``structure`` is what a block returns: 0 for a tensor, n for a tuple of n (the hidden states first); the
    skipped blocks return the same shape of result so the model's forward is unchanged.
    """

    def __init__(self, blocks: torch.nn.ModuleList, layer: int, structure: int) -> None:
        assert 0 < layer < len(blocks), (layer, len(blocks))
        self.blocks, self.layer, self.structure = blocks, layer, structure
        self._hidden: torch.Tensor | None = None

    def _skip(self, *args: Any, **kwargs: Any) -> Any:
        hidden = args[0] if args else kwargs["hidden_states"]
        return hidden if self.structure == 0 else (hidden,) + (None,) * (self.structure - 1)

    def _swap(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        given, cached = (args[0] if args else kwargs["hidden_states"]), self._hidden
        assert cached is not None and cached.shape[:2] == given.shape[:2], (
            f"prefix cache: block {self.layer} expected input of shape {tuple(given.shape)}, the cache gave "
            f"{None if cached is None else tuple(cached.shape)}")
        cached = cached.to(device=given.device, dtype=given.dtype)
        if args:
            return (cached,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": cached}

    @contextlib.contextmanager
    def feeding(self, hidden: torch.Tensor) -> Iterator[None]:
        """Within the block, a forward of the model computes blocks ``layer..`` on ``hidden`` (B, T, hidden)."""
        self._hidden = hidden
        handle = self.blocks[self.layer].register_forward_pre_hook(self._swap, with_kwargs=True)
        skipped = list(self.blocks[: self.layer])
        for block in skipped:  # an instance attribute shadows the class's forward; del restores it
            block.forward = self._skip
        try:
            yield
        finally:
            handle.remove()
            for block in skipped:
                del block.forward
            self._hidden = None


@dataclass
class PrefixCacheReport:
    """Whether a run used the prefix cache, and why not or at what size and build time (``metrics.json``)."""

    used: bool
    reason: str
    """Why the cache is off, or how ``auto`` chose."""
    mode: str = "off"
    """Where the cache lives: 'memory', 'disk' or 'off'."""
    layer: int | None = None
    """The lowest adapted block: the cache holds its input."""
    dtype: str = "float32"
    estimated_bytes: int = 0
    """Estimated size before building (training + dev set)."""
    bytes: int = 0
    """Size of the stored hidden states (training + dev set)."""
    build_seconds: float = 0.0
    """Wall time of building (0 when a disk cache was reused)."""
    key_seconds: float = 0.0
    """Wall time of hashing the prefix's weights and the tokenized data into the cache keys."""
    reused: bool = False
    """True when a matching disk cache was loaded instead of built."""
    path: str | None = None
    """The disk cache's training-set file."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return asdict(self)

    def summary(self) -> str:
        """One line for a report: used, size and build time, or why not."""
        if not self.used:
            return f"prefix cache: off ({self.reason})"
        how = "reused" if self.reused else f"built in {self.build_seconds:.1f} s"
        return (f"prefix cache: {self.mode}, input of block {self.layer}, {self.dtype}, "
                f"{self.bytes / 2**20:.1f} MiB, {how}")


@dataclass
class PrefixCache:
    """A run's cache: the training and dev sets' stores and the skipper that feeds them to the model."""

    skipper: PrefixSkipper
    train: PrefixStore
    dev: PrefixStore | None
    dev_starts: list[int]
    """Index of the first dev example of each evaluation batch."""
    report: PrefixCacheReport
    compute_dtype: torch.dtype

    def train_hidden(self, indices: Sequence[int], length: int, device: Any) -> torch.Tensor:
        """Cached input of block ``layer`` for the training examples ``indices``, padded to ``length``."""
        return self.train.gather(indices, length, self.compute_dtype).to(device, non_blocking=True)

    def feeding(self, hidden: torch.Tensor) -> contextlib.AbstractContextManager:
        """Context in which the model's forward starts at block ``layer`` with ``hidden``."""
        return self.skipper.feeding(hidden)

    def eval_context(self, batch_index: int, batch: dict) -> contextlib.AbstractContextManager:
        """Context for evaluation batch ``batch_index`` (the dev set's cached rows, or none)."""
        if self.dev is None:
            return contextlib.nullcontext()
        size, length = batch["input_ids"].shape
        start = self.dev_starts[batch_index]
        hidden = self.dev.gather(range(start, start + size), length, self.compute_dtype)
        return self.skipper.feeding(hidden.to(batch["input_ids"].device))


def lowest_trainable_block(model: torch.nn.Module, stack: Any) -> tuple[int | None, str | None]:
    """(lowest block holding a trainable parameter, first trainable parameter registered before the blocks).

    A trainable parameter before the blocks (embeddings, or a head tied to them) changes the prefix's output.
    """
    from layerwise.models.layers import unwrap_model

    lowest, before, seen_block = None, None, False
    for name, param in unwrap_model(model).named_parameters():
        block = stack.block_of(name)
        seen_block = seen_block or block is not None
        if not param.requires_grad:
            continue
        if block is None and not seen_block and before is None:
            before = name
        elif block is not None:
            lowest = block if lowest is None else min(lowest, block)
    return lowest, before


def _prefix_tensors(model: torch.nn.Module, stack: Any, layer: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and buffers of blocks ``0..layer-1`` and of the modules registered before the blocks (the
    embeddings). Modules registered after them (heads, final norms, a randomly initialised classifier) are not
    hashed, so runs with other seeds share a cache; what the blocks get from there besides their input
    (rotary tables, DeBERTa's relative embeddings) is recomputed in every step, not cached."""
    from layerwise.models.layers import unwrap_model

    base = unwrap_model(model)
    for named in (base.named_parameters(), base.named_buffers()):
        seen_block = False
        for name, tensor in named:
            block = stack.block_of(name)
            seen_block = seen_block or block is not None
            if (block is not None and block < layer) or (block is None and not seen_block):
                yield name, tensor


def prefix_digest(model: torch.nn.Module, stack: Any, layer: int) -> str:
    """Hash of what the prefix computes with: the model class and config, the attention implementation and
    the weights and buffers of the embeddings and blocks ``0..layer-1``."""
    from layerwise.models.layers import unwrap_model

    h = hashlib.blake2b(digest_size=20)
    base = unwrap_model(model)
    config = getattr(base, "config", None)
    meta = {"class": type(base).__name__, "layer": layer, "schema": SCHEMA_VERSION,
            "config": config.to_dict() if config is not None else None,
            "attn": getattr(config, "_attn_implementation", None)}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, tensor in _prefix_tensors(model, stack, layer):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(prefix: str, arrays: Sequence[Sequence[Sequence[int]]], dtype: str) -> str:
    """Key of a cache: the :func:`prefix_digest`, the tokenized examples (``arrays``: per example its token
    ids, attention mask and token types, which cover the task, data files, max length and tokenizer) and the
    storage dtype."""
    h = hashlib.blake2b(digest_size=20)
    h.update(f"{prefix}|{dtype}|".encode())
    for example in arrays:
        for seq in example:
            h.update(np.asarray(seq, dtype=np.int64).tobytes())
            h.update(b"|")
    return h.hexdigest()


def _capture(model: torch.nn.Module, blocks: torch.nn.ModuleList, layer: int, batch: dict) -> tuple[torch.Tensor, int]:
    """Block ``layer``'s input for ``batch`` (B, T, hidden), computing only the prefix; and the block structure."""
    seen: dict[str, Any] = {}

    def grab(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        seen["hidden"] = args[0] if args else kwargs["hidden_states"]
        raise _Stop

    def shape_of(module: torch.nn.Module, args: tuple, output: Any) -> None:
        seen["structure"] = 0 if isinstance(output, torch.Tensor) else len(output)

    handles = [blocks[layer].register_forward_pre_hook(grab, with_kwargs=True),
               blocks[layer - 1].register_forward_hook(shape_of)]
    try:
        model(**batch)
    except _Stop:
        pass
    finally:
        for handle in handles:
            handle.remove()
    assert "hidden" in seen, f"block {layer} did not run in the model's forward"
    return seen["hidden"], seen["structure"]


def _pad_batch(features: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Right-pad the model inputs of ``features`` (no labels: the build needs none)."""
    length = max(len(f["input_ids"]) for f in features)
    return {k: torch.tensor([list(f[k]) + [0] * (length - len(f[k])) for f in features], dtype=torch.long)
            for k in _INPUTS if k in features[0]}


def _build(model: torch.nn.Module, blocks: torch.nn.ModuleList, layer: int,
           batches: Sequence[tuple[dict, Sequence[int]]], offsets: np.ndarray, hidden_size: int, dtype: str,
           path: Path | None, context: Callable[[Sequence[int], dict], Any] | None = None
           ) -> tuple[PrefixStore, int]:
    """Run the prefix over ``batches`` ((inputs, example indices)) and store block ``layer``'s input rows
    (``context(indices, inputs)``, when given, is entered around each batch's forward)."""
    tokens, torch_dtype = int(offsets[-1]), DTYPES[dtype]
    if path is None:
        data = torch.empty(tokens, hidden_size, dtype=torch_dtype)
        target, mm = data, None
    else:
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        mm = np.memmap(tmp, dtype=_ON_DISK[dtype], mode="w+", shape=(max(tokens, 1), hidden_size))
        target = _as_torch(mm, dtype)
    device, structure, was_training = next(model.parameters()).device, 0, model.training
    model.eval()
    try:
        with torch.inference_mode():
            for inputs, indices in batches:
                inputs = {k: v.to(device) for k, v in inputs.items()}
                with context(indices, inputs) if context is not None else contextlib.nullcontext():
                    hidden, structure = _capture(model, blocks, layer, inputs)
                hidden = hidden.to(torch_dtype).cpu()
                for row, i in enumerate(indices):
                    start, end = int(offsets[i]), int(offsets[i + 1])
                    target[start:end] = hidden[row, : end - start]
    finally:
        model.train(was_training)
    if mm is None:
        return PrefixStore(target, offsets), structure
    mm.flush()
    del target, mm
    os.replace(tmp, path)
    return _open_disk(path, dtype, tokens, hidden_size, offsets), structure


def _as_torch(array: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def _open_disk(path: Path, dtype: str, tokens: int, hidden_size: int, offsets: np.ndarray) -> PrefixStore:
    # copy-on-write mapping: writable for torch (no warning), never written back to the file
    mm = np.memmap(path, dtype=_ON_DISK[dtype], mode="c", shape=(max(tokens, 1), hidden_size))
    return PrefixStore(_as_torch(mm, dtype)[:tokens], offsets)


def _load_disk(path: Path, key: str) -> tuple[PrefixStore, dict] | None:
    """The disk cache at ``path`` when its metadata carries ``key`` and its file has the right size."""
    meta_path = path.with_suffix(".json")
    try:
        meta = json.loads(meta_path.read_text())
        offsets = np.load(path.with_suffix(".offsets.npy"))
        tokens, hidden_size = int(meta["tokens"]), int(meta["hidden_size"])
        itemsize = np.dtype(_ON_DISK[meta["dtype"]]).itemsize
        ok = (meta.get("key") == key and meta.get("schema_version") == SCHEMA_VERSION and int(offsets[-1]) == tokens
              and path.stat().st_size == max(tokens, 1) * hidden_size * itemsize)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not ok:
        log.info("prefix cache %s does not match this run: rebuilding it", path)
        return None
    return _open_disk(path, meta["dtype"], tokens, hidden_size, offsets), meta


def _store(model: torch.nn.Module, blocks: torch.nn.ModuleList, layer: int, name: str, key: str,
           batches: Callable[[], Sequence[tuple[dict, Sequence[int]]]], lengths: Sequence[int], hidden_size: int,
           dtype: str, folder: Path | None) -> tuple[PrefixStore, int, bool, float, Path | None]:
    """Load a matching disk cache or build one: (store, block structure, reused, seconds, path)."""
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    path = None if folder is None else folder / f"{name}-block{layer}-{dtype}-{key[:16]}.bin"
    if path is not None and distributed.world_size() > 1:  # rank 0 loads or builds; the others map its file
        if distributed.is_main():
            built = _store_alone(model, blocks, layer, key, batches, offsets, hidden_size, dtype, path)
        distributed.barrier()
        if distributed.is_main():
            return built
        found = _load_disk(path, key)
        if found is None:
            raise ModelError(f"--prefix-cache: rank {distributed.rank()} cannot read the cache rank 0 wrote at "
                             f"{path}; under torchrun --prefix-cache-dir must be a folder every rank sees")
        return found[0], int(found[1]["structure"]), True, 0.0, path
    return _store_alone(model, blocks, layer, key, batches, offsets, hidden_size, dtype, path)


def _store_alone(model: torch.nn.Module, blocks: torch.nn.ModuleList, layer: int, key: str,
                 batches: Callable[[], Sequence[tuple[dict, Sequence[int]]]], offsets: np.ndarray,
                 hidden_size: int, dtype: str, path: Path | None) -> tuple[PrefixStore, int, bool, float, Path | None]:
    """:func:`_store` in one process."""
    from layerwise.runtime.io import atomic_write_json

    lengths = np.diff(offsets)
    if path is not None:
        found = _load_disk(path, key)
        if found is not None:
            return found[0], int(found[1]["structure"]), True, 0.0, path
        path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    store, structure = _build(model, blocks, layer, batches(), offsets, hidden_size, dtype, path)
    seconds = time.perf_counter() - start
    if path is not None:
        tmp = path.with_suffix(f".offsets.tmp{os.getpid()}.npy")
        np.save(tmp, offsets)
        os.replace(tmp, path.with_suffix(".offsets.npy"))
        atomic_write_json(path.with_suffix(".json"), {
            "schema_version": SCHEMA_VERSION, "key": key, "layer": layer, "dtype": dtype, "tokens": int(offsets[-1]),
            "hidden_size": hidden_size, "examples": len(lengths), "structure": structure, "build_seconds": seconds})
    return store, structure, False, seconds, path


def _hidden_size(model: torch.nn.Module) -> int:
    from layerwise.models.layers import unwrap_model

    config = unwrap_model(model).config
    return int(getattr(config, "hidden_size", None) or config.n_embd)


def _off(reason: str, config: Any) -> tuple[None, PrefixCacheReport]:
    log.info("prefix cache off: %s", reason)
    return None, PrefixCacheReport(used=False, reason=reason, dtype=config.prefix_cache_dtype)


def prepare_prefix_cache(model: torch.nn.Module, features: Sequence[dict], eval_batches: Sequence[dict],
                         config: Any, out_dir: Path, announce: Callable[[str], None] = log.info
                         ) -> tuple[PrefixCache | None, PrefixCacheReport]:
    """Decide whether the run uses the cache (``config.prefix_cache``), then load or build it.

    ``features`` are the training set's encoded examples (the loop's order indexes them), ``eval_batches``
    the dev set's padded loss batches (empty: the dev set is not cached). Returns the cache (``None`` when
    off) and the report of the decision. An explicit ``memory``/``disk`` cache that would not fit raises
    :class:`ConfigError` naming the flag; ``auto`` then stays off and says why.

    Under torchrun the cache is one disk file built by rank 0 and mapped by every rank (``--prefix-cache
    memory`` is refused there; ``auto`` chooses disk).
    """
    from layerwise.models.layers import find_layer_stack

    mode = config.prefix_cache
    if mode == "off":
        return _off("--prefix-cache off", config)
    if config.prefix_dropout:
        return _off("--prefix-dropout keeps dropout in the frozen blocks, so their output changes every epoch",
                    config)
    if distributed.world_size() > 1 and mode == "memory":
        raise ConfigError("--prefix-cache memory under torchrun would hold the whole training set once per "
                          "process; use --prefix-cache disk (one file built by rank 0, mapped by every rank) or auto")
    try:
        stack = find_layer_stack(model)
    except ModelError as err:
        return _off(f"no layer stack found ({err})", config)
    layer, before = lowest_trainable_block(model, stack)
    if before is not None:
        return _off(f"the parameter {before} before the blocks is trained (the method touches the embeddings)",
                    config)
    if layer is None or layer == 0:
        return _off("the lowest adapted block is 0: no frozen block below it to cache", config)
    seen = config.steps * config.batch_size * config.grad_accum
    if mode == "auto" and seen <= len(features):
        return _off(f"auto: the run sees {seen} examples, at most one pass over the {len(features)} training "
                    "examples, so nothing would be reused", config)
    return _make(model, stack, layer, features, eval_batches, config, out_dir, announce)


def _make(model: torch.nn.Module, stack: Any, layer: int, features: Sequence[dict], eval_batches: Sequence[dict],
          config: Any, out_dir: Path, announce: Callable[[str], None]) -> tuple[PrefixCache | None, PrefixCacheReport]:
    """Choose memory/disk (with the fit checks), then load or build the training and dev stores."""
    from layerwise.models.layers import unwrap_model

    dtype, hidden_size = config.prefix_cache_dtype, _hidden_size(model)
    train_lengths = [len(f["input_ids"]) for f in features]
    dev_lengths = [int(n) for b in eval_batches for n in b["attention_mask"].sum(1).tolist()]
    tokens = sum(train_lengths) + sum(dev_lengths)
    estimate = tokens * hidden_size * DTYPES[dtype].itemsize + 8 * (len(train_lengths) + len(dev_lengths) + 2)
    folder = Path(config.prefix_cache_dir) if config.prefix_cache_dir else out_dir / "prefix_cache"
    shared = distributed.world_size() > 1  # ranks map one file: on disk whatever auto would choose alone
    where = _where(config.prefix_cache, estimate, folder, config.prefix_cache_dir is not None or shared)
    if shared and where == "memory":
        where = f"auto: under torchrun the cache is one shared file, but {folder} lacks the space"
    if where not in ("memory", "disk"):
        return _off(where, config)
    announce(f"prefix cache ({where}): input of block {layer}, {len(train_lengths)} training + {len(dev_lengths)} "
             f"dev examples, {tokens} tokens x {hidden_size} x {dtype} = {estimate / 2**20:.1f} MiB")
    blocks = unwrap_model(model).get_submodule(stack.path)
    disk = folder if where == "disk" else None
    start = time.perf_counter()
    prefix = prefix_digest(model, stack, layer)
    train_key = cache_key(prefix, [[f.get(k, ()) for k in _INPUTS] for f in features], dtype)
    dev_inputs = [{k: v for k, v in b.items() if k in _INPUTS} for b in eval_batches]
    dev_key = cache_key(prefix, [[v.tolist() for v in b.values()] for b in dev_inputs], dtype)
    key_seconds = time.perf_counter() - start
    train, structure, reused, seconds, path = _store(
        model, blocks, layer, "train", train_key, lambda: _train_batches(features, train_lengths), train_lengths,
        hidden_size, dtype, disk)
    dev, dev_starts = None, np.cumsum([0] + [len(b["input_ids"]) for b in dev_inputs]).tolist()[:-1]
    if dev_inputs:
        dev, _, dev_reused, dev_seconds, _ = _store(
            model, blocks, layer, "dev", dev_key, lambda: list(zip(dev_inputs, _ranges(dev_inputs, dev_starts))),
            dev_lengths, hidden_size, dtype, disk)
        reused, seconds = reused and dev_reused, seconds + dev_seconds
    report = PrefixCacheReport(used=True, reason=_why(config.prefix_cache, where), mode=where, layer=layer,
                               dtype=dtype, estimated_bytes=estimate, bytes=train.nbytes + (dev.nbytes if dev else 0),
                               build_seconds=seconds, key_seconds=key_seconds, reused=reused,
                               path=None if path is None else str(path))
    announce(report.summary())
    compute = next(p for p in model.parameters()).dtype
    return PrefixCache(PrefixSkipper(blocks, layer, structure), train, dev, dev_starts, report, compute), report


def fill_store(model: torch.nn.Module, blocks: torch.nn.ModuleList, layer: int, features: Sequence[dict],
               dtype: str = "float32", source: tuple[PrefixStore, int, int] | None = None,
               compute_dtype: torch.dtype = torch.float32) -> tuple[PrefixStore, int]:
    """Block ``layer``'s input for every training example (``features``), in memory, in one inference pass
    (eval mode, no dropout) over length-sorted batches: through the embeddings and blocks ``0..layer-1``
    (``source`` None), or through blocks ``source_layer..layer-1`` only, fed with the cached input of block
    ``source_layer`` (``source = (store, source_layer, block structure)``). Returns (store, block structure).

    This is how a freezing schedule moves the cache boundary up by one block: only the newly frozen block runs.
    """
    lengths = [len(f["input_ids"]) for f in features]
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    context = None
    if source is not None:
        store, source_layer, structure = source
        skipper = PrefixSkipper(blocks, source_layer, structure)

        def context(indices: Sequence[int], inputs: dict) -> contextlib.AbstractContextManager:
            hidden = store.gather(indices, inputs["input_ids"].shape[1], compute_dtype)
            return skipper.feeding(hidden.to(inputs["input_ids"].device))

    return _build(model, blocks, layer, _train_batches(features, lengths), offsets, _hidden_size(model), dtype,
                  None, context)


def _train_batches(features: Sequence[dict], lengths: Sequence[int]) -> list[tuple[dict, list[int]]]:
    """The training examples sorted by length in batches of :data:`BUILD_BATCH` (little padding)."""
    order = np.argsort(lengths, kind="stable").tolist()
    chunks = [order[s: s + BUILD_BATCH] for s in range(0, len(order), BUILD_BATCH)]
    return [(_pad_batch([features[i] for i in chunk]), chunk) for chunk in chunks]


def _ranges(batches: Sequence[dict], starts: Sequence[int]) -> list[list[int]]:
    """The dev examples of each evaluation batch (the cache is built from the evaluation's own batches, with
    the same shapes, so the cached states are the ones evaluation computes)."""
    return [list(range(s, s + len(b["input_ids"]))) for b, s in zip(batches, starts)]


def _where(mode: str, estimate: int, folder: Path, dir_given: bool) -> str:
    """'memory' or 'disk'; for ``auto`` a sentence saying why it is off when neither fits."""
    import psutil

    memory = psutil.virtual_memory().available * MEMORY_SHARE
    disk = _free_disk(folder) * DISK_SHARE
    size = f"{estimate / 2**20:.1f} MiB"
    if mode == "memory" and estimate > memory:
        raise ConfigError(f"--prefix-cache memory: the cache needs {size} but only {memory / 2**20:.0f} MiB of "
                          "memory can be spared; use --prefix-cache disk, --prefix-cache-dtype bfloat16 or "
                          "--prefix-cache off")
    if mode == "disk" and estimate > disk:
        raise ConfigError(f"--prefix-cache disk: the cache needs {size} but {folder} has {disk / 2**20:.0f} MiB "
                          "free; choose another --prefix-cache-dir, --prefix-cache-dtype bfloat16 or "
                          "--prefix-cache off")
    if mode in ("memory", "disk"):
        return mode
    if dir_given and estimate <= disk:  # a shared folder: later runs reuse it
        return "disk"
    if estimate <= memory:
        return "memory"
    if estimate <= disk:
        return "disk"
    return f"auto: the cache ({size}) fits neither in memory nor on the disk of {folder}"


def _free_disk(folder: Path) -> int:
    path = folder
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def _why(mode: str, where: str) -> str:
    if mode == "auto":
        return f"auto: more than one pass over the training set and the cache fits ({where})"
    return f"--prefix-cache {mode}"
