"""Data-free signals of a block's weights, from the singular values of its linear layers.

Three choices practitioners make without any data, written from their definitions:

- **Spectrum's SNR** (Hartford et al., "Spectrum: targeted training on signal to noise ratio", 2024; axolotl's
  Spectrum plugin): with singular values s_1 >= ... >= s_p of W (p = min(m, n)), a noise scale estimated
  robustly as sigma = IQR(s) / 1.349 (the interquartile range of the singular values, quantiles interpolated
  linearly, over the normal distribution's IQR in units of its standard deviation), the Marchenko-Pastur edge
  eps = sigma * (1 + sqrt(beta)) with beta = min(m, n) / max(m, n), and
  ``snr = (sum of s_i > eps) / (sum of s_i <= eps) / s_1``. Singular values at or below the numerical-rank
  tolerance (below) count as zero; with no singular value at or below the edge the ratio is unbounded, and
  the value is undefined (None) with a note.
- **PL_Alpha_Hill** (heavy-tailed self-regularisation; TempBalance, Zhou et al. 2023; AlphaLoRA, Qing et al.
  2024): the Hill estimator of the power-law exponent of the eigenvalues lambda_i = s_i^2 of W^T W,
  ``alpha = 1 + k / sum_{i=1..k} ln(lambda_(n-i+1) / lambda_(n-k))`` over the n non-zero eigenvalues in
  ascending order. k rule: k = floor(n / 2), TempBalance's ``xmin_mid`` (the tail starts at the median
  eigenvalue). It is deterministic and needs no fit; WeightWatcher's default (and AlphaLoRA's released script)
  instead picks the tail start that minimises a Kolmogorov-Smirnov distance, a search that is O(n^2), noisy on
  small matrices and not what the papers' formula fixes. A tail of fewer than :data:`HILL_MIN_TAIL` eigenvalues
  is too short for the estimate: the value is then undefined (None) with a note.
- **KappaTune's condition number** (peft's ``KappaTuneSelector``): ``kappa = s_1 / s_p``; lower means a more
  isotropic, more adaptable matrix. A zero (or numerically zero) smallest singular value is clamped to the
  numerical-rank tolerance ``s_1 * max(m, n) * eps(dtype)`` (numpy's ``matrix_rank`` rule, eps of the
  weights' stored dtype): a singular matrix then gets the largest kappa its precision resolves, ranks last, and
  is listed in the metric's extras (``singular``). KappaTune itself adds 1e-8 to s_p, which does the same in
  effect with a scale-dependent cap.

Each module's singular values are computed once (float64 from the stored weights) and cached in a
:class:`SpectrumCache` that lives for one card run, so the three metrics share one SVD per module.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

__all__ = ["HILL_MIN_TAIL", "SNR_MIN_VALUES", "ModuleSpectrum", "SpectrumCache", "Estimate", "spectral_snr",
           "alpha_hill", "condition_number", "module_weight", "block_metric"]

log = logging.getLogger(__name__)

HILL_MIN_TAIL = 8
"""Fewest tail eigenvalues (k) the Hill estimate is made from: its relative standard error is about 1/sqrt(k),
35% at k = 8; a matrix with fewer than 2 * 8 = 16 non-zero singular values gets no alpha."""

SNR_MIN_VALUES = 4
"""Fewest singular values for Spectrum's interquartile noise estimate (quartiles of 3 or fewer values are the
values themselves)."""

IQR_OF_STANDARD_NORMAL = 1.349
"""Interquartile range of N(0, 1) (2 * 0.6745): IQR / 1.349 estimates a standard deviation robustly."""


@dataclass(frozen=True)
class ModuleSpectrum:
    """Singular values of one linear layer's weight matrix."""

    name: str
    """Full module name, as in the Layer Card's ``layers[].linears[].name``."""
    shape: tuple[int, int]
    """(rows, columns) of the stored weight."""
    values: np.ndarray
    """Singular values in descending order, float64, shape (min(rows, columns),)."""
    eps: float
    """Machine epsilon of the weight's stored dtype (the precision its entries are known to)."""

    @property
    def tolerance(self) -> float:
        """Numerical-rank tolerance: singular values at or below it are zero at the weights' precision."""
        return float(self.values[0]) * max(self.shape) * self.eps if self.values.size else 0.0


