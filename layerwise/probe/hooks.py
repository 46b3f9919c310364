"""Forward and backward hooks that feed :class:`~layerwise.probe.stats.ProbeStats` from a layer stack.

The hooks see each block's input x (B, T, d) and output h (B, T, d). The runner sets the batch's
attention mask (B, T) before each forward. Nothing is stored beyond the statistics' sums, except that the
``out_grad`` statistic holds a reference to a block's input until the backward pass reaches the block
(autograd keeps that tensor alive anyway, so this costs no memory).
"""

from __future__ import annotations

from typing import Any

import torch

from layerwise.probe.stats import ProbeStats

__all__ = ["ProbeHooks", "pool_tokens"]


def pool_tokens(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per example: ``first`` token, ``last`` real token, or ``mean`` over real tokens; (B, d)."""
    if pooling == "first":
        return h[:, 0]
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * positions).argmax(1)  # (B,) index of the last real token
        return h[torch.arange(h.shape[0], device=h.device), last]
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def _first_tensor(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def _kernel_cka(x: torch.Tensor, y: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Linear CKA of one batch in kernel form (B x B Grams), as a 0-dim tensor on the rows' device (no
    host sync); NaN for fewer than 3 examples.

    A side that does not vary across examples (e.g. the [CLS] input of the first block) shares no
    structure with the other: CKA 0.
    """
    if x.shape[0] < 3:
        return torch.tensor(float("nan"), dtype=torch.float64, device=x.device)
    x, y = x.double(), y.double()
    xc, yc = x - x.mean(0), y - y.mean(0)
    k, l_ = xc @ xc.T, yc @ yc.T
    cka = (k * l_).sum() / (k.norm() * l_.norm())
    constant = (xc.norm() <= rtol * x.norm()) | (yc.norm() <= rtol * y.norm())
    return torch.where(constant, torch.zeros_like(cka), cka)


class ProbeHooks:
    """Installs the hooks for the statistics in ``stats.wanted`` on every block of ``stack``.

    Use as a context manager; hooks are removed on exit, also after an error.
    """

    def __init__(self, stack: Any, stats: ProbeStats, pooling: str = "first",
                 qv_modules: dict[int, dict[str, tuple[torch.nn.Module, slice | None]]] | None = None) -> None:
        self.stack = stack
        self.stats = stats
        self.pooling = pooling
        self.qv_modules = qv_modules or {}
        self.mask: torch.Tensor | None = None  # (B, T) bool, set by the runner per batch
        self._handles: list[Any] = []
        self._inputs: dict[int, torch.Tensor] = {}
        # chained[i]: block i's input is the very tensor block i-1 returned, so its pooled Gram is
        # block i-1's output Gram and need not be accumulated twice. Decided on the first batch.
        self.chained: dict[int, bool] = {}
        self._last_out: torch.Tensor | None = None
        self._batch: dict[str, torch.Tensor] = {}

    # -- installation ---------------------------------------------------------------------------
    def __enter__(self) -> "ProbeHooks":
        for block in self.stack.blocks:
            i = block.index
            self._handles.append(block.module.register_forward_pre_hook(self._pre_hook(i), with_kwargs=True))
            self._handles.append(block.module.register_forward_hook(self._post_hook(i)))
            if "out_norm" in self.stats.wanted:
                for kind, (module, part) in self.qv_modules.get(i, {}).items():
                    self._handles.append(module.register_forward_hook(self._proj_hook(i, kind, part)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._inputs.clear()
        self._last_out = None

    # -- per batch ------------------------------------------------------------------------------
    def start_batch(self, mask: torch.Tensor) -> None:
        """Set the attention mask of the next forward and reset the per-batch scalars.

        Per-batch values stay on the model's device until the pass ends: hooks never wait for the GPU.
        The real-token positions are found once per batch (one host sync) and shared by every hook.
        """
        self.mask = mask.bool()
        self._maskf = self.mask.to(torch.float32)  # (B, T)
        self._n_real = self._maskf.sum()  # 0-dim, on device
        self._real_idx = self.mask.reshape(-1).nonzero().squeeze(1)  # (N,) flat indices of real tokens
        L = self.stats.num_blocks
        self._batch = {k: torch.full((L,), float("nan"), dtype=torch.float64, device=mask.device)
                       for k in ("block", "q", "v", "cka", "energy", "grad_proxy")}

    def end_batch(self) -> None:
        """Move the per-batch scalars into the stats' per-batch histories."""
        s, b = self.stats, self._batch
        if "out_norm" in s.wanted:
            for kind in ("block", "q", "v"):
                s.norm_batches[kind].append(b[kind])
        if "pooled" in s.wanted:
            s.pooled_batches.append(b["cka"])
        if "input_cov" in s.wanted:
            s.energy_batches.append(b["energy"])
        if "out_grad" in s.wanted:
            s.out_grad_batches.append(b["grad_proxy"])
        self._inputs.clear()
        self._last_out = None

    # -- hooks ----------------------------------------------------------------------------------
    def _pre_hook(self, i: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            self._inputs[i] = x
            if i not in self.chained:
                self.chained[i] = i > 0 and x is self._last_out
        return hook

    def _post_hook(self, i: int):
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            h = _first_tensor(output)
            x = self._inputs[i]
            self._last_out = h
            wanted, mask = self.stats.wanted, self.mask
            assert mask is not None, "start_batch() must be called before each forward"
            if "out_norm" in wanted:
                self._add_norm(i, "block", h)
            if "pooled" in wanted:
                self._add_pooled(i, x, h)
            if "input_cov" in wanted:
                rows = x.detach().reshape(-1, x.shape[-1]).index_select(0, self._real_idx)  # (N, d) real tokens
                self.stats.input_cov[i].add(rows)
                self._batch["energy"][i] = rows.float().pow(2).sum(-1).mean()
            if "out_grad" in wanted and h.requires_grad:
                h.register_hook(self._grad_hook(i, x))
            else:
                self._inputs.pop(i, None)
        return hook

    def _proj_hook(self, i: int, kind: str, part: slice | None):
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            y = _first_tensor(output)
            self._add_norm(i, kind, y if part is None else y[..., part])
        return hook

    def _grad_hook(self, i: int, x: torch.Tensor):
        def hook(g: torch.Tensor) -> None:
            d_out, d_in = g.shape[-1], x.shape[-1]
            gf, xf = g.reshape(-1, d_out).float(), x.detach().reshape(-1, d_in).float()  # (B*T, d)
            # Padding rows carry zero gradient (no real token reads them), so G sums real tokens only.
            c = gf.T @ xf  # this batch's g^T x, (d_out, d_in)
            self.stats.out_grad[i].add(c)
            scale = xf.pow(2).mean(0).clamp_min(1e-12).sqrt()  # per-feature scale of this batch, (d_in,)
            self._batch["grad_proxy"][i] = (c / scale).norm()
            self._inputs.pop(i, None)
        return hook

    # -- statistic updates ----------------------------------------------------------------------
    def _add_norm(self, i: int, kind: str, y: torch.Tensor) -> None:
        total = (y.detach().float().norm(dim=-1) * self._maskf).sum()  # sum of token norms over real tokens
        s = self.stats
        s.norm_sums[kind][i] += total
        s.norm_counts[kind][i] += self._n_real
        self._batch[kind][i] = total / self._n_real

    def _add_pooled(self, i: int, x: torch.Tensor, h: torch.Tensor) -> None:
        assert self.mask is not None
        px = pool_tokens(x.detach(), self.mask, self.pooling)  # (B, d)
        ph = pool_tokens(h.detach(), self.mask, self.pooling)  # (B, d)
        s = self.stats
        if not self.chained.get(i, False):
            s.pooled_in[i].add(px)
        s.pooled_out[i].add(ph)
        s.pooled_cross[i].add(ph, px)
        self._batch["cka"][i] = 1.0 - _kernel_cka(px, ph)
