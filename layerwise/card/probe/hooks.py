"""Forward and backward hooks that feed :class:`~layerwise.card.probe.stats.ProbeStats` from a layer stack.

The hooks see each block's input x (B, T, d) and output h (B, T, d). The runner sets the batch's
attention mask (B, T) before each forward. Nothing is stored beyond the statistics' sums, except that the
``out_grad`` statistic holds a reference to a block's input until the backward pass reaches the block
(autograd keeps that tensor alive anyway, so this costs no memory).
"""

from __future__ import annotations

from typing import Any

import torch

from layerwise.card.probe.stats import ProbeStats

__all__ = ["ProbeHooks", "pool_tokens"]


def pool_tokens(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per example: ``first`` token, ``last`` real token, or ``mean`` over real tokens; (B, d),
    float32 at least (a 16-bit model's states are upcast before they are summed)."""
    if pooling == "first":
        return _at_least_f32(h[:, 0])
    if pooling == "last":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask.long() * positions).argmax(1)  # (B,) index of the last real token
        return _at_least_f32(h[torch.arange(h.shape[0], device=h.device), last])
    m = mask.unsqueeze(-1).to(torch.promote_types(h.dtype, torch.float32))  # (B, T, 1); promotes h * m
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


def _at_least_f32(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32, or as it is when it is already float32 or float64."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _first_tensor(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


def _kernel_cka(x: torch.Tensor, y: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """Linear CKA per stacked batch in kernel form (B x B Grams): x, y (S, B, d) -> (S,) float64 on the rows'
    device (no host sync); NaN for fewer than 3 examples.

    A side that does not vary across examples (e.g. the [CLS] input of an encoder's first block, the same
    embedding for every example) makes CKA 0/0: NaN, undefined.
    """
    if x.shape[-2] < 3:
        return torch.full(x.shape[:-2], float("nan"), dtype=torch.float64, device=x.device)
    x, y = x.double(), y.double()
    xc, yc = x - x.mean(-2, keepdim=True), y - y.mean(-2, keepdim=True)
    k, l_ = xc @ xc.mT, yc @ yc.mT  # (S, B, B)
    cka = (k * l_).sum((-2, -1)) / (torch.linalg.matrix_norm(k) * torch.linalg.matrix_norm(l_))
    constant = ((torch.linalg.matrix_norm(xc) <= rtol * torch.linalg.matrix_norm(x))
                | (torch.linalg.matrix_norm(yc) <= rtol * torch.linalg.matrix_norm(y)))
    return torch.where(constant, torch.full_like(cka, float("nan")), cka)


class ProbeHooks:
    """Installs the hooks for the statistics in ``stats.wanted`` on every block of ``stack``.

    Use as a context manager; hooks are removed on exit, also after an error. Work that is small per block
    (token norms, pooled vectors, per-batch CKA and energy) is only reduced to a few numbers or one vector
    per example inside a hook, then done for all blocks at once in :meth:`end_batch`, with stacked tensors:
    a few dozen tensor operations per batch instead of a few hundred (on a GPU, kernel launches).
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
        # this batch's per-block pieces, reduced together in end_batch
        self._norms: dict[str, dict[int, torch.Tensor]] = {k: {} for k in ("block", "q", "v")}  # (B, T) each
        self._pooled_in: dict[int, torch.Tensor] = {}  # (B, d) of blocks whose input is not chained
        self._pooled_out: dict[int, torch.Tensor] = {}  # (B, d)
        self._energy: dict[int, torch.Tensor] = {}  # 0-dim: ||real input rows||_F
        self._grad_proxy: dict[int, torch.Tensor] = {}  # 0-dim
        self._states: tuple[dict[int, int], dict[int, int]] | None = None  # pooled state index of in/out

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
        self._clear_batch()

    def finish(self) -> None:
        """After the last batch: split the stacked pooled sums into the per-block ones."""
        if "pooled" in self.stats.wanted and self._states is not None:
            self.stats.unstack_pooled(*self._states)

    # -- per batch ------------------------------------------------------------------------------
    def start_batch(self, mask: torch.Tensor) -> None:
        """Set the attention mask of the next forward.

        Per-batch values stay on the model's device until the pass ends: hooks never wait for the GPU.
        The real-token positions are found once per batch (one host sync) and shared by every hook.
        """
        self.mask = mask.bool()
        self._maskf = self.mask.to(torch.float32)  # (B, T)
        self._n_real = self._maskf.sum()  # 0-dim, on device
        self._real_idx = self.mask.reshape(-1).nonzero().squeeze(1)  # (N,) flat indices of real tokens

    def end_batch(self) -> None:
        """Reduce this batch's per-block pieces for all blocks at once into the stats."""
        wanted = self.stats.wanted
        if "out_norm" in wanted:
            self._reduce_norms()
        if "pooled" in wanted and self._pooled_out:
            self._reduce_pooled()
        if "input_cov" in wanted and self._energy:
            self.stats.energy_batches.append(self._per_block(self._energy).pow(2) / self._n_real)
        if "out_grad" in wanted:
            self.stats.out_grad_batches.append(self._per_block(self._grad_proxy))
        self._clear_batch()

    def _clear_batch(self) -> None:
        self._inputs.clear()
        self._last_out = None
        for parts in self._norms.values():
            parts.clear()
        self._pooled_in.clear()
        self._pooled_out.clear()
        self._energy.clear()
        self._grad_proxy.clear()

    def _per_block(self, values: dict[int, torch.Tensor]) -> torch.Tensor:
        """(L,) float64 of per-block 0-dim values, NaN where a block has none this batch."""
        L = self.stats.num_blocks
        if len(values) == L:
            return torch.stack([values[i] for i in range(L)]).double()
        out = torch.full((L,), float("nan"), dtype=torch.float64, device=self._maskf.device)
        for i, v in values.items():
            out[i] = v
        return out

    def _reduce_norms(self) -> None:
        s, L = self.stats, self.stats.num_blocks
        for kind, parts in self._norms.items():
            if not parts:
                s.norm_batches[kind].append(torch.full((L,), float("nan"), dtype=torch.float64,
                                                       device=self._maskf.device))
                continue
            blocks = sorted(parts)
            sums = (torch.stack([parts[i] for i in blocks]) * self._maskf).sum((1, 2)).double()  # (K,)
            if len(blocks) == L:
                s.norm_sums[kind] += sums
                s.norm_counts[kind] += self._n_real
                s.norm_batches[kind].append(sums / self._n_real)
            else:
                idx = torch.tensor(blocks, device=sums.device)
                s.norm_sums[kind].index_add_(0, idx, sums)
                s.norm_counts[kind].index_add_(0, idx, self._n_real.double().expand(len(blocks)))
                s.norm_batches[kind].append(self._per_block(dict(zip(blocks, sums / self._n_real))))

    def _state_indices(self) -> tuple[dict[int, int], dict[int, int]]:
        """Where block i's pooled input and output sit among the stacked states (fixed after batch 1)."""
        if self._states is None:
            ins, outs, n = {}, {}, 0
            for i in sorted(self._pooled_out):
                if i in self._pooled_in:
                    ins[i], n = n, n + 1
                else:  # chained: the previous block's output state
                    ins[i] = outs[i - 1]
                outs[i], n = n, n + 1
            self._states = (ins, outs)
        return self._states

    def _reduce_pooled(self) -> None:
        ins, outs = self._state_indices()
        states = []
        for i in sorted(outs):
            if i in self._pooled_in:
                states.append(self._pooled_in[i])
            states.append(self._pooled_out[i])
        pooled = torch.stack(states).float()  # (S, B, d)
        blocks = sorted(outs)
        p_out = pooled[[outs[i] for i in blocks]]  # (L, B, d)
        p_in = pooled[[ins[i] for i in blocks]]
        s = self.stats
        if s.pooled_rows is not None:  # kept as they are: CKA in kernel form (layerwise.card.probe.plan)
            s.pooled_rows.append(pooled)
        else:
            s.pooled_stack.add(pooled)
            s.cross_stack.add(p_out, p_in)
        s.pooled_batches.append(1.0 - _kernel_cka(p_in, p_out))

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
                self._norms["block"][i] = _token_norms(h)
            if "pooled" in wanted:
                if not self.chained.get(i, False):
                    self._pooled_in[i] = pool_tokens(x.detach(), mask, self.pooling)
                self._pooled_out[i] = pool_tokens(h.detach(), mask, self.pooling)
            if "input_cov" in wanted:
                rows = x.detach().reshape(-1, x.shape[-1]).index_select(0, self._real_idx)  # (N, d) real tokens
                self.stats.input_cov[i].add(rows)
                self._energy[i] = torch.linalg.vector_norm(rows, dtype=torch.float32)
            if "out_grad" in wanted and h.requires_grad:
                h.register_hook(self._grad_hook(i, x))
            else:
                self._inputs.pop(i, None)
        return hook

    def _proj_hook(self, i: int, kind: str, part: slice | None):
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            y = _first_tensor(output)
            self._norms[kind][i] = _token_norms(y if part is None else y[..., part])
        return hook

    def _grad_hook(self, i: int, x: torch.Tensor):
        def hook(g: torch.Tensor) -> None:
            d_out, d_in = g.shape[-1], x.shape[-1]
            gf, xf = g.reshape(-1, d_out).float(), x.detach().reshape(-1, d_in).float()  # (B*T, d)
            # Padding rows carry zero gradient (no real token reads them), so G sums real tokens only.
            if self.stats.out_sketch is not None:  # projected: S^T g^T x, (k, d_in)
                gf = gf @ self.stats.out_sketch  # (B*T, k)
            c = gf.T @ xf  # this batch's g^T x, (d_out, d_in)
            self.stats.out_grad[i].add(c)
            scale = xf.pow(2).mean(0).clamp_min(1e-12).sqrt()  # per-feature scale of this batch, (d_in,)
            self._grad_proxy[i] = (c / scale).norm()
            self._inputs.pop(i, None)
        return hook


def _token_norms(y: torch.Tensor) -> torch.Tensor:
    """L2 norm of every token's vector, float32, (B, T)."""
    return torch.linalg.vector_norm(y.detach(), dim=-1, dtype=torch.float32)