@dataclass(frozen=True)
class Estimate:
    """A metric's value on one module; ``None`` with a ``note`` where it is undefined."""

    value: float | None
    note: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class SpectrumCache:
    """Singular values per module name, computed on first use; one instance per card run.

    CPU SVDs run with ``threads`` torch threads (default 1), the process's count restored after each: LAPACK's
    SVD of matrices this size gains little from threads, and on a busy machine OpenMP threads waiting on each
    other made SmolLM2's q,v spectra take 38 s with 2 threads against 1.3 s with 1 (2026-11-29, 2 shared cores,
    ``benchmarks/weight_spectra.py``).
    """

    def __init__(self, threads: int | None = 1) -> None:
        self._spectra: dict[str, ModuleSpectrum] = {}
        self.threads = threads
        """Torch threads for CPU SVDs; None keeps the process's setting."""
        self.seconds = 0.0
        """Time spent in SVDs so far."""

    def __len__(self) -> int:
        return len(self._spectra)

    def get(self, name: str, weight: torch.Tensor) -> ModuleSpectrum:
        """The spectrum of ``weight`` (2-D) under ``name``; computed once per name."""
        if name not in self._spectra:
            start = time.perf_counter()
            w = weight.detach()
            values = self._svdvals(w.to(torch.float64)).cpu().numpy()  # descending, (min(m, n),)
            eps = float(torch.finfo(w.dtype).eps) if w.dtype.is_floating_point else float(np.finfo(np.float32).eps)
            self._spectra[name] = ModuleSpectrum(name, (int(w.shape[0]), int(w.shape[1])), values, eps)
            self.seconds += time.perf_counter() - start
        return self._spectra[name]


    def _svdvals(self, w: torch.Tensor) -> torch.Tensor:
        if w.device.type != "cpu" or self.threads is None:
            return torch.linalg.svdvals(w)
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return torch.linalg.svdvals(w)
        finally:
            torch.set_num_threads(before)


def module_weight(block: Any, linear: Any) -> torch.Tensor:
    """The weight matrix of ``linear`` (a :class:`layerwise.models.layers.Linear` of ``block``); the base layer's
    weight under a peft wrapper. Conv1D weights are stored transposed, which leaves singular values as they are."""
    rel = linear.name[len(block.name) + 1:]
    module = block.module.get_submodule(rel)
    if hasattr(module, "get_base_layer"):
        module = module.get_base_layer()
    return module.weight


# -- the three estimators, each a pure function of one spectrum ----------------------------------------
def _shape_text(spec: ModuleSpectrum) -> str:
    return f"{spec.name} ({spec.shape[0]}x{spec.shape[1]})"


def spectral_snr(spec: ModuleSpectrum) -> Estimate:
    """Spectrum's signal-to-noise ratio of one weight matrix (see the module docstring)."""
    s, (m, n) = spec.values, spec.shape
    if s.size < SNR_MIN_VALUES:
        return Estimate(None, f"{_shape_text(spec)}: {s.size} singular value(s), the interquartile noise "
                        f"estimate needs at least {SNR_MIN_VALUES}")
    if s[0] <= 0:
        return Estimate(None, f"{_shape_text(spec)}: the weight matrix is zero")
    s = np.where(s > spec.tolerance, s, 0.0)  # below the numerical-rank tolerance: zero at the weights' precision
    q25, q75 = np.quantile(s, [0.25, 0.75])  # linear interpolation
    sigma = (q75 - q25) / IQR_OF_STANDARD_NORMAL
    beta = min(m, n) / max(m, n)
    edge = sigma * (1.0 + math.sqrt(beta))  # Marchenko-Pastur bulk edge in singular-value units
    signal, noise = float(s[s > edge].sum()), float(s[s <= edge].sum())
    extra = {"edge": float(edge), "above_edge": int((s > edge).sum())}
    if noise <= 0:
        return Estimate(None, f"{_shape_text(spec)}: no noise bulk (every non-zero singular value is above the "
                        f"Marchenko-Pastur edge {edge:.3g}), so the ratio is unbounded", extra)
    return Estimate(signal / noise / float(s[0]), None, extra)


