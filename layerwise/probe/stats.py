"""Streaming accumulators filled by the probe's hooks, one family per statistic name.

Statistics (what metrics ask for):
- ``out_norm``: per block, sum of L2 norms of output hidden states over real tokens, and of the query and
  value projection outputs; per-batch means kept for stability estimates.
- ``pooled``: per hidden state, Gram sums of one pooled vector per example (first token, last real token
  or mean), and the cross sums between each block's input and output (linear CKA).
- ``input_cov``: per block, sums of x and x x^T over all real tokens of the block's input.
- ``out_grad``: per block, G = sum_t g_t x_t^T with g the loss gradient at the block output and x the
  block input (the gradient of a dense residual adapter at that block); needs a backward pass.
- ``param_grad``: per block and batch, sum of squared gradients, parameter count and |sum w * g| over the
  block's linear weights; needs a backward pass.

Accumulators are float64; per-batch products are float32 matmuls (their cost is what the probe adds).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["STATISTICS", "BACKWARD_STATISTICS", "GramSums", "CrossSums", "ProbeStats"]

STATISTICS = ("out_norm", "pooled", "input_cov", "out_grad", "param_grad")
BACKWARD_STATISTICS = ("out_grad", "param_grad")

_F64 = torch.float64


@dataclass
class GramSums:
    """Running second moments of row vectors x (n x d), kept centred for accuracy.

    Each batch is centred on its own mean before the float32 product, and batches are merged with the
    pairwise update of Chan et al.: C = C_a + C_b + n_a n_b / n (mu_a - mu_b)(mu_a - mu_b)^T in float64.
    This avoids the cancellation of X^T X - n mu mu^T when the mean is large (as in BERT hidden states).
    """

    dim: int
    n: int = 0
    mu: torch.Tensor | None = None  # (d,) float64
    cent: torch.Tensor | None = None  # (d, d) float64, sum of (x - mu)(x - mu)^T

    def add(self, x: torch.Tensor) -> None:
        """Add rows ``x`` (n, d)."""
        xf = x.detach().float()
        nb = xf.shape[0]
        if nb == 0:
            return
        mb = xf.mean(0)  # (d,)
        xc = xf - mb
        cb = (xc.T @ xc).to(_F64)  # (d, d)
        self._merge(nb, mb.to(_F64), cb)

    def _merge(self, nb: int, mb: torch.Tensor, cb: torch.Tensor) -> None:
        if self.mu is None:
            self.n, self.mu, self.cent = nb, mb, cb
            return
        assert self.cent is not None
        n = self.n + nb
        delta = mb - self.mu
        self.cent += cb + (self.n * nb / n) * torch.outer(delta, delta)
        self.mu += delta * (nb / n)
        self.n = n

    def mean(self) -> torch.Tensor:
        assert self.mu is not None and self.n > 0
        return self.mu

    @property
    def gram(self) -> torch.Tensor:
        """Uncentred sum of x x^T, (d, d)."""
        assert self.cent is not None and self.mu is not None
        return self.cent + self.n * torch.outer(self.mu, self.mu)

    def second_moment(self) -> torch.Tensor:
        """E[x x^T] (uncentred), (d, d)."""
        return self.gram / self.n

    def centred(self) -> torch.Tensor:
        """sum (x - mean)(x - mean)^T, (d, d)."""
        assert self.cent is not None
        return self.cent


@dataclass
class CrossSums:
    """Running centred cross moment sum (y - mu_y)(x - mu_x)^T of paired rows, merged like GramSums."""

    n: int = 0
    mx: torch.Tensor | None = None
    my: torch.Tensor | None = None
    cent: torch.Tensor | None = None  # (d_y, d_x) float64

    def add(self, y: torch.Tensor, x: torch.Tensor) -> None:
        yf, xf = y.detach().float(), x.detach().float()
        nb = xf.shape[0]
        mxb, myb = xf.mean(0), yf.mean(0)
        cb = ((yf - myb).T @ (xf - mxb)).to(_F64)  # (d_y, d_x)
        mxb, myb = mxb.to(_F64), myb.to(_F64)
        if self.cent is None:
            self.n, self.mx, self.my, self.cent = nb, mxb, myb, cb
            return
        assert self.mx is not None and self.my is not None
        n = self.n + nb
        dx, dy = mxb - self.mx, myb - self.my
        self.cent += cb + (self.n * nb / n) * torch.outer(dy, dx)
        self.mx += dx * (nb / n)
        self.my += dy * (nb / n)
        self.n = n


@dataclass
class ProbeStats:
    """Everything the probe accumulated over one pass, for ``num_blocks`` blocks."""

    num_blocks: int
    hidden: int
    wanted: frozenset[str]
    batches: int = 0
    tokens: int = 0
    examples: int = 0
    # out_norm
    norm_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # kind -> (L,) sums of token norms
    norm_counts: dict[str, torch.Tensor] = field(default_factory=dict)  # kind -> (L,) token counts
    norm_batches: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # kind -> per batch (L,) means
    # pooled (linear CKA): state i is the input of block i; state L the output of the last block
    pooled_in: list[GramSums] = field(default_factory=list)  # (L) input states
    pooled_out: list[GramSums] = field(default_factory=list)  # (L) output states
    pooled_cross: list[CrossSums] = field(default_factory=list)  # (L) centred sum out^T in, (d, d)
    pooled_batches: list[torch.Tensor] = field(default_factory=list)  # per batch (L,) CKA on that batch
    # input_cov
    input_cov: list[GramSums] = field(default_factory=list)
    energy_batches: list[torch.Tensor] = field(default_factory=list)  # per batch (L,) mean ||x||^2
    # out_grad
    out_grad: list[torch.Tensor | None] = field(default_factory=list)  # (L) sum g x^T, (d_out, d_in)
    out_grad_batches: list[torch.Tensor] = field(default_factory=list)  # per batch (L,) proxy norms
    # param_grad: per batch (L,) values
    grad_sq: list[torch.Tensor] = field(default_factory=list)
    grad_wg: list[torch.Tensor] = field(default_factory=list)
    param_counts: torch.Tensor | None = None

    def __post_init__(self) -> None:
        L = self.num_blocks
        self.pooled_in = [GramSums(self.hidden) for _ in range(L)]
        self.pooled_out = [GramSums(self.hidden) for _ in range(L)]
        self.pooled_cross = [CrossSums() for _ in range(L)]
        self.input_cov = [GramSums(self.hidden) for _ in range(L)]
        self.out_grad = [None] * L
        for kind in ("block", "q", "v"):
            self.norm_sums[kind] = torch.zeros(L, dtype=_F64)
            self.norm_counts[kind] = torch.zeros(L, dtype=_F64)
            self.norm_batches[kind] = []

    def input_gram(self, i: int, chained: bool) -> GramSums:
        """The pooled Gram sums of block i's input (block i-1's output when the stack is chained)."""
        return self.pooled_out[i - 1] if chained and i > 0 else self.pooled_in[i]
