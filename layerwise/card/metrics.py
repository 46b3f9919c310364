"""Registry of per-layer importance metrics. A metric is one decorated function from a probe result to
per-layer values; its metadata says what pass it needs and whether higher is better.

Adding a metric: write ``@register_importance(name, needs=..., statistics=(...), higher_is_better=...)``
over a function ``(result: ProbeResult, options: dict) -> MetricValues``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # annotations only: the registry is read without torch (an export loads no model)
    import numpy as np
    import torch

from layerwise.runtime.errors import ConfigError

__all__ = ["MetricValues", "ImportanceMetric", "IMPORTANCE", "register_importance", "get_metrics", "is_data_free",
           "linear_cka", "ridge_for", "DEFAULT_METRICS", "METRIC_GROUPS", "DATA_FREE", "CROSS_BLOCK"]

NEEDS = ("static", "weights", "forward", "backward", "training")
DATA_FREE = ("static", "weights")
"""Needs that read no calibration data: a card of only these metrics needs no task."""
COND_FLOOR = 1e-7
"""Smallest eigenvalue, relative to the largest, that the float32 statistics resolve."""


@dataclass
class MetricValues:
    """Per-layer values of one metric, optional per-batch values (n_batches, L) and extra tables.

    A layer where the metric is undefined has value None and a reason in ``undefined``; ``notes`` are lines the
    card shows (e.g. a module too small for an estimator).
    """

    values: list[float | None]
    per_batch: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    undefined: dict[int, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImportanceMetric:
    name: str
    compute: Callable[[Any, dict], MetricValues]
    needs: str
    """``static`` (shapes only), ``weights`` (the weights, no data), ``forward``, ``backward`` or ``training``."""
    statistics: tuple[str, ...]
    """Probe statistics it reads (see ``layerwise.card.probe.stats``)."""
    higher_is_better: bool
    description: str
    paper: str = ""

    def info(self) -> dict[str, Any]:
        return {"needs": self.needs, "higher_is_better": self.higher_is_better,
                "description": self.description, "paper": self.paper}


IMPORTANCE: dict[str, ImportanceMetric] = {}

DEFAULT_METRICS = ("actnorm", "gradnorm", "fisher", "taylor", "cka", "resnorm", "act_energy", "coupling", "cost")
"""What ``layerwise card`` measures unless ``--metrics`` says otherwise (``weightdelta`` costs training)."""

METRIC_GROUPS = ("all", "default", "weights")
"""Names ``--metrics`` expands: every metric, :data:`DEFAULT_METRICS`, or the data-free weight metrics."""


def register_importance(name: str, *, needs: str, statistics: tuple[str, ...] = (), higher_is_better: bool = True,
                        description: str = "", paper: str = "") -> Callable:
    """Decorator adding a metric function to :data:`IMPORTANCE`."""
    assert needs in NEEDS, needs

    def wrap(fn: Callable[[Any, dict], MetricValues]) -> Callable[[Any, dict], MetricValues]:
        IMPORTANCE[name] = ImportanceMetric(name, fn, needs, statistics, higher_is_better,
                                            description or (fn.__doc__ or "").strip().split("\n")[0], paper)
        return fn

    return wrap


def _expand_group(name: str) -> list[str]:
    if name == "all":
        return list(IMPORTANCE)
    if name == "default":
        return list(DEFAULT_METRICS)
    if name == "weights":
        return [m.name for m in IMPORTANCE.values() if m.needs == "weights"]
    return [name]


def get_metrics(names: str | list[str] | tuple[str, ...] | None) -> list[ImportanceMetric]:
    """Metrics by name: a comma list whose items may be groups (``all``, ``default``, ``weights``; e.g.
    ``default,weights``); unknown names raise an error listing the known ones."""
    if names is None:
        names = list(DEFAULT_METRICS)
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = [m for n in names for m in _expand_group(n)]
    unknown = [n for n in names if n not in IMPORTANCE]
    if unknown:
        raise ConfigError(f"--metrics: unknown metric(s) {', '.join(unknown)}; known: {', '.join(IMPORTANCE)} "
                          f"and the groups {', '.join(METRIC_GROUPS)}")
    if not names:
        raise ConfigError(f"--metrics is empty; choose from: {', '.join(IMPORTANCE)}")
    return [IMPORTANCE[n] for n in dict.fromkeys(names)]


def is_data_free(names: str | list[str] | tuple[str, ...] | None) -> bool:
    """Whether every metric of ``names`` reads no calibration data (needs ``static`` or ``weights``)."""
    return all(m.needs in DATA_FREE for m in get_metrics(names))


def _stack(rows: list[torch.Tensor]) -> np.ndarray | None:
    import torch
    return torch.stack(rows).cpu().numpy() if rows else None


# -- forward metrics ------------------------------------------------------------------------------
@register_importance("actnorm", needs="forward", statistics=("out_norm",), paper="Act-LoRA",
                     description="mean L2 norm of the block's output activations over real tokens")
def actnorm(result: Any, options: dict) -> MetricValues:
    s = result.stats
    means = {k: (s.norm_sums[k] / s.norm_counts[k].clamp_min(1)).cpu() for k in s.norm_sums}
    extras = {"q_norm": means["q"].tolist(), "v_norm": means["v"].tolist()}
    return MetricValues(means["block"].tolist(), _stack(s.norm_batches["block"]), extras)


def linear_cka(xx: torch.Tensor, yy: torch.Tensor, yx: torch.Tensor, tiny: float = 0.0) -> float | None:
    """Linear CKA from centred sums: ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F).

    ``None`` (undefined, 0/0) when a side's centred Gram norm is at most ``tiny``: that side does not vary
    across examples, so there is no representation to compare.
    """
    den = xx.norm() * yy.norm()
    if xx.norm() <= tiny or yy.norm() <= tiny or den == 0:
        return None
    return float(yx.pow(2).sum() / den)


def _kernel_cka(x: torch.Tensor, y: torch.Tensor) -> tuple[float | None, float, float]:
    """Linear CKA of pooled rows x, y (n, d) in kernel form: ||Y^T X||_F^2 = <K_x, K_y> and ||X^T X||_F = ||K_x||_F
    with K = X_c X_c^T (n, n) of the centred rows, float64. Returns (CKA or None, the 0/0 floor, ||K_x||_F)."""
    import torch
    x, y = x.double(), y.double()
    xc, yc = x - x.mean(0), y - y.mean(0)
    kx, ky = xc @ xc.T, yc @ yc.T  # (n, n)
    tiny = 1e-9 * float(min(torch.linalg.matrix_norm(x @ x.T), torch.linalg.matrix_norm(y @ y.T)))
    nx, ny = float(kx.norm()), float(ky.norm())
    if nx <= tiny or ny <= tiny or nx * ny == 0:
        return None, tiny, nx
    return float((kx * ky).sum() / (nx * ny)), tiny, nx


CKA_UNDEFINED = ("cka (1 - CKA) undefined at block {i}: its {side} ({pooling} token) is the same for every calibration "
                 "example (CKA is 0/0); ranked last, and never chosen by the ratio policy")


@register_importance("cka", needs="forward", statistics=("pooled",), paper="CKA layer selection",
                     description="1 - linear CKA between the block's input and output hidden states")
def cka(result: Any, options: dict) -> MetricValues:
    import torch
    s, values, undefined = result.stats, [], {}
    rows = torch.cat(s.pooled_rows, dim=1).cpu() if s.pooled_rows else None  # (S, n, d): kernel form
    for i in range(s.num_blocks):
        if rows is not None:
            ins, outs = s.pooled_states
            value, tiny, xx_norm = _kernel_cka(rows[ins[i]], rows[outs[i]])
        else:
            gin, gout = s.input_gram(i, result.chained.get(i, False)), s.pooled_out[i]
            cross = s.pooled_cross[i].centred().cpu()  # centred Y^T X, (d, d)
            # relative floor: float32 rounding leaves ~1e-12 of the raw Gram in a constant input's centred Gram
            tiny = 1e-9 * float(min(gin.gram.norm(), gout.gram.norm()))
            xx, yy = gin.centred().cpu(), gout.centred().cpu()
            value, xx_norm = linear_cka(xx, yy, cross, tiny), float(xx.norm())
        if value is None:
            side = "input" if xx_norm <= tiny else "output"
            undefined[i] = CKA_UNDEFINED.format(i=i + getattr(result, "block_offset", 0), side=side,
                                                pooling=result.pooling)
        values.append(None if value is None else 1.0 - value)
    per_batch = _stack(s.pooled_batches)
    if per_batch is not None and undefined:
        # per-batch values of an undefined block are NaN (0/0): score them as the least important, as the card
        # ranks them, so the bootstrap stability ranks what the card ranks
        per_batch[:, sorted(undefined)] = 0.0
    return MetricValues(values, per_batch, {"pooling": result.pooling}, undefined)


@register_importance("act_energy", needs="forward", statistics=("input_cov",), paper="Layer Card",
                     description="trace of the covariance of the block's input activations (energy); "
                     "its condition number is in the extras")
def act_energy(result: Any, options: dict) -> MetricValues:
    import torch
    import numpy as np
    s, energy, cond, eff_rank = result.stats, [], [], []
    for g in s.input_cov:
        cov = g.centred().cpu() / max(g.n - 1, 1)  # (d, d); small dense linear algebra is faster on the CPU
        eig = torch.linalg.eigvalsh(cov).clamp_min(0)
        energy.append(float(eig.sum()))
        # Statistics are float32 products: eigenvalues below 1e-7 of the largest are rounding noise, so the
        # condition number is capped at 1e7 (read as "numerically singular").
        floor = float(eig.max()) * COND_FLOOR
        cond.append(float(eig.max() / eig.clamp_min(floor).min()))
        p = eig / eig.sum().clamp_min(1e-30)
        eff_rank.append(float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum())))
    extras = {"condition_number": cond, "log10_condition": np.log10(cond).tolist(), "effective_rank": eff_rank}
    return MetricValues(energy, _stack(s.energy_batches), extras)


# -- backward metrics ----------------------------------------------------------------------------
@register_importance("gradnorm", needs="backward", statistics=("param_grad",), paper="Act-LoRA",
                     description="L2 norm of the task-loss gradient over the block's linear weights")
def gradnorm(result: Any, options: dict) -> MetricValues:
    import numpy as np
    per = np.sqrt(_stack(result.stats.grad_sq))
    return MetricValues(per.mean(0).tolist(), per)


@register_importance("fisher", needs="backward", statistics=("param_grad",), paper="Act-LoRA",
                     description="mean squared gradient of the block's linear weights (empirical Fisher)")
def fisher(result: Any, options: dict) -> MetricValues:
    s = result.stats
    per = _stack(s.grad_sq) / s.param_counts.clamp_min(1).numpy()
    return MetricValues(per.mean(0).tolist(), per)


@register_importance("taylor", needs="backward", statistics=("param_grad",), paper="Act-LoRA",
                     description="|sum of w * dL/dw| over the block's linear weights (first-order Taylor)")
def taylor(result: Any, options: dict) -> MetricValues:
    import numpy as np
    per = np.abs(_stack(result.stats.grad_wg))
    return MetricValues(per.mean(0).tolist(), per)


def ridge_for(m: torch.Tensor) -> float:
    """Tikhonov ridge added to a second-moment matrix before inverting it: 1e-3 of its mean eigenvalue
    (shrinkage where fewer tokens than dimensions leave it singular), and at least 1e-6 of its trace (above
    the float32 rounding noise of the statistics, which matters with massive activations)."""
    import torch
    tr = float(torch.trace(m))
    return max(1e-3 * tr / m.shape[0], 1e-6 * tr)


def _whitened_gradients(result: Any, symmetric: bool = False) -> list[torch.Tensor]:
    """The residual signal of every block in the metric of its input's second moment M = E[x x^T] plus a
    ridge (see ``ridge_for``): G_i M_i^{-1/2} with the symmetric root when ``symmetric``, else G_i C_i^{-T}
    with the Cholesky factor (M = C C^T).

    Both have the same norm (``resnorm`` uses the cheaper Cholesky, about a tenth of an eigendecomposition's
    time), but G C^{-T} = G M^{-1/2} Q_i with a rotation Q_i that differs from block to block and depends on
    the order of the hidden units, so cosines between blocks (``coupling``) need the symmetric root.
    """
    import torch
    s, out = result.stats, []
    for i in range(s.num_blocks):
        m = s.input_cov[i].second_moment().cpu()  # (d, d)
        m = m + ridge_for(m) * torch.eye(m.shape[0], dtype=m.dtype)
        g = s.out_grad[i].value().cpu() / max(s.batches, 1)  # mean over batches of the batch gradient, (d_out, d_in)
        if symmetric:
            eig, vec = torch.linalg.eigh(m)  # (d,), (d, d)
            out.append(g @ ((vec * eig.clamp_min(torch.finfo(m.dtype).tiny).rsqrt()) @ vec.T))  # G M^{-1/2}
        else:
            chol = torch.linalg.cholesky(m)
            out.append(torch.linalg.solve_triangular(chol, g.T, upper=False).T)  # G C^{-T}, (d_out, d_in)
    return out


@register_importance("resnorm", needs="backward", statistics=("out_grad", "input_cov"), paper="Layer Card",
                     description="projected residual norm: the loss gradient at the block's output, "
                     "normalised by the covariance of its input (correctable signal for a linear adapter)")
def resnorm(result: Any, options: dict) -> MetricValues:
    values = [float(w.norm()) for w in _whitened_gradients(result)]
    return MetricValues(values, _stack(result.stats.out_grad_batches))


@register_importance("coupling", needs="backward", statistics=("out_grad", "input_cov"), higher_is_better=False,
                     paper="Layer Card",
                     description="mean |cosine| between this layer's whitened residual signal and the others' "
                     "(high: an adapter here overlaps with adapters elsewhere)")
def coupling(result: Any, options: dict) -> MetricValues:
    return coupling_from_pieces([coupling_pieces(result)])


def coupling_pieces(result: Any) -> torch.Tensor:
    """Each block's whitened residual signal G M^{-1/2}, flattened to unit length: (L, d_out * d_in) float64."""
    import torch
    w = torch.stack([x.flatten() for x in _whitened_gradients(result, symmetric=True)])  # (L, d*d)
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-30)


