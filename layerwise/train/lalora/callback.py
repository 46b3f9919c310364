"""``LaLoRA``: layer-wise adaptive LoRA ranks during training, as a callback around ``optimizer.step()``.

In :func:`layerwise.train.train` pass it in ``callbacks`` and as ``weights_writer``; the loop calls its hooks,
checkpoints its state, saves the final and best adapters through :meth:`LaLoRA.save_adapter` (the truncated
adapter with ``rank_pattern``) and writes ``rank_history.json`` and ``ranks.png`` at the end. In your own loop::

    model = layerwise.adapters.bridge.apply_adapter(base, stack, layers, method="lora", rank=8)   # r_max = 8
    lalora = LaLoRA(model, stack, r_max=8, alpha=16, gamma=1.0, interval=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    for step in range(1, steps + 1):
        model(**batch).loss.backward()
        lalora.before_optimizer_step(optimizer)   # after clipping: Fisher sums, keeps the pruned slices
        optimizer.step()
        lalora.after_optimizer_step(step)         # restores the pruned slices; every `interval` steps: new ranks
        optimizer.zero_grad()
    lalora.export_adapter("out/adapter")           # standard peft folder, rank_pattern + alpha_pattern
    lalora.write_outputs("out")                    # rank_history.json, ranks.png

The forward and backward of block ``i`` use ``A[:r_i]`` and ``B[:, :r_i]`` (:mod:`.truncation`); the pruned
part and its AdamW state are kept exactly (:mod:`.pruned`); the ranks follow Eq. 5-10 of La-LoRA
(:mod:`.allocator`). ``allocation_seconds`` / ``bookkeeping_seconds`` time the callback's own work.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from layerwise.train.lalora.allocator import (DEFAULT_GAMMA, allocate_ranks, check_settings, initial_budget,
                                          layer_values, reallocate)
from layerwise.train.lalora.history import HISTORY_NAME, RankHistory
from layerwise.train.lalora.pruned import restore_pruned, save_pruned
from layerwise.train.lalora.truncation import (AdaptedBlock, adapted_blocks, factor_profiles, install_truncation,
                                           set_block_rank)
from layerwise.runtime.errors import ConfigError, LayerwiseError
from layerwise.models.layers import LayerStack, find_layer_stack

__all__ = ["LaLoRA", "NonFiniteNormError"]


BlocksArg = LayerStack | Sequence[int] | Sequence[AdaptedBlock] | None
"""Which blocks La-LoRA adapts: a stack (all its adapted blocks), block indices, the blocks, or None (all)."""


class NonFiniteNormError(LayerwiseError):
    """An adapter's weights became NaN or infinite: training diverged (the message names the block)."""


