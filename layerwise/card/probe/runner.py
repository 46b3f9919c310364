"""One streaming pass of a model over calibration batches with the probe's hooks installed."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from layerwise.runtime.errors import ConfigError, DataError
from layerwise.runtime.memory import PeakMemory
from layerwise.card.probe.hooks import ProbeHooks
from layerwise.card.probe.plan import SKETCH_SEED, plan_statistics
from layerwise.card.probe.stats import BACKWARD_STATISTICS, STATISTICS, ProbeStats

__all__ = ["ProbeResult", "run_probe", "default_pooling", "projection_modules", "stat_memory_bytes",
           "gaussian_projection", "is_compiled", "uncompiled"]

_DECODER_TYPES = {"gpt2", "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text",
                  "phi3", "phi", "gpt_neox", "falcon", "opt", "mixtral", "olmo", "olmo2", "starcoder2"}


@dataclass
class ProbeResult:
    """The statistics of one pass, with how long it took and the memory it used."""

    stats: ProbeStats
    stack: Any
    pooling: str
    seconds: float
    peak_memory: int
    start_memory: int
    backward: bool
    chained: dict[int, bool] = field(default_factory=dict)
    plan: Any = None
    """The :class:`~layerwise.card.probe.plan.StatPlan` the statistics were stored by (None: none were)."""
    block_offset: int = 0
    """Index of the stack's first block in the whole model (a pass over a group of blocks)."""

    @property
    def num_blocks(self) -> int:
        return self.stats.num_blocks


def default_pooling(model: torch.nn.Module) -> str:
    """``last`` (last real token) for decoders, ``first`` (the [CLS] position) for encoders."""
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    return "last" if model_type in _DECODER_TYPES or getattr(model.config, "is_decoder", False) else "first"


def projection_modules(model: torch.nn.Module, stack: Any) -> dict[int, dict[str, tuple[torch.nn.Module, slice | None]]]:
    """Per block, the modules whose outputs are the query and value projections (a slice for fused qkv)."""
    cfg = model.config
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", None)
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    out: dict[int, dict[str, tuple[torch.nn.Module, slice | None]]] = {}
    for block in stack.blocks:
        found: dict[str, tuple[torch.nn.Module, slice | None]] = {}
        for lin in block.linears:
            module = model.get_submodule(lin.name)
            if lin.role in ("q", "v"):
                found[lin.role] = (module, None)
            elif lin.role == "qkv" and heads:
                kv = lin.out_features * kv_heads // (heads + 2 * kv_heads)  # width of k and of v
                q = lin.out_features - 2 * kv
                found.setdefault("q", (module, slice(0, q)))
                found.setdefault("v", (module, slice(q + kv, q + 2 * kv)))
        out[block.index] = found
    return out


def stat_memory_bytes(num_blocks: int, hidden: int, statistics: Iterable[str]) -> int:
    """Bytes the exact accumulators of ``statistics`` take during a pass (see ``layerwise.card.probe.plan``)."""
    from layerwise.card.probe.plan import stat_bytes_per_block

    return num_blocks * stat_bytes_per_block(hidden, statistics)


