"""Truncated LoRA factors: the forward and backward of a block at rank ``r_i`` use ``A[:r_i]`` and ``B[:, :r_i]``.

peft's LoRA ``Linear`` computes ``result + lora_B(lora_A(dropout(x))) * scaling`` with ``lora_A`` an
``nn.Linear(in, r_max)`` and ``lora_B`` an ``nn.Linear(r_max, out)``. :func:`install_truncation` replaces those
two modules by :class:`TruncatedFactor` modules that hold *the same* ``weight`` Parameter (so parameter names,
the optimizer's parameters and ``state_dict`` keys are unchanged) and multiply by a slice of it::

    A: (N, in) @ A[:r].T   -> (N, r)      instead of (N, r_max)
    B: (N, r)  @ B[:, :r].T -> (N, out)

so the matmuls really shrink (Eq. 3-4 of La-LoRA) and the gradient of the unused rows/columns is exactly zero.
The model's adapters must be plain LoRA (no DoRA or other variant, no LoRA bias) on ``Linear``/``Conv1D``
layers. ``merge_and_unload`` on the training model would merge the full ``r_max`` factors: merge an adapter
exported with :func:`layerwise.train.lalora.export.export_adapter` instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from layerwise.runtime.errors import ConfigError
from layerwise.models.layers import LayerStack, unwrap_model

__all__ = ["TruncatedFactor", "AdaptedBlock", "adapted_blocks", "install_truncation", "set_block_rank",
           "factor_profiles"]


class TruncatedFactor(torch.nn.Module):
    """One LoRA factor used up to ``rank``: ``A`` (``side='A'``, weight ``(r_max, in)``) uses its first ``rank``
    rows, ``B`` (``side='B'``, weight ``(out, r_max)``) its first ``rank`` columns."""

    def __init__(self, linear: torch.nn.Linear, side: str) -> None:
        super().__init__()
        assert side in ("A", "B"), side
        if linear.bias is not None:
            raise ConfigError("--ranks adaptive: LoRA factors with a bias (lora_bias=True) are not supported")
        self.weight = linear.weight  # the same Parameter: names, optimizer and checkpoint are unchanged
        self.bias = None
        self.side = side
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.r_max = self.out_features if side == "A" else self.in_features
        self.rank = self.r_max

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.side == "A":
            return F.linear(x, self.weight[: self.rank])  # (..., in) -> (..., r)
        return F.linear(x, self.weight[:, : self.rank])  # (..., r) -> (..., out)

    def extra_repr(self) -> str:
        return f"side={self.side}, rank={self.rank}/{self.r_max}"


@dataclass
class AdaptedBlock:
    """One adapted transformer block: its index and its LoRA layers (name relative to the transformers model)."""

    index: int
    layers: list[tuple[str, torch.nn.Module]]

    def factors(self, adapter: str = "default") -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        """(A, B) modules of every projection, in module order."""
        return [(layer.lora_A[adapter], layer.lora_B[adapter]) for _, layer in self.layers]


def adapted_blocks(peft_model: torch.nn.Module, stack: LayerStack, indices: Sequence[int] | None = None,
                   adapter: str = "default") -> list[AdaptedBlock]:
    """The blocks of ``stack`` whose linears carry the LoRA ``adapter`` (only ``indices`` when given), in order.

    Raises :class:`ConfigError` naming ``--method`` for an adapter that is not plain LoRA, and naming
    ``--layers`` for a requested block without an adapter.
    """
    from peft.tuners.lora import LoraLayer

    found: dict[int, list[tuple[str, torch.nn.Module]]] = {}
    for name, module in unwrap_model(peft_model).named_modules():
        if isinstance(module, LoraLayer) and adapter in module.lora_A:
            block = stack.block_of(name)
            if block is not None:
                _check_plain_lora(name, module, adapter)
                found.setdefault(block, []).append((name, module))
    wanted = sorted(found) if indices is None else sorted(set(int(i) for i in indices))
    missing = [i for i in wanted if i not in found]
    if missing or not wanted:
        raise ConfigError(f"--layers: block(s) {missing or wanted} carry no LoRA adapter {adapter!r}; "
                          f"adapted blocks: {sorted(found)}")
    return [AdaptedBlock(i, found[i]) for i in wanted]


def _check_plain_lora(name: str, layer: torch.nn.Module, adapter: str) -> None:
    if adapter in getattr(layer, "lora_variant", {}) or getattr(layer, "use_dora", {}).get(adapter, False):
        raise ConfigError(f"--ranks adaptive needs --method lora (plain LoRA); {name} carries a LoRA variant "
                          "such as DoRA")
    if not isinstance(layer.lora_A[adapter], (torch.nn.Linear, TruncatedFactor)):
        raise ConfigError(f"--ranks adaptive supports LoRA on linear layers only; {name} is a "
                          f"{type(layer).__name__}")


def install_truncation(blocks: Sequence[AdaptedBlock], adapter: str = "default") -> None:
    """Replace every ``lora_A``/``lora_B`` of ``blocks`` by a :class:`TruncatedFactor` (idempotent)."""
    for block in blocks:
        for _, layer in block.layers:
            for side, modules in (("A", layer.lora_A), ("B", layer.lora_B)):
                if not isinstance(modules[adapter], TruncatedFactor):
                    modules[adapter] = TruncatedFactor(modules[adapter], side)


def set_block_rank(block: AdaptedBlock, rank: int, adapter: str = "default") -> None:
    """Use the first ``rank`` rows of every ``A`` and columns of every ``B`` of ``block``."""
    for a, b in block.factors(adapter):
        assert 1 <= rank <= a.r_max, (rank, a.r_max)
        a.rank = b.rank = int(rank)


@torch.no_grad()
def factor_profiles(blocks: Sequence[AdaptedBlock], adapter: str = "default") -> list[list]:
    """Per block, per projection: the squared row norms of ``A`` and column norms of ``B`` (Eq. 7-10's input).

    One stacked tensor and one host transfer for the whole model; returns
    ``list[list[FactorProfile]]`` (blocks x projections), each profile of length ``r_max``.
    """
    from layerwise.train.lalora.allocator import FactorProfile

    parts = []
    for block in blocks:
        for a, b in block.factors(adapter):
            parts.append(a.weight.detach().float().pow(2).sum(dim=1))  # (r_max,) ||A[k, :]||^2
            parts.append(b.weight.detach().float().pow(2).sum(dim=0))  # (r_max,) ||B[:, k]||^2
    flat = torch.stack(parts).double().cpu().tolist()  # (2P, r_max), the update's only sync
    out, k = [], 0
    for block in blocks:
        profiles = []
        for _ in block.layers:
            profiles.append(FactorProfile(tuple(flat[k]), tuple(flat[k + 1])))
            k += 2
        out.append(profiles)
    return out