def alpha_hill(spec: ModuleSpectrum) -> Estimate:
    """PL_Alpha_Hill of W^T W's eigenvalues with k = floor(n / 2) (see the module docstring)."""
    s = spec.values
    lam = np.sort(s[s > spec.tolerance] ** 2)  # non-zero eigenvalues of W^T W, ascending, (n,)
    n = lam.size
    k = n // 2
    if k < HILL_MIN_TAIL:
        return Estimate(None, f"{_shape_text(spec)}: {n} non-zero eigenvalue(s), the Hill tail fit needs at least "
                        f"{2 * HILL_MIN_TAIL} (a tail of {HILL_MIN_TAIL})")
    xmin = lam[n - k - 1]  # lambda_(n-k), 1-based: the largest eigenvalue below the tail
    logs = float(np.log(lam[n - k:] / xmin).sum())  # the k largest, over xmin
    # A tail flat to the weights' precision (s known to s_max * max(m, n) * eps, so s^2 to twice that) has no
    # power law: its alpha would be rounding noise blown up (an orthogonal matrix gives ~1e15).
    if math.log(lam[-1] / xmin) <= 2 * max(spec.shape) * spec.eps:
        return Estimate(None, f"{_shape_text(spec)}: the top {k} eigenvalues are all equal (to the weights' "
                        "precision), no power-law tail")
    return Estimate(1.0 + k / logs, None, {"k": k})


def condition_number(spec: ModuleSpectrum) -> Estimate:
    """KappaTune's s_max / s_min, with s_min clamped to the numerical-rank tolerance (see the module docstring)."""
    s = spec.values
    if s.size == 0 or s[0] <= 0:
        return Estimate(None, f"{_shape_text(spec)}: the weight matrix is zero")
    floor = spec.tolerance
    singular = bool(s[-1] <= floor)
    return Estimate(float(s[0] / max(float(s[-1]), floor)), None, {"singular": singular})


# -- per block --------------------------------------------------------------------------------------------
def block_metric(stack: Any, targets: Sequence[str] | str, cache: SpectrumCache,
                 estimator: Callable[[ModuleSpectrum], Estimate], metric: str
                 ) -> tuple[list[float | None], dict[str, Any], dict[int, str], list[str]]:
    """One metric per block: the mean of ``estimator`` over the block's linear layers with ``targets`` roles
    where it is defined.

    Returns (values, extras, undefined, notes): a block where no targeted layer has a value gets None and an
    entry in ``undefined`` (layer -> reason); every module without a value gets a note. ``extras["modules"]``
    holds each module's value (None where undefined).
    """
    values: list[float | None] = []
    modules: dict[str, float | None] = {}
    undefined: dict[int, str] = {}
    notes: list[str] = []
    details: dict[str, dict[str, Any]] = {}
    for block in stack.blocks:
        linears = block.by_role(targets)
        defined = []
        for lin in linears:
            est = estimator(cache.get(lin.name, module_weight(block, lin)))
            modules[lin.name] = est.value
            if est.extra:
                details[lin.name] = est.extra
            if est.value is None:
                notes.append(f"{metric} undefined at {est.note}")
            else:
                defined.append(est.value)
        if defined:
            values.append(float(np.mean(defined)))
        else:
            reason = "no targeted linear layer" if not linears else "undefined on every targeted linear layer"
            undefined[block.index] = f"{metric} undefined at block {block.index} ({block.name}): {reason}"
            values.append(None)
    for note in notes:
        log.info(note)
    return values, {"modules": modules, "module_details": details}, undefined, notes