def run_probe(
    model: torch.nn.Module,
    stack: Any,
    batches: Sequence[dict[str, torch.Tensor]],
    statistics: Iterable[str],
    pooling: str | None = None,
    device: Any = None,
    max_stat_memory: int = 2 << 30,
    show_progress: bool = True,
    loss_fn: Callable[[Any, dict], torch.Tensor] | None = None,
    plan: Any = None,
) -> ProbeResult:
    """Run ``model`` once over ``batches`` with hooks filling ``statistics`` (see ``layerwise.card.probe.stats``).

    Backward statistics need batches with ``labels`` (the loss is the model's own), or ``loss_fn(outputs,
    batch) -> scalar loss`` (the model then gets the batch without ``labels``). The model is put in
    eval mode (no dropout: the same batches give the same card); only the blocks' linear weights get
    gradients, and the original ``requires_grad`` flags are restored afterwards.

    The statistics must fit ``max_stat_memory`` in this one pass (``layerwise.card.probe.plan``): the residual
    gradient is projected to the largest dimension that fits when the exact one does not; ``plan`` (a
    :class:`~layerwise.card.probe.plan.StatPlan` for these blocks) fixes the representations instead. Probing blocks in
    several passes is :func:`layerwise.card.profiling.profile_layers`'s job.
    """
    wanted = frozenset(statistics)
    unknown = wanted - set(STATISTICS)
    if unknown:
        raise ConfigError(f"unknown probe statistics {sorted(unknown)}; known: {', '.join(STATISTICS)}")
    if is_compiled(model):
        raise ConfigError("run_probe got a torch.compile'd model: its hooks need the original module; pass "
                          "model._orig_mod (profile_layers and layerwise.suggest unwrap it themselves)")
    hidden = _hidden_size(model, stack)
    if plan is None:
        plan = plan_statistics(len(stack), hidden, wanted, max_stat_memory)
        if plan.passes > 1:
            raise ConfigError(f"--max-stat-memory {max_stat_memory} bytes holds the statistics of "
                              f"{len(plan.groups[0])} of the {len(stack)} blocks; run_probe makes one pass "
                              "(profile_layers probes the blocks in groups): raise the limit")
    backward = bool(wanted & set(BACKWARD_STATISTICS))
    quantized = backward and _quantized(model, stack)
    if quantized and "param_grad" in wanted:
        raise ConfigError("gradnorm, fisher and taylor read the gradients of the blocks' weights, which a quantized "
                          "model (--quantize) does not have; with quantized weights choose --metrics among actnorm, "
                          "cka, act_energy, resnorm, coupling and cost")
    stats = ProbeStats(num_blocks=len(stack), hidden=hidden, wanted=wanted, device=_device_of(model, device))
    if plan.sketch_dim is not None and "out_grad" in wanted:
        stats.out_sketch = gaussian_projection(hidden, plan.sketch_dim, stats.device)
    if plan.pooled_rows is not None and "pooled" in wanted:
        stats.pooled_rows = []
    pooling = pooling or default_pooling(model)
    hooks = ProbeHooks(stack, stats, pooling, projection_modules(model, stack) if "out_norm" in wanted else None)
    was_training = model.training
    model.eval()
    flags = _enable_block_grads(model, stack) if backward else None
    weights = {b.index: _block_weights(model, b) for b in stack.blocks} if backward else {}
    # quantized weights get no gradient: the graph then starts at the embeddings' output (QLoRA's way)
    graph = _input_grads(model) if quantized else contextlib.nullcontext()
    try:
        with hooks, graph, PeakMemory(device) as mem:
            start = time.perf_counter()
            for batch in _iterate(batches, show_progress):
                _probe_batch(model, hooks, batch, device, weights, loss_fn)
            hooks.finish()
            seconds = time.perf_counter() - start
    finally:
        if flags is not None:
            _restore_grads(model, flags)
        model.train(was_training)
    return ProbeResult(stats=stats, stack=stack, pooling=pooling, seconds=seconds, peak_memory=mem.peak,
                       start_memory=mem.start, backward=backward, chained=dict(hooks.chained), plan=plan)


def gaussian_projection(hidden: int, k: int, device: Any = None) -> torch.Tensor:
    """The seeded (hidden, k) float32 projection S with N(0, 1/k) entries (E[S S^T] = I), the same on every
    pass, rank and device (drawn on the CPU)."""
    g = torch.Generator().manual_seed(SKETCH_SEED)
    return (torch.randn(hidden, k, generator=g, dtype=torch.float64) / k ** 0.5).float().to(device)


def is_compiled(model: torch.nn.Module) -> bool:
    """Whether ``model`` is a ``torch.compile`` wrapper (an ``OptimizedModule``, or anything with ``_orig_mod``)."""
    try:
        from torch._dynamo.eval_frame import OptimizedModule
    except ImportError:  # pragma: no cover - torch without dynamo
        OptimizedModule = ()  # type: ignore[assignment]
    return isinstance(model, OptimizedModule) or hasattr(model, "_orig_mod")


def uncompiled(model: torch.nn.Module) -> torch.nn.Module:
    """The module a ``torch.compile`` wrapper compiled (the model itself if it is none): the probe hooks that one
    and runs it eagerly, since a compiled graph does not call hooks added after compilation."""
    while is_compiled(model):
        model = model._orig_mod
    return model


def _iterate(batches: Sequence[dict], show_progress: bool):
    if not show_progress:
        return iter(batches)
    from layerwise.runtime.progress import progress

    return progress(batches, desc="probing layers", total=len(batches), unit="batch")


