"""Data-free Layer Cards: what ``layerwise card --metrics weights`` needs besides the metrics themselves (no task,
no head, no calibration batches). The metrics are in ``layerwise.card.metrics`` (``needs="weights"``) and their
estimators in ``layerwise.card.probe.spectrum``."""

from __future__ import annotations

from typing import Any, Sequence

from layerwise.runtime.errors import ConfigError
from layerwise.card.metrics import DATA_FREE, get_metrics

__all__ = ["check_task", "load_without_task", "DATA_FREE_INFO"]

DATA_FREE_INFO: dict[str, Any] = {"task": None, "source": None, "samples": 0, "seed": 0, "batch_size": None,
                                  "max_length": None}
"""The card's ``data`` block when no data was read."""


def check_task(task: str | None, metrics: str | Sequence[str] | None) -> bool:
    """Whether ``metrics`` are all data-free; a missing ``task`` is refused unless they are."""
    chosen = get_metrics(metrics)
    data_free = all(m.needs in DATA_FREE for m in chosen)
    if task is None and not data_free:
        needy = [m.name for m in chosen if m.needs not in DATA_FREE]
        raise ConfigError(f"--task is needed for the data-driven metric(s) {', '.join(needy)}; without data use "
                          "--metrics weights (snr, alpha_hill, kappa; plus cost)")
    return data_free


def load_without_task(model: str, cache_dir: str | None = None,
                      trust_remote_code: bool = False) -> tuple[Any, list, dict[str, Any]]:
    """The model without a task head (its fingerprint is the same as with any head), no batches, and the card's
    data block saying no data was read."""
    from layerwise.models import load_model

    loaded = load_model(model, head="base", cache_dir=cache_dir, trust_remote_code=trust_remote_code)
    return loaded, [], dict(DATA_FREE_INFO)
