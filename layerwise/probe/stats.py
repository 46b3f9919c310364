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

__all__ = ["STATISTICS", "BACKWARD_STATISTICS", "GramSums", "ProbeStats"]

STATISTICS = ("out_norm", "pooled", "input_cov", "out_grad", "param_grad")
BACKWARD_STATISTICS = ("out_grad", "param_grad")

_F64 = torch.float64


@dataclass
class GramSums:
    """Running sums for second moments of row vectors x (n x d): n, sum x, sum x^T x."""

    dim: int
    n: int = 0
    total: torch.Tensor | None = None
    gram: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Add rows ``x`` (n, d); the product runs in the rows' dtype, the sum in float64."""
        x = x.detach()
        xf = x.float()
        g = (xf.T @ xf).to(_F64)  # (d, d)
        s = xf.sum(0, dtype=_F64)  # (d,)
        if self.gram is None:
            self.gram, self.total = g, s
        else:
            self.gram += g
            self.total += s
        self.n += x.shape[0]

    def mean(self) -> torch.Tensor:
        assert self.total is not None and self.n > 0
        return self.total / self.n

    def second_moment(self) -> torch.Tensor:
        """E[x x^T] (uncentred), (d, d)."""
        assert self.gram is not None and self.n > 0
        return self.gram / self.n

    def centred(self) -> torch.Tensor:
        """sum (x - mean)(x - mean)^T = X^T X - n mu mu^T, (d, d)."""
        mu = self.mean()
        return self.gram - self.n * torch.outer(mu, mu)


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
    pooled_cross: list[torch.Tensor | None] = field(default_factory=list)  # (L) sum out^T in, (d, d)
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
        self.pooled_cross = [None] * L
        self.input_cov = [GramSums(self.hidden) for _ in range(L)]
        self.out_grad = [None] * L
        for kind in ("block", "q", "v"):
            self.norm_sums[kind] = torch.zeros(L, dtype=_F64)
            self.norm_counts[kind] = torch.zeros(L, dtype=_F64)
            self.norm_batches[kind] = []

    def input_gram(self, i: int, chained: bool) -> GramSums:
        """The pooled Gram sums of block i's input (block i-1's output when the stack is chained)."""
        return self.pooled_out[i - 1] if chained and i > 0 else self.pooled_in[i]

    def add_cross(self, store: list, i: int, y: torch.Tensor, x: torch.Tensor) -> None:
        """store[i] += y^T x in float64; y (n, d_y), x (n, d_x)."""
        c = (y.detach().float().T @ x.detach().float()).to(_F64)
        store[i] = c if store[i] is None else store[i] + c
