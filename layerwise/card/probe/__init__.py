"""The probe: hooks on a model's blocks that fill streaming statistics in one pass over calibration batches.

No activation is kept beyond the sums each statistic needs (Gram matrices, norms, per-batch scalars).
"""

from layerwise.card.probe.runner import ProbeResult, run_probe
from layerwise.card.probe.stats import STATISTICS

__all__ = ["ProbeResult", "run_probe", "STATISTICS"]
