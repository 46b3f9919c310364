"""La-LoRA's settings: the allowed values of ``--contribution`` and ``--rank-scale``, ``--gamma``'s default and
the check of them all. :class:`~layerwise.settings.AdaptiveRanks` and the allocator
(:mod:`layerwise.train.lalora.allocator`, which re-exports them) both read them from here.
"""

from __future__ import annotations

import math

from layerwise.runtime.errors import ConfigError

__all__ = ["CONTRIBUTIONS", "RANK_SCALES", "DEFAULT_GAMMA", "check_settings"]

CONTRIBUTIONS = ("norm", "fisher")
"""``--contribution``: truncated-norm contributions (Eq. 9-10) or accumulated Fisher information (Table 14)."""

RANK_SCALES = ("rmax", "ri")
"""``--rank-scale``: LoRA scaling ``alpha / r_max`` (the paper's) or ``alpha / r_i`` (follows the rank)."""

DEFAULT_GAMMA = 2.0
"""``--gamma`` default. Summed over updates, ``mean IR`` is roughly the log-growth of the layer values, so the
budget ends near ``L * (s_end / s_start) ** gamma``: it follows how much the adapters grew. Measured with
MiniLM (6 blocks, q,v, r_max 8) on SST-2 at lr 5e-4 over 150 steps: gamma 2 took the budget from 6 to 11.7
(mean rank ~2), gamma 4 to 24 (mean rank 4). Smaller values keep ranks near 1 longer; larger ones reach
``r_max`` sooner; longer runs or larger learning rates grow the budget more."""


def check_settings(r_max: int, gamma: float, interval: int, contribution: str = "norm",
                   scale: str = "rmax") -> None:
    """Raise :class:`ConfigError` naming the flag for a La-LoRA setting outside what is allowed."""
    if isinstance(r_max, bool) or not isinstance(r_max, int) or r_max < 1:
        raise ConfigError(f"--r-max must be a whole number >= 1, got {r_max!r}")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0 or not math.isfinite(gamma):
        raise ConfigError(f"--gamma must be a finite number > 0, got {gamma!r}")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ConfigError(f"--rank-interval must be a whole number >= 1, got {interval!r}")
    if contribution not in CONTRIBUTIONS:
        raise ConfigError(f"--contribution must be one of {', '.join(CONTRIBUTIONS)}, got {contribution!r}")
    if scale not in RANK_SCALES:
        raise ConfigError(f"--rank-scale must be one of {', '.join(RANK_SCALES)}, got {scale!r}")
