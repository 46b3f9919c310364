"""How the Layer Card is measured: the calibration sample and the probe's options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from layerwise.runtime.errors import ConfigError
from layerwise.settings.fields import at_least, flag, flag_name, one_of

__all__ = ["Calibration", "ProbeSettings", "POOLINGS"]

POOLINGS = ("auto", "first", "last", "mean")
"""Token positions CKA compares (auto: first token for encoders, last real token for decoders)."""


@dataclass(frozen=True)
class Calibration:
    """How the calibration sample is drawn and batched."""

    samples: int = 256
    """calibration examples drawn from train (stratified by label where there are labels)"""
    seed: int = 0
    """seed of the calibration draw: the same seed gives the same sample and the same card"""
    batch_size: int = 16
    """examples per batch (padding is dynamic: to the longest example of each batch)"""
    max_length: int = 128
    """truncate examples to this many tokens"""

    FLAGS: ClassVar[dict[str, str]] = {"seed": "calibration-seed"}

    def __post_init__(self) -> None:
        for name, low in (("samples", 1), ("seed", 0), ("batch_size", 1), ("max_length", 8)):
            at_least(self, name, low)
        if self.samples < self.batch_size:
            raise ConfigError(f"{flag_name(self, 'samples')} ({self.samples}) is fewer than one batch "
                              f"({flag_name(self, 'batch_size')} {self.batch_size}); draw at least one full batch")


@dataclass(frozen=True)
class ProbeSettings:
    """What the card measures, beyond the sample."""

    metrics: str | None = None
    """comma list of metrics or groups: all, default, weights (the data-free snr, alpha_hill, kappa) (default:
    every metric but weightdelta); see `layerwise card --list-metrics`"""
    pooling: str = flag("auto", choices=POOLINGS)
    """token CKA compares: first (encoders), last real token (decoders), or mean over tokens"""
    weightdelta_steps: int = 20
    """steps of the uniform-LoRA probe run that the weightdelta metric needs"""
    rank: int = 8
    """adapter rank (the card's cost metric prices an adapter of this rank)"""
    targets: str = "q,v"
    """projections adapted: q,v, attn, mlp, all-linear, or a comma list of roles
    (q,k,v,o,qkv,gate,up,down,gate_up)"""
    max_stat_memory: int = 2 << 30
    """bytes the card's d x d statistics may take (default 2 GiB): exact when they fit, else the residual gradient
    as a seeded Gaussian projection with a stated error bound, else the blocks probed in groups over several
    passes; refused only when one block does not fit (the card records which)"""

    def __post_init__(self) -> None:
        one_of(self, "pooling", POOLINGS)
        at_least(self, "weightdelta_steps", 1)
        at_least(self, "rank", 1)
        at_least(self, "max_stat_memory", 1)
        if self.metrics is not None:
            from layerwise.card.metrics import get_metrics

            get_metrics(self.metrics)  # an unknown metric is refused here, naming --metrics
        from layerwise.models.layers import parse_targets

        parse_targets(self.targets)

    @property
    def pooling_or_none(self) -> str | None:
        """``pooling`` as the probe takes it (None for auto)."""
        return None if self.pooling == "auto" else self.pooling