def _probe_batch(model: torch.nn.Module, hooks: ProbeHooks, batch: dict, device: Any,
                 weights: dict[int, list[torch.nn.Parameter]],
                 loss_fn: Callable[[Any, dict], torch.Tensor] | None = None) -> None:
    """One batch: forward (and, when ``weights`` are given, backward and the gradient statistics)."""
    backward = bool(weights)
    batch = {k: v.to(device) if device is not None else v for k, v in batch.items()}
    mask = batch.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(batch["input_ids"])
    _check_mask(mask, hooks.stats.batches)
    hooks.start_batch(mask)
    if backward and loss_fn is not None:
        loss = loss_fn(model(**{k: v for k, v in batch.items() if k != "labels"}), batch)
        _check_loss(loss, hooks.stats.batches)
        loss.backward()
        _collect_param_grads(hooks, weights)
    elif backward:
        if "labels" not in batch:
            raise DataError("gradient metrics need labelled batches (no 'labels' in the batch) or a loss function")
        out = model(**batch)
        _check_loss(out.loss, hooks.stats.batches)
        out.loss.backward()
        _collect_param_grads(hooks, weights)
    else:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        with torch.inference_mode():
            model(**inputs)
    hooks.end_batch()
    s = hooks.stats
    s.batches += 1
    s.examples += int(mask.shape[0])
    s.tokens += int(mask.sum())


def _check_mask(mask: torch.Tensor, index: int) -> None:
    real = mask.sum(1)
    if int(real.sum()) == 0:
        raise DataError(f"calibration batch {index} is all padding (no real token); check the data and tokenizer")
    empty = (real == 0).nonzero().flatten().tolist()
    if empty:
        raise DataError(f"calibration batch {index} has examples with no real token at rows {empty}")


def _check_loss(loss: torch.Tensor, index: int) -> None:
    if not torch.isfinite(loss):
        raise DataError(f"the task loss on calibration batch {index} is {float(loss)}: gradient metrics "
                        "would be meaningless (for causal LM, check that each example has answer tokens)")


def _collect_param_grads(hooks: ProbeHooks, weights: dict[int, list[torch.nn.Parameter]]) -> None:
    """Per-block gradient statistics of this batch from the blocks' linear ``weights`` (looked up once per
    pass, not per batch); the gradients are cleared."""
    stats = hooks.stats
    if "param_grad" not in stats.wanted:
        for ws in weights.values():
            for w in ws:
                w.grad = None
        return
    L = stats.num_blocks
    sq = torch.zeros(L, dtype=torch.float64, device=stats.device)
    wg = torch.zeros(L, dtype=torch.float64, device=stats.device)
    counts = torch.zeros(L, dtype=torch.float64)
    for index, ws in weights.items():
        for w in ws:
            if w.grad is None:
                continue
            g = w.grad.reshape(-1)
            if g.dtype != torch.float32:  # a 16-bit model: squared and summed in float32, never in its dtype
                g = g.float()  # (one float32 copy of this weight's gradient at a time)
            # dot products: no squared temporary (float32 accumulation, stored as float64); kept on the
            # device, no host sync
            sq[index] += torch.dot(g, g)
            wg[index] += torch.dot(w.detach().reshape(-1).to(g.dtype), g)
            counts[index] += g.numel()
            w.grad = None
    stats.grad_sq.append(sq)
    stats.grad_wg.append(wg)
    stats.param_counts = counts


def _block_weights(model: torch.nn.Module, block: Any) -> list[torch.nn.Parameter]:
    """The block's floating-point linear weights (quantized ones cannot have gradients)."""
    return [w for w in (model.get_submodule(lin.name).weight for lin in block.linears) if w.is_floating_point()]


def _quantized(model: torch.nn.Module, stack: Any) -> bool:
    """Whether any linear weight of the blocks is stored quantized (not floating point: bitsandbytes)."""
    return any(not model.get_submodule(lin.name).weight.is_floating_point()
               for block in stack.blocks for lin in block.linears)


@contextlib.contextmanager
def _input_grads(model: torch.nn.Module):
    """Make the input embeddings' output require grad during the pass (hook removed after)."""
    embeddings = model.get_input_embeddings()

    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> None:
        output.requires_grad_(True)

    handle = embeddings.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _enable_block_grads(model: torch.nn.Module, stack: Any) -> dict[str, bool]:
    """Gradients only where the metrics read them: the blocks' linear weights."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for block in stack.blocks:
        for w in _block_weights(model, block):
            w.requires_grad_(True)
    return flags


def _restore_grads(model: torch.nn.Module, flags: dict[str, bool]) -> None:
    for n, p in model.named_parameters():
        p.requires_grad_(flags.get(n, p.requires_grad))
        p.grad = None


def _device_of(model: torch.nn.Module, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    return next(model.parameters()).device


def _hidden_size(model: torch.nn.Module, stack: Any) -> int:
    cfg = model.config
    for key in ("hidden_size", "n_embd", "d_model", "dim"):
        if getattr(cfg, key, None):
            return int(getattr(cfg, key))
    raise ConfigError(f"cannot tell the hidden size of {type(model).__name__} from its config")
