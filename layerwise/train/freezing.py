"""``Freezer``: the freezing schedule of :mod:`layerwise.train.freeze` wired into :func:`layerwise.train.train`.

Per optimizer step (``--freeze auto``), after the gradients are final and unscaled and before clipping, it adds
each trainable adapted block's adapter gradient norm to the interval's accumulator. After the step (before
evaluation and checkpoint) it checks when due and, when the rule says so, freezes the lowest trainable block:

- its adapter parameters get ``requires_grad=False`` (no gradient, so the backward stops at the block above)
  and their AdamW state is dropped (AdamW skips a parameter without a gradient, so the weights stay bitwise
  as they were);
- the frozen prefix runs without dropout (``layerwise.train.prefix.frozen``), unless ``--prefix-dropout``
  (which also turns the cache off: rows with dropout change every epoch);
- with the prefix cache on (any ``--prefix-cache`` but ``off``), the cache boundary moves up: the input of
  the next trainable block is computed for every training example in one inference pass of the newly frozen
  block over the previously cached rows (the embeddings and block 0 for the first freeze), with the frozen
  adapters applied. That pass is counted in the run's training time. The training forward passes cannot
  provide those rows: they run the block with dropout on a random batch. The dev set is not cached (it is
  scored with the whole model).

Resume: the state (frozen count, the accumulators, the history) is saved with each checkpoint; on resume the
same blocks are frozen again and the cache is rebuilt by the same chain of one-block passes, so the resumed
run sees the same cached rows bit for bit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from layerwise.runtime import distributed
from layerwise.runtime.errors import ConfigError
from layerwise.train.freeze import FreezeState, auto_decision, card_schedule, kendall_tau, schedule_warning

__all__ = ["Freezer", "adapted_block_parameters", "check_freeze", "card_importance"]

log = logging.getLogger(__name__)


def adapted_block_parameters(model: Any, stack: Any) -> tuple[list[int], list[list[tuple[str, Any]]]]:
    """(adapted block indices bottom-up, per block its trainable (name, parameter)s); refuses a trainable
    parameter before the blocks (the frozen prefix's output would change)."""
    from layerwise.models.layers import unwrap_model

    groups: dict[int, list] = {}
    seen_block = False
    for name, p in unwrap_model(model).named_parameters():
        block = stack.block_of(name)
        seen_block = seen_block or block is not None
        if not p.requires_grad:
            continue
        if block is None and not seen_block:
            raise ConfigError(f"--freeze: the parameter {name} before the blocks is trained; freezing needs the "
                              "embeddings frozen (use --freeze off)")
        if block is not None:
            groups.setdefault(block, []).append((name, p))
    blocks = sorted(groups)
    return blocks, [groups[b] for b in blocks]


def check_freeze(train_config: Any, adapter: Any) -> None:
    """Refuse ``--freeze`` where it is not supported, in one line naming the flag."""
    freeze = getattr(train_config, "freeze", "off")
    if freeze == "off":
        return
    if adapter is None:
        raise ConfigError(f"--freeze {freeze} freezes adapted blocks; full fine-tuning has none (use --freeze off "
                          "or an adapter)")
    if adapter.is_adaptive or adapter.method == "adalora":
        what = "La-LoRA (--adaptive-ranks)" if adapter.is_adaptive else "AdaLoRA"
        raise ConfigError(f"--freeze {freeze} is not supported with {what}: its ranks change during training; use "
                          "--freeze off or --method lora")


def card_importance(train_config: Any, card: Any) -> list[float] | None:
    """The card's importance per block by ``--freeze-metric`` (``--freeze card``'s order, and what the observed
    order is compared with), or None without a card or freezing."""
    if getattr(train_config, "freeze", "off") == "off" or card is None:
        return None
    if train_config.freeze_metric not in card.metric_names:
        if train_config.freeze == "card":
            raise ConfigError(f"--freeze-metric {train_config.freeze_metric!r} is not on the card; it has: "
                              f"{', '.join(card.metric_names)}")
        return None
    return card.importance(train_config.freeze_metric)



class Freezer:
    """Freezes the adapted blocks of a peft ``model`` bottom-up during :func:`layerwise.train.train`.

    ``config`` is the run's :class:`~layerwise.train.config.TrainConfig`; ``features`` the encoded training
    examples (the cache's rows); ``importance`` the card's importance per model block (``--freeze card``
    needs it; with ``auto`` it only feeds the Kendall tau of the report). ``cache`` is the run's frozen-prefix
    cache at the start (or None); ``use_cache`` whether the boundary moves with the frozen prefix.
    """

    def __init__(self, model: Any, config: Any, features: Sequence[dict], optimizer: Any,
                 importance: Sequence[float] | None = None, cache: Any = None, use_cache: bool = True,
                 steps_per_epoch: float = 1.0) -> None:
        from layerwise.models.layers import find_layer_stack, unwrap_model

        self.model, self.config, self.features, self.optimizer = model, config, features, optimizer
        self.stack = find_layer_stack(model)
        self.layers = unwrap_model(model).get_submodule(self.stack.path)
        self.blocks, self.params = adapted_block_parameters(model, self.stack)
        n = len(self.blocks)
        if n == 0:
            raise ConfigError("--freeze: the model has no adapted block to freeze")
        self.importance = None if importance is None else [float(importance[b]) for b in self.blocks]
        if config.freeze == "card" and self.importance is None:
            raise ConfigError("--freeze card needs a Layer Card (give --card, or use --freeze auto)")
        self.schedule = (card_schedule(self.importance, config.steps, config.freeze_keep_top, config.freeze_start,
                                       config.freeze_end) if config.freeze == "card" else [])
        warning = schedule_warning(self.schedule, self.blocks)
        if warning:
            log.warning(warning)
        self.cache, self.use_cache = cache, use_cache
        self.state = FreezeState(freeze_steps=[None] * n, depth=[[0, n]])
        self.fill_seconds = 0.0
        self.saved_fill_seconds = 0.0
        """Cache-fill seconds of the sessions before a resume (the rest is this session's rebuild and fills)."""
        self.last_fill_seconds = 0.0
        self.epoch_seconds: list[float] = []
        self.steps_per_epoch = steps_per_epoch
        self._epoch_start = 0.0
        device = self.params[0][0][1].device
        self.accumulated = torch.zeros(n, dtype=torch.float64, device=device)
        self._quiet: list[Any] = []

    # -- per step ---------------------------------------------------------------------------------------
    def accumulate(self) -> None:
        """Add each trainable block's adapter gradient norm (the step's final, unclipped gradient)."""
        if self.config.freeze != "auto":
            return
        for pos in range(self.state.frozen, len(self.blocks)):
            grads = [p.grad for _, p in self.params[pos] if p.grad is not None]
            if grads:
                norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
                self.accumulated[pos] += norm.double()

    def due(self, step: int) -> bool:
        """Whether ``step`` (just completed) is a check."""
        if self.config.freeze == "card":
            return self.state.frozen < len(self.schedule)
        return step % self.config.freeze_interval == 0 and step < self.config.steps

    def check(self, step: int) -> bool:
        """Run the check of ``step``; freeze the next block when the criterion fires. True when one froze."""
        st = self.state
        if self.config.freeze == "card":
            fired = False  # every block whose scheduled step has come (several when the prefix rule ties them)
            while st.frozen < len(self.schedule) and step >= self.schedule[st.frozen]:
                st.checks.append({"step": step, "candidate": st.frozen, "froze": True})
                self.freeze_next(step)
                fired = True
            return fired
        current = self._reduced_norms()
        fire, info = auto_decision(st.previous, current, st.frozen, self.config.freeze_keep_top,
                                   self.config.freeze_percentile)
        if distributed.world_size() > 1:  # rank 0 decides for all: every rank freezes the same block at this step
            fire = distributed.broadcast_object(fire)
        st.checks.append({"step": step, **info, "froze": fire})
        st.previous = current
        self.accumulated.zero_()
        if fire:
            self.freeze_next(step)
        return fire

    def _reduced_norms(self) -> list[float]:
        """The interval's accumulated gradient norms, averaged over the ranks under torchrun (DDP gives every rank
        the same averaged gradient, so this only guards against a rank whose sums rounded differently)."""
        if distributed.world_size() == 1:
            return self.accumulated.tolist()
        total = distributed.all_reduce_sum(self.accumulated.clone())
        return (total / distributed.world_size()).tolist()

    def end_of_step(self, step: int, train_seconds: float) -> None:
        """Record the time of each finished epoch (``train_seconds`` is the run's total so far)."""
        if int(step // self.steps_per_epoch) > int((step - 1) // self.steps_per_epoch):
            self.epoch_seconds.append(train_seconds - self._epoch_start)
            self._epoch_start = train_seconds

    # -- freezing -----------------------------------------------------------------------------------------
    def freeze_next(self, step: int) -> None:
        """Freeze the lowest trainable block now (after step ``step``)."""
        st = self.state
        pos = st.frozen
        self._freeze_parameters(pos)
        st.frozen += 1
        st.freeze_steps[pos] = step
        st.depth.append([step, len(self.blocks) - st.frozen])
        log.info("--freeze %s: block %d frozen after step %d (%d of %d adapted blocks still train)",
                 self.config.freeze, self.blocks[pos], step, len(self.blocks) - st.frozen, len(self.blocks))
        self._move_boundary()

    def _freeze_parameters(self, pos: int) -> None:
        for _, p in self.params[pos]:
            p.requires_grad_(False)
            p.grad = None
            self.optimizer.state.pop(p, None)

    def _move_boundary(self) -> None:
        """Quiet the new frozen prefix and move the cache to the input of the lowest trainable block."""
        from layerwise.train.prefix.frozen import quiet_frozen_prefix

        frozen = self.state.frozen
        if frozen >= len(self.blocks):
            return
        layer = self.blocks[frozen]
        if self.config.prefix_dropout:  # frozen blocks keep their dropout (and so cannot be cached)
            return
        for handle in self._quiet:
            handle.remove()
        self._quiet = quiet_frozen_prefix(self.model, self.stack, [layer])
        if self.use_cache:
            self._fill(layer)

    def _fill(self, layer: int) -> None:
        from layerwise.train.prefix.cache import PrefixCache, PrefixCacheReport, PrefixSkipper, fill_store

        dtype = self.config.prefix_cache_dtype
        compute = next(self.model.parameters()).dtype
        source = None
        if self.cache is not None:
            source = (self.cache.train, self.cache.skipper.layer, self.cache.skipper.structure)
        start = time.perf_counter()
        store, structure = fill_store(self.model, self.layers, layer, self.features, dtype, source, compute)
        seconds = time.perf_counter() - start
        self.fill_seconds += seconds
        report = PrefixCacheReport(used=True, reason=f"--freeze {self.config.freeze}: frozen prefix below block "
                                   f"{layer}", mode="memory", layer=layer, dtype=dtype, bytes=store.nbytes,
                                   build_seconds=self.fill_seconds)
        self.cache = PrefixCache(PrefixSkipper(self.layers, layer, structure), store, None, [], report, compute)
        self.last_fill_seconds = seconds

    # -- checkpoint -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Saved with each checkpoint (plain containers and tensors)."""
        return {"state": self.state.to_dict(), "accumulated": self.accumulated.detach().cpu().clone(),
                "epoch_seconds": list(self.epoch_seconds), "epoch_start": self._epoch_start,
                "fill_seconds": self.fill_seconds}

    def load_state_dict(self, data: dict[str, Any]) -> None:
        """Restore a checkpoint's state: freeze the same blocks again and rebuild the cache by the same chain."""
        saved = FreezeState.from_dict(data["state"])
        self.accumulated.copy_(data["accumulated"].to(self.accumulated.device))
        self.epoch_seconds, self._epoch_start = list(data["epoch_seconds"]), float(data["epoch_start"])
        for pos in range(saved.frozen):
            self._freeze_parameters(pos)
            self.state.frozen = pos + 1
            self._move_boundary()
        self.state = saved
        self.saved_fill_seconds = float(data["fill_seconds"])
        self.fill_seconds = self.saved_fill_seconds + self.fill_seconds  # the rebuild counts too

    # -- report -----------------------------------------------------------------------------------------
    def report(self, steps: int) -> dict[str, Any]:
        """What ``metrics.json`` holds under ``freeze``."""
        st, c = self.state, self.config
        observed = [s if s is not None else steps + 1 for s in st.freeze_steps]
        tau = None
        if self.importance is not None and st.frozen:
            n = len(self.blocks) - c.freeze_keep_top
            tau = kendall_tau(self.importance[:n], observed[:n])
        return {"mode": c.freeze, "every": c.freeze_interval, "percentile": c.freeze_percentile,
                "keep_top": c.freeze_keep_top, "start": c.freeze_start, "end": c.freeze_end,
                "metric": c.freeze_metric if self.importance is not None else None,
                "blocks": list(self.blocks), "freeze_step": {str(b): s for b, s in zip(self.blocks, st.freeze_steps)},
                "frozen": st.frozen, "depth": st.depth, "card_schedule": self.schedule or None,
                "kendall_tau": tau, "cache": self.use_cache, "cache_fill_seconds": self.fill_seconds,
                "epoch_seconds": list(self.epoch_seconds), "checks": st.checks}

    def summary(self, steps: int) -> str:
        """One line for a report."""
        r = self.report(steps)
        froze = ", ".join(f"{b}@{s}" for b, s in r["freeze_step"].items() if s is not None) or "none"
        tau = "" if r["kendall_tau"] is None else f"; Kendall tau card vs observed order {r['kendall_tau']:.2f}"
        return (f"freeze {r['mode']}: blocks frozen (block@step) {froze}; {len(self.blocks) - r['frozen']} of "
                f"{len(self.blocks)} adapted blocks train at the end; cache fills {r['cache_fill_seconds']:.1f} s{tau}")