def coupling_from_pieces(pieces: list[torch.Tensor]) -> MetricValues:
    """``coupling`` from the unit vectors of every block (several groups' :func:`coupling_pieces` in order)."""
    import torch
    w = torch.cat([p.double() for p in pieces])
    mat = (w @ w.T).abs()  # (L, L)
    L = mat.shape[0]
    off = (mat.sum(1) - mat.diagonal()) / max(L - 1, 1)
    return MetricValues(off.tolist(), None, {"matrix": mat.tolist()})


CROSS_BLOCK: dict[str, tuple[Callable[[Any], Any], Callable[[list], MetricValues]]] = {
    "coupling": (coupling_pieces, coupling_from_pieces)}
"""Metrics that compare blocks with each other: (what each pass keeps of its blocks, the metric from all of it),
so that blocks probed in groups over several passes give the value of one pass."""


# -- static ----------------------------------------------------------------------------------------
@register_importance("cost", needs="static", higher_is_better=False, paper="Layer Card",
                     description="training FLOPs per token an adapter at this block adds: the adapter itself "
                     "at rank r plus the backward depth it forces (gradients flow down to this block)")
def cost(result: Any, options: dict) -> MetricValues:
    from layerwise.card.cost import layer_costs

    table = layer_costs(result.stack, rank=options.get("rank", 8), targets=options.get("targets", ("q", "v")))
    return MetricValues(table["total_flops"], None, table)