class LaLoRA:
    """Layer-wise adaptive ranks (La-LoRA) for the plain-LoRA adapter of ``peft_model``, built at rank ``r_max``.

    ``stack_or_blocks``: a :class:`LayerStack` (every adapted block of it), block indices (those blocks only;
    the stack is found from the model), :class:`AdaptedBlock` s (:func:`adapted_blocks`) or None (every adapted
    block). ``alpha`` defaults to the adapter's ``lora_alpha``; the scaling is ``alpha / r_max``
    (``scale='rmax'``, the paper's) or ``alpha / r_i`` (``'ri'``). ``gamma``, ``interval``, ``car``,
    ``fidelity``, ``contribution`` are ``--gamma``, ``--rank-interval``, not ``--no-car``, not ``--no-fidelity``
    and ``--contribution`` (see :mod:`layerwise.train.lalora.allocator`).
    """

    def __init__(self, peft_model: torch.nn.Module, stack_or_blocks: BlocksArg,
                 r_max: int, alpha: float | None = None, gamma: float = DEFAULT_GAMMA, interval: int = 1,
                 car: bool = True, fidelity: bool = True, contribution: str = "norm", scale: str = "rmax",
                 adapter: str = "default") -> None:
        check_settings(r_max, gamma, interval, contribution, scale)
        self.model, self.adapter = peft_model, adapter
        self.r_max, self.gamma, self.interval = int(r_max), float(gamma), int(interval)
        self.car, self.fidelity, self.contribution, self.scale = car, fidelity, contribution, scale
        self.blocks = _resolve_blocks(peft_model, stack_or_blocks, adapter)
        self.alpha = float(alpha) if alpha is not None else self._adapter_alpha()
        self._check_rank()
        install_truncation(self.blocks, adapter)
        self._factors = [f for block in self.blocks for pair in block.factors(adapter) for f in pair]
        self._weights = [[f.weight for pair in block.factors(adapter) for f in pair] for block in self.blocks]
        self.budget = initial_budget(len(self.blocks), self.r_max, car)
        self.ranks = allocate_ranks([0.0] * len(self.blocks), self.budget, self.r_max)
        self._apply_ranks(self.ranks)
        self.values = layer_values(factor_profiles(self.blocks, adapter), self.ranks)
        device = self._factors[0].weight.device
        self.fisher = torch.zeros(len(self.blocks), dtype=torch.float64, device=device)
        self.history = RankHistory([b.index for b in self.blocks], self.r_max)
        self.history.append(0, self.ranks, self.budget)
        self.allocation_seconds = self.bookkeeping_seconds = 0.0
        self._saved: list = []

    # --- the hooks ------------------------------------------------------------------------------------------

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Before ``optimizer.step()`` (gradients final, clipped): add the Fisher sums, keep the pruned slices."""
        start = time.perf_counter()
        if self.contribution == "fisher":
            self._accumulate_fisher()
        self._saved = save_pruned(self._factors, optimizer)
        self.bookkeeping_seconds += time.perf_counter() - start

    def after_optimizer_step(self, step: int) -> None:
        """After ``optimizer.step()`` of step ``step`` (1-based): restore the pruned slices; every ``interval``
        steps reallocate the ranks (Eq. 5-10)."""
        start = time.perf_counter()
        restore_pruned(self._saved)
        self._saved = []
        middle = time.perf_counter()
        self.bookkeeping_seconds += middle - start
        if step % self.interval == 0:
            self.update(step)
            self.allocation_seconds += time.perf_counter() - middle

    def update(self, step: int) -> None:
        """One La-LoRA update after step ``step``: layer values, budget, contributions, new ranks."""
        profiles = factor_profiles(self.blocks, self.adapter)
        fisher = self.fisher.tolist() if self.contribution == "fisher" else None
        self._check_finite(profiles, fisher, step)
        alloc = reallocate(profiles, self.ranks, self.values, self.budget, gamma=self.gamma, r_max=self.r_max,
                           fidelity=self.fidelity, fisher=fisher)
        self.ranks, self.budget, self.values = alloc.ranks, alloc.budget, alloc.next_values
        self._apply_ranks(self.ranks)
        self.history.append(step, self.ranks, self.budget)

    # --- what the training loop calls besides the hooks ----------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly (tensors and plain numbers only)."""
        return {"blocks": [b.index for b in self.blocks], "r_max": self.r_max,
                "ranks": torch.tensor(self.ranks, dtype=torch.int64), "budget": float(self.budget),
                "values": torch.tensor(self.values, dtype=torch.float64), "fisher": self.fisher.detach().cpu(),
                "history": self.history.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the same blocks and ``r_max``) and apply its ranks to the model."""
        blocks = [b.index for b in self.blocks]
        if list(state["blocks"]) != blocks or int(state["r_max"]) != self.r_max:
            raise ConfigError(f"--resume: the checkpoint's La-LoRA state is for blocks {list(state['blocks'])} at "
                              f"--r-max {state['r_max']}, this run adapts blocks {blocks} at --r-max {self.r_max}")
        self.ranks = [int(r) for r in state["ranks"].tolist()]
        self.budget = float(state["budget"])
        self.values = [float(v) for v in state["values"].tolist()]
        self.fisher = state["fisher"].to(device=self.fisher.device, dtype=torch.float64).clone()
        self.history.load_state_dict(state["history"])
        self._apply_ranks(self.ranks)

    def save_adapter(self, model: torch.nn.Module, path: str | os.PathLike) -> Path:
        """The loop's adapter saving: the truncated, standard peft adapter (:func:`export_adapter`)."""
        from layerwise.train.lalora.export import export_adapter

        assert model is self.model, "LaLoRA saves the model it was built for"
        return export_adapter(self.model, self.blocks, path, self.adapter)

    def on_train_end(self, state: Any, out_dir: str | os.PathLike) -> None:
        """After training: ``rank_history.json`` and ``ranks.png`` in ``out_dir``."""
        self.write_outputs(out_dir)

    # --- for users ----------------------------------------------------------------------------------------

    def export_adapter(self, path: str | os.PathLike) -> Path:
        """Write the trained adapter as a standard peft folder (ranks in ``rank_pattern``/``alpha_pattern``)."""
        return self.save_adapter(self.model, path)

    def write_outputs(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """``rank_history.json`` and ``ranks.png`` in ``out_dir``; returns their paths."""
        from layerwise.train.lalora.plots import PLOT_NAME, plot_ranks

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        return {"history": self.history.save(out / HISTORY_NAME), "plot": plot_ranks(self.history, out / PLOT_NAME)}

    def set_ranks(self, ranks: Sequence[int]) -> None:
        """Use these ranks (one per block, each in ``[1, r_max]``) from now on, e.g. to fix them by hand; the
        budget and layer values are left as they are."""
        if len(ranks) != len(self.blocks) or not all(1 <= int(r) <= self.r_max for r in ranks):
            raise ConfigError(f"ranks {list(ranks)}: need {len(self.blocks)} ranks in 1..{self.r_max}")
        self.ranks = [int(r) for r in ranks]
        self._apply_ranks(self.ranks)

    @property
    def block_ranks(self) -> dict[int, int]:
        """Block index -> current rank."""
        return {b.index: r for b, r in zip(self.blocks, self.ranks)}

    @property
    def module_ranks(self) -> dict[str, int]:
        """Full module name -> current rank, for every adapted module."""
        return {name: r for b, r in zip(self.blocks, self.ranks) for name, _ in b.layers}

    # --- internals ------------------------------------------------------------------------------------------

    def _apply_ranks(self, ranks: Sequence[int]) -> None:
        for block, rank in zip(self.blocks, ranks):
            set_block_rank(block, rank, self.adapter)
            scaling = self.alpha / (self.r_max if self.scale == "rmax" else rank)
            for _, layer in block.layers:
                layer.scaling[self.adapter] = scaling

    @torch.no_grad()
    def _accumulate_fisher(self) -> None:
        """Empirical Fisher information: sum over steps of the squared gradients of each block's factors."""
        sums = []
        for weights in self._weights:
            grads = [w.grad for w in weights if w.grad is not None]
            sums.append(torch.stack([g.double().pow(2).sum() for g in grads]).sum() if grads
                        else self.fisher.new_zeros(()))
        self.fisher += torch.stack(sums)  # (L,)

    def _check_finite(self, profiles: list, fisher: list[float] | None, step: int) -> None:
        for block, block_profiles in zip(self.blocks, profiles):
            bad = [name for (name, _), p in zip(block.layers, block_profiles) if not p.is_finite()]
            if bad or (fisher is not None and not math.isfinite(fisher[self.blocks.index(block)])):
                raise NonFiniteNormError(
                    f"La-LoRA: the LoRA weights of block {block.index} ({', '.join(bad) or 'its Fisher sum'}) are "
                    f"NaN or infinite after step {step}: training diverged. Nothing was saved after the last "
                    "checkpoint (kept in the output folder); lower --lr and start again")

    def _adapter_alpha(self) -> float:
        alphas = {float(layer.lora_alpha[self.adapter]) for b in self.blocks for _, layer in b.layers}
        if len(alphas) != 1:
            raise ConfigError(f"--alpha: the adapted modules have different lora_alpha values {sorted(alphas)}; "
                              "pass one alpha")
        return alphas.pop()

    def _check_rank(self) -> None:
        ranks = {int(layer.r[self.adapter]) for b in self.blocks for _, layer in b.layers}
        if ranks != {self.r_max}:
            raise ConfigError(f"--r-max {self.r_max}: the LoRA adapter was built at rank(s) {sorted(ranks)}; "
                              "build it at rank r_max (one rank for every module)")


def _resolve_blocks(peft_model: torch.nn.Module, stack_or_blocks: BlocksArg, adapter: str) -> list[AdaptedBlock]:
    if isinstance(stack_or_blocks, LayerStack):
        return adapted_blocks(peft_model, stack_or_blocks, None, adapter)
    if stack_or_blocks and all(isinstance(b, AdaptedBlock) for b in stack_or_blocks):
        return list(stack_or_blocks)
    return adapted_blocks(peft_model, find_layer_stack(peft_model), stack_or_blocks, adapter)
