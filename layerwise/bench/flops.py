"""Counted training FLOPs: the compute-matching measure of the benchmark when the machine is shared.

Wall-clock time on a machine other work shares is noise; counted FLOPs are not. A method's training step is
counted with :class:`torch.utils.flop_counter.FlopCounterMode` (forward, backward through whatever autograd
reaches, nothing for the optimizer's element-wise update) at a few padded sequence lengths ``T`` of one batch
size, and fitted by least squares to ``cost(T) = c + a*T + b*T^2`` (attention's score and value products are the
``T^2`` term). A cell's FLOPs are then the sum of ``cost(T)`` over the padded lengths of its batches, so dynamic
padding is counted as it ran. With the frozen-prefix cache on, the prefix blocks' forward runs once per example
(the cache's build) instead of once per step: :func:`count_step` counts those blocks apart (``prefix``), and
:meth:`StepCost.step` leaves them out of a cached step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["StepCost", "count_flops", "count_step", "fit_cost", "cumulative_flops"]


@dataclass(frozen=True)
class StepCost:
    """``cost(T) = c + a*T + b*T^2`` FLOPs of one training step of ``batch_size`` sequences of length ``T``;
    ``prefix_*`` the same fit of the frozen prefix blocks' forward alone (zero when nothing is frozen below)."""

    batch_size: int
    c: float
    a: float
    b: float
    prefix_c: float = 0.0
    prefix_a: float = 0.0
    prefix_b: float = 0.0

    def step(self, length: int, batch: int | None = None, cached: bool = False) -> float:
        """FLOPs of one step of ``batch`` (default :attr:`batch_size`) sequences padded to ``length``; a cached
        step skips the prefix's forward. FLOPs are linear in the batch size (every op is per sequence)."""
        flops = self.c + self.a * length + self.b * length * length
        if cached:
            flops -= self.prefix_c + self.prefix_a * length + self.prefix_b * length * length
        return flops * (batch if batch is not None else self.batch_size) / self.batch_size

    def prefix(self, length: int, batch: int = 1) -> float:
        """FLOPs of the prefix's forward over ``batch`` sequences of ``length`` (the cache's build)."""
        per = self.prefix_c + self.prefix_a * length + self.prefix_b * length * length
        return per * batch / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """The fit as JSON-ready numbers."""
        return asdict(self)


def _cpu_attention_formulas() -> dict:
    """FLOP formulas of the CPU flash-attention kernels, which torch's counter does not know (it would count
    attention as zero on a CPU); passed to one counter, so nothing process-wide changes."""
    import torch
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    out = {}
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None:
        out[forward] = lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
    if backward is not None:
        out[backward] = lambda grad, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(grad, q, k, v)
    return out


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int]]:
    """FLOPs of running ``fn()`` once: the total and the total per module (fully qualified names). Attention
    on the CPU's flash kernels is counted like any other scaled-dot-product attention."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
        fn()
    per_module = {name: int(sum(ops.values())) for name, ops in counter.get_flop_counts().items()}
    return int(counter.get_total_flops()), per_module


def count_step(model: Any, make_batch: Callable[[int, int], dict], batch_size: int, lengths: Sequence[int],
               prefix_modules: Sequence[str] = ()) -> StepCost:
    """Count a training step (forward with the batch's labels, ``loss.backward()``) of ``model`` at each of
    ``lengths`` and fit :class:`StepCost`. ``make_batch(batch_size, T)`` returns the model's keyword inputs;
    ``prefix_modules`` are the flop counter's names of the frozen blocks below the lowest adapted one.
    Gradients the step leaves are cleared."""
    totals, prefixes = [], []
    for length in lengths:
        batch = make_batch(batch_size, length)

        def step() -> None:
            loss = model(**batch).loss
            loss.backward()

        total, per_module = count_flops(step)
        model.zero_grad(set_to_none=True)
        totals.append(total)
        prefixes.append(sum(per_module.get(name, 0) for name in prefix_modules))
    c, a, b = fit_cost(lengths, totals)
    pc, pa, pb = fit_cost(lengths, prefixes) if any(prefixes) else (0.0, 0.0, 0.0)
    return StepCost(batch_size, c, a, b, pc, pa, pb)


def fit_cost(lengths: Sequence[int], flops: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares ``(c, a, b)`` of ``flops ~ c + a*T + b*T^2`` over ``lengths`` (three or more distinct)."""
    import numpy as np

    if len(set(lengths)) < 3:
        raise ValueError(f"fitting c + aT + bT^2 needs three distinct lengths, got {sorted(set(lengths))}")
    t = np.asarray(lengths, dtype=np.float64)
    design = np.stack([np.ones_like(t), t, t * t], axis=1)
    coef, *_ = np.linalg.lstsq(design, np.asarray(flops, dtype=np.float64), rcond=None)
    return float(coef[0]), float(coef[1]), float(coef[2])


def cumulative_flops(cost: StepCost, shapes: Iterable[Sequence[int]], cached: bool = False) -> list[float]:
    """Running total of FLOPs after each step, from each step's ``(batch, length)``."""
    out, total = [], 0.0
    for batch, length in shapes:
        total += cost.step(int(length), int(batch), cached)
        out.append(total)
    return out