@register_importance("weightdelta", needs="training", paper="Act-LoRA",
                     description="norm of the LoRA weight change per layer after a short uniform-LoRA probe run")
def weightdelta(result: Any, options: dict) -> MetricValues:
    values = options.get("weightdelta_values")
    if values is None:
        raise ConfigError("weightdelta needs a probe training run: use profile_layers(..., metrics=[..., "
                          "'weightdelta']) or `layerwise card --metrics ...,weightdelta`")
    return MetricValues(list(values), None, {"steps": options.get("weightdelta_steps")})


# -- weights: data-free spectral signals (layerwise.card.probe.spectrum) ---------------------------------------
def _spectral(result: Any, options: dict, estimator_name: str, metric: str) -> MetricValues:
    from layerwise.card.probe import spectrum

    cache = options.setdefault("spectra", spectrum.SpectrumCache())  # one SVD per module for the whole card
    targets = options.get("targets", ("q", "v"))
    values, extras, undefined, notes = spectrum.block_metric(result.stack, targets, cache,
                                                             getattr(spectrum, estimator_name), metric)
    return MetricValues(values, None, {**extras, "targets": list(targets)}, undefined, notes)


@register_importance("snr", needs="weights", paper="Spectrum",
                     description="Spectrum's signal-to-noise ratio of the singular values (above the "
                     "Marchenko-Pastur edge over below it, over the largest), mean over the targeted projections")
def snr(result: Any, options: dict) -> MetricValues:
    return _spectral(result, options, "spectral_snr", "snr")


@register_importance("alpha_hill", needs="weights", paper="AlphaLoRA / HT-SR",
                     description="PL_Alpha_Hill: Hill estimate of the power-law exponent of W^T W's eigenvalues "
                     "(top half as the tail), mean over the targeted projections; higher = less trained, so more "
                     "adapter (AlphaLoRA)")
def alpha_hill(result: Any, options: dict) -> MetricValues:
    return _spectral(result, options, "alpha_hill", "alpha_hill")


@register_importance("kappa", needs="weights", higher_is_better=False, paper="KappaTune",
                     description="condition number s_max/s_min of the weights, mean over the targeted projections; "
                     "lower = more adaptable (KappaTune)")
def kappa(result: Any, options: dict) -> MetricValues:
    mv = _spectral(result, options, "condition_number", "kappa")
    details = mv.extras.get("module_details", {})
    mv.extras["singular"] = [name for name, d in details.items() if d.get("singular")]
    return mv
