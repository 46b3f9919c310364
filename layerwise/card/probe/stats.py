"""Streaming accumulators filled by the probe's hooks, one family per statistic name.

Statistics (what metrics ask for):
- ``out_norm``: per block, sum of L2 norms of output hidden states over real tokens, and of the query and
  value projection outputs; per-batch means kept for stability estimates.
- ``pooled``: per hidden state, Gram sums of one pooled vector per example (first token, last real token
  or mean), and the cross sums between each block's input and output (linear CKA).
- ``input_cov``: per block, sums of x and x x^T over all real tokens of the block's input.
- ``out_grad``: per block, G = sum_t g_t x_t^T with g the loss gradient at the block output and x the
  block input (the gradient of a dense residual adapter at that block); needs a backward pass. With
  ``ProbeStats.out_sketch`` S (d_out, k) set, S^T G (k, d_in) instead (``layerwise.card.probe.plan``).
- ``param_grad``: per block and batch, sum of squared gradients, parameter count and |sum w * g| over the
  block's linear weights; needs a backward pass.

Accumulators are float64; per-batch products are float32 matmuls (their cost is what the probe adds).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["STATISTICS", "BACKWARD_STATISTICS", "FOLD_EVERY", "GRAM_BLOCK", "GramSums", "CrossSums", "StackedMoments",
           "GradSums", "ProbeStats"]

STATISTICS = ("out_norm", "pooled", "input_cov", "out_grad", "param_grad")
BACKWARD_STATISTICS = ("out_grad", "param_grad")

_F64 = torch.float64


FOLD_EVERY = 64
"""Batches summed in float32 before they are folded into the float64 totals."""


GRAM_BLOCK = 128
"""Column-block width of the triangular Gram update on the CPU (a d x d Gram costs about (1 + 128/d)/2 of a
full matmul's flops: 2/3 for d = 384, measured 0.72 of the time on one core for 225 rows)."""


def _add_lower_gram(buf: torch.Tensor, x: torch.Tensor) -> None:
    """Add x^T x to ``buf`` (d, d) in place, computing only the blocks on and below the diagonal.

    The upper blocks are left stale; :func:`_mirror_lower` restores them from the lower ones.
    """
    d = x.shape[1]
    if d <= GRAM_BLOCK:
        buf.addmm_(x.T, x)
        return
    for i in range(0, d, GRAM_BLOCK):
        rows = x[:, i:i + GRAM_BLOCK]
        buf[i:i + GRAM_BLOCK, :i + GRAM_BLOCK].addmm_(rows.T, x[:, :i + GRAM_BLOCK])


def _mirror_lower(buf: torch.Tensor) -> None:
    """Copy the blocks below the diagonal onto the stale ones above it (in place)."""
    d = buf.shape[0]
    for i in range(0, d, GRAM_BLOCK):
        buf[i:i + GRAM_BLOCK, i + GRAM_BLOCK:] = buf[i + GRAM_BLOCK:, i:i + GRAM_BLOCK].T


@dataclass
class _Moments:
    """Centred second-moment sums of paired rows (y, x), exact under merging.

    Per batch b, the rows are centred on the batch's own means and C_b = (y - my_b)^T (x - mx_b) is added
    in place to a float32 buffer (one ``addmm_``: no copies). Every ``FOLD_EVERY`` batches the buffer is
    folded into float64 totals with the between-batch term sum_b n_b (my_b - my)(mx_b - mx)^T, computed
    from the stored batch means (Chan et al.'s pairwise update). Centring first avoids the cancellation
    of X^T X - n mu mu^T when means are large (BERT hidden states; massive activations in decoders).
    """

    n: int = 0
    mx: torch.Tensor | None = None  # (d_x,) float64
    my: torch.Tensor | None = None  # (d_y,) float64
    cent: torch.Tensor | None = None  # (d_y, d_x) float64
    _buf: torch.Tensor | None = None  # (d_y, d_x) float32, this group's sum of C_b
    _means: list = field(default_factory=list)  # this group's (n_b, my_b, mx_b)
    _symmetric: bool = False  # the buffer holds only the lower block triangle of a Gram (see fold)

    def add_pair(self, y: torch.Tensor, x: torch.Tensor, same: bool) -> None:
        """Add paired rows y (..., n, d_y) and x (..., n, d_x); leading dims stack independent sums."""
        xf = x.detach().float()
        nb = xf.shape[-2]
        if nb == 0:
            return
        mxb = xf.mean(-2, keepdim=True)
        xc = xf - mxb
        if same:
            yc, myb = xc, mxb
        else:
            yf = y.detach().float()
            myb = yf.mean(-2, keepdim=True)
            yc = yf - myb
        if self._buf is None:
            shape = (*xc.shape[:-2], yc.shape[-1], xc.shape[-1])
            self._buf = torch.zeros(shape, dtype=torch.float32, device=xc.device)
        if xc.dim() > 2:
            self._buf.baddbmm_(yc.mT, xc)  # (S, d_y, d_x), in place
        elif same and not xc.is_cuda:  # on a GPU flops are cheap and launches are not: one full matmul
            _add_lower_gram(self._buf, xc)
            self._symmetric = True
        else:
            self._buf.addmm_(yc.T, xc)  # (d_y, d_x), in place
        self._means.append((nb, myb.squeeze(-2).to(_F64), mxb.squeeze(-2).to(_F64)))
        if len(self._means) >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        """Merge the float32 group into the float64 totals."""
        if not self._means:
            return
        assert self._buf is not None
        within = self._buf.to(_F64)  # a new tensor: buffers made under inference_mode stay untouched
        if self._symmetric:
            _mirror_lower(within)
        counts = torch.tensor([m[0] for m in self._means], dtype=_F64, device=self._buf.device)  # (k,)
        my_b = torch.stack([m[1] for m in self._means])  # (k, ..., d_y)
        mx_b = torch.stack([m[2] for m in self._means])  # (k, ..., d_x)
        ng = float(sum(m[0] for m in self._means))  # host ints: no device sync
        myg = torch.tensordot(counts, my_b, dims=1) / ng
        mxg = torch.tensordot(counts, mx_b, dims=1) / ng
        between = torch.einsum("k,k...i,k...j->...ij", counts, my_b - myg, mx_b - mxg)
        # Out-of-place updates below: buffers made under torch.inference_mode may not be changed in place
        # outside it, and the totals may be folded either way.
        self._buf = None
        self._means = []
        self._symmetric = False
        self._merge(int(ng), myg, mxg, within + between)

    def _merge(self, nb: int, myb: torch.Tensor, mxb: torch.Tensor, cb: torch.Tensor) -> None:
        if self.cent is None:
            self.n, self.my, self.mx, self.cent = nb, myb, mxb, cb
            return
        assert self.mx is not None and self.my is not None
        n = self.n + nb
        dx, dy = mxb - self.mx, myb - self.my
        self.cent = self.cent + cb + (self.n * nb / n) * (dy.unsqueeze(-1) * dx.unsqueeze(-2))
        self.mx = self.mx + dx * (nb / n)
        self.my = self.my + dy * (nb / n)
        self.n = n

    def totals(self) -> None:
        self.fold()
        assert self.cent is not None and self.n > 0, "no rows were added"


@dataclass
class GramSums(_Moments):
    """Running centred second moments of row vectors x (n x d); see :class:`_Moments`."""

    dim: int = 0

    def add(self, x: torch.Tensor) -> None:
        """Add rows ``x`` (n, d)."""
        self.add_pair(x, x, same=True)

    def mean(self) -> torch.Tensor:
        self.totals()
        assert self.mx is not None
        return self.mx

    @property
    def gram(self) -> torch.Tensor:
        """Uncentred sum of x x^T, (d, d)."""
        mu = self.mean()
        assert self.cent is not None
        return self.cent + self.n * torch.outer(mu, mu)

    def second_moment(self) -> torch.Tensor:
        """E[x x^T] (uncentred), (d, d)."""
        return self.gram / self.n

    def centred(self) -> torch.Tensor:
        """sum (x - mean)(x - mean)^T, (d, d)."""
        self.totals()
        assert self.cent is not None
        return self.cent


@dataclass
class CrossSums(_Moments):
    """Running centred cross moments sum (y - mu_y)(x - mu_x)^T of paired rows; see :class:`_Moments`."""

    def add(self, y: torch.Tensor, x: torch.Tensor) -> None:
        self.add_pair(y, x, same=False)

    def centred(self) -> torch.Tensor:
        self.totals()
        assert self.cent is not None
        return self.cent


@dataclass
class StackedMoments(_Moments):
    """S independent centred moment sums filled by one batched update: rows (S, n, d_y) and (S, n, d_x).

    The probe stacks the pooled vectors of every hidden state and adds them once per batch (one batched
    matmul instead of S small ones); :meth:`unstack` then gives the per-state sums.
    """

    def add(self, y: torch.Tensor, x: torch.Tensor | None = None) -> None:
        """Add stacked rows; with ``x`` omitted, the Gram of ``y`` with itself."""
        self.add_pair(y, y if x is None else x, same=x is None)

    def unstack(self, kind: type[_Moments]) -> list[_Moments]:
        """The S sums as separate ``kind`` objects (views of the stacked totals); [] if nothing was added."""
        self.fold()
        if self.cent is None:
            return []
        assert self.mx is not None and self.my is not None
        return [kind(n=self.n, mx=self.mx[s], my=self.my[s], cent=self.cent[s]) for s in range(self.cent.shape[0])]


@dataclass
class GradSums:
    """Running sum of per-batch (d_out, d_in) products, float32 groups folded into float64."""

    total: torch.Tensor | None = None
    _buf: torch.Tensor | None = None
    _count: int = 0

    def add(self, c: torch.Tensor) -> None:
        if self._buf is None:
            self._buf = torch.zeros_like(c, dtype=torch.float32)
        self._buf.add_(c)
        self._count += 1
        if self._count >= FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        if self._buf is None or self._count == 0:
            return
        b = self._buf.to(_F64)
        self.total = b if self.total is None else self.total + b
        self._buf = None
        self._count = 0

    def value(self) -> torch.Tensor:
        self.fold()
        assert self.total is not None, "no gradient reached this block"
        return self.total


@dataclass
class ProbeStats:
    """Everything the probe accumulated over one pass, for ``num_blocks`` blocks."""

    num_blocks: int
    hidden: int
    wanted: frozenset[str]
    device: Any = None
    """Where the sums live (the model's device); results are moved to the CPU when metrics read them."""
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
    pooled_stack: StackedMoments = field(default_factory=StackedMoments)  # during the pass: every state's Gram
    cross_stack: StackedMoments = field(default_factory=StackedMoments)  # during the pass: (L) out^T in
    # input_cov
    input_cov: list[GramSums] = field(default_factory=list)
    energy_batches: list[torch.Tensor] = field(default_factory=list)  # per batch (L,) mean ||x||^2
    # out_grad
    out_grad: list[GradSums] = field(default_factory=list)  # (L) sum g x^T, (d_out, d_in)
    out_grad_batches: list[torch.Tensor] = field(default_factory=list)  # per batch (L,) proxy norms
    # param_grad: per batch (L,) values
    grad_sq: list[torch.Tensor] = field(default_factory=list)
    grad_wg: list[torch.Tensor] = field(default_factory=list)
    param_counts: torch.Tensor | None = None
    out_sketch: torch.Tensor | None = None
    pooled_rows: list[torch.Tensor] | None = None
    """When a list: the pooled vectors per batch, (S, B, d) float32, kept instead of ``pooled_stack``/``cross_stack``
    (CKA in kernel form); ``pooled_states`` then says which state is block i's input and output."""
    pooled_states: tuple[dict[int, int], dict[int, int]] | None = None
    """(d_out, k) Gaussian projection S: ``out_grad`` then holds S^T G, (k, d_in)
    (see ``layerwise.card.probe.plan``)."""

    def __post_init__(self) -> None:
        L = self.num_blocks
        self.pooled_in = [GramSums(dim=self.hidden) for _ in range(L)]
        self.pooled_out = [GramSums(dim=self.hidden) for _ in range(L)]
        self.pooled_cross = [CrossSums() for _ in range(L)]
        self.input_cov = [GramSums(dim=self.hidden) for _ in range(L)]
        self.out_grad = [GradSums() for _ in range(L)]
        for kind in ("block", "q", "v"):
            self.norm_sums[kind] = torch.zeros(L, dtype=_F64, device=self.device)
            self.norm_counts[kind] = torch.zeros(L, dtype=_F64, device=self.device)
            self.norm_batches[kind] = []

    def unstack_pooled(self, in_state: dict[int, int], out_state: dict[int, int]) -> None:
        """Split the pass's stacked pooled sums into ``pooled_in``/``pooled_out``/``pooled_cross`` per block.

        ``in_state[i]`` and ``out_state[i]`` index block i's input and output among the stacked states
        (a chained block's input is its predecessor's output state, kept once).
        """
        if self.pooled_rows is not None:
            self.pooled_states = (in_state, out_state)
            return
        grams = self.pooled_stack.unstack(GramSums)
        cross = self.cross_stack.unstack(CrossSums)
        if not grams:
            return
        for i in range(self.num_blocks):
            self.pooled_out[i] = grams[out_state[i]]
            if in_state[i] != out_state.get(i - 1):
                self.pooled_in[i] = grams[in_state[i]]
            self.pooled_cross[i] = cross[i]
        self.pooled_stack, self.cross_stack = StackedMoments(), StackedMoments()

    def input_gram(self, i: int, chained: bool) -> GramSums:
        """The pooled Gram sums of block i's input (block i-1's output when the stack is chained)."""
        return self.pooled_out[i - 1] if chained and i > 0 else self.pooled_in[i]
