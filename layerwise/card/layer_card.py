"""The Layer Card: every per-layer signal of one probe, with ranks, cumulative-importance tables and
stability, in a form people read (``card.md``, ``card.png``) and tools reuse (``card.json``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from layerwise.runtime.errors import ConfigError, ModelError
from layerwise.card.stability import order_of, ranks_of

__all__ = ["SCHEMA_VERSION", "CUMULATIVE_LEVELS", "LayerCard", "cumulative_table", "validate_card",
           "estimated_card_bytes"]

SCHEMA_VERSION = 1
CUMULATIVE_LEVELS = (25, 50, 75, 90, 100)


def cumulative_table(values: list[float], levels: tuple[int, ...] = CUMULATIVE_LEVELS) -> dict[str, int]:
    """Fewest top layers whose share of total importance reaches each level (Act-LoRA's threshold mapping).

    Importance must be non-negative; a level is reached when the cumulative share is within 1e-9 of it.
    """
    values = [0.0 if v is None else v for v in values]
    total = sum(values)
    if total <= 0:
        return {str(p): len(values) for p in levels}
    ordered = sorted(values, reverse=True)
    out, acc, k = {}, 0.0, 0
    for p in levels:
        while k < len(ordered) and acc / total < p / 100 - 1e-9:
            acc += ordered[k]
            k += 1
        out[str(p)] = max(k, 1)
    return out


@dataclass
class LayerCard:
    """Per-layer metrics of one model on one calibration sample.

    ``metrics[name]`` holds ``values`` (one per block), ``ranks`` (1 = most important), ``higher_is_better``,
    ``needs``, ``description``, ``cumulative`` (for higher-is-better metrics), ``stability`` and ``extras``.
    A value is None where the metric is undefined at that block (the card's ``notes`` say why); such a block
    ranks last and counts as the least important.
    """

    model: dict[str, Any]
    """Fingerprint: name, model_type, config_hash, parameters."""
    data: dict[str, Any]
    """Task, source, samples, seed, batch size, max length, pooling."""
    layers: list[dict[str, Any]]
    """Per block: index, name, params, linears (name, role, in, out; ``conv1d: true`` for transformers'
    Conv1D, whose weight is stored (in, out))."""
    metrics: dict[str, dict[str, Any]]
    probe: dict[str, Any]
    """Seconds, peak memory, batches, tokens, examples; and the weightdelta run's time if any."""
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    notes: list[str] = field(default_factory=list)

    # -- queries ----------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def metric_names(self) -> list[str]:
        return list(self.metrics)

    def metric(self, name: str) -> dict[str, Any]:
        """The entry of one metric; an unknown name lists the card's metrics."""
        if name not in self.metrics:
            raise ConfigError(f"--metric {name!r} is not on this card; it has: {', '.join(self.metrics)}")
        return self.metrics[name]

    def values(self, name: str) -> list[float]:
        return list(self.metric(name)["values"])

    def ranks(self, name: str) -> list[int]:
        return list(self.metric(name)["ranks"])

    def order(self, name: str) -> list[int]:
        """Layer indices from most to least important by ``name``."""
        m = self.metric(name)
        return order_of(m["values"], m["higher_is_better"])

    def importance(self, name: str) -> list[float]:
        """Non-negative scores where higher means more important (lower-is-better metrics are flipped); an
        undefined value (None) scores 0, no more than the least important defined layer."""
        m = self.metric(name)
        v = [float(x) for x in m["values"] if x is not None]
        if not v:
            return [0.0] * len(m["values"])
        if m["higher_is_better"]:
            low = min(v)
            shift = low if low < 0 else 0.0
            return [0.0 if x is None else float(x) - shift for x in m["values"]]
        high = max(v)
        return [0.0 if x is None else high - float(x) for x in m["values"]]

    # -- identity ---------------------------------------------------------------------------------
    def check_model(self, fingerprint: dict[str, Any]) -> None:
        """Refuse a model whose architecture fingerprint differs from the one the card was made for."""
        mine = {k: self.model.get(k) for k in ("model_type", "config_hash", "parameters")}
        theirs = {k: fingerprint.get(k) for k in mine}
        if mine != theirs:
            raise ModelError(
                f"this Layer Card was made for {self.model.get('name')!r} ({mine}) but the model is "
                f"{fingerprint.get('name')!r} ({theirs}); make a card for this model with `layerwise card`")

    # -- files ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "card") -> "LayerCard":
        """A card from its JSON form, validated first (:func:`validate_card`); errors name ``source`` and the field."""
        validate_card(d, source)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LayerCard":
        """Load ``card.json`` (or a directory holding one)."""
        p = Path(path)
        if p.is_dir():
            p = p / "card.json"
        if not p.exists():
            raise ConfigError(f"--card {p} does not exist; make one with `layerwise card`")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"--card {p} is not valid JSON: {err}") from err
        except OSError as err:
            raise ConfigError(f"--card {p} cannot be read: {err.strerror}") from err
        return cls.from_dict(data, f"--card {p}")

    def save(self, out_dir: str | os.PathLike, plots: bool = True) -> dict[str, Path]:
        """Write ``card.json``, ``card.md`` and (with ``plots``) ``card.png`` atomically into ``out_dir``."""
        from layerwise.card.render import render_markdown, render_png
        from layerwise.runtime.io import atomic_write_json, atomic_write_text

        out = Path(out_dir)
        files = {"json": atomic_write_json(out / "card.json", self.to_dict()),
                 "md": atomic_write_text(out / "card.md", render_markdown(self))}
        if plots:
            files["png"] = render_png(self, out / "card.png")
        return files


def estimated_card_bytes(layers: int, metrics: int, plots: bool = True) -> int:
    """Bytes a card's files take at most, for the disk check before profiling: ``card.json`` and ``card.md``
    about 2 KiB per layer and metric (MiniLM's 6 x 9 card: 17 KiB and 3.4 KiB), ``card.png`` at most 1 MiB
    (100 KiB there), and 64 KiB for the temporary files of the atomic writes."""
    return 2048 * layers * max(metrics, 1) + (2**20 if plots else 0) + 2**16


# ---------------------------------------------------------------- validation

_FINGERPRINT = ("name", "model_type", "config_hash", "parameters")


def validate_card(d: Any, source: str = "card") -> None:
    """Refuse a card.json that does not follow the schema: its version, the model fingerprint, one entry per
    layer in every metric's values and ranks, finite values (``null`` only where the metric documents undefined
    values: the data-free weight metrics, or a metric the card's notes name). ``ConfigError`` names ``source``
    and the field (``metrics.resnorm.values[3]``)."""
    def bad(field: str, what: str) -> ConfigError:
        return ConfigError(f"{source}: field {field} {what}; make the card again with `layerwise card`")

    if not isinstance(d, dict):
        raise ConfigError(f"{source}: a Layer Card is a JSON object, got {type(d).__name__}")
    version = d.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(f"{source}: Layer Card schema version {version}, this layerwise reads {SCHEMA_VERSION}")
    for key, kind in (("model", dict), ("layers", list), ("metrics", dict), ("data", dict), ("probe", dict)):
        if not isinstance(d.get(key), kind):
            raise bad(key, f"is missing or not a JSON {'object' if kind is dict else 'list'}")
    missing = [k for k in _FINGERPRINT if d["model"].get(k) in (None, "")]
    if missing:
        raise bad("model", f"lacks the fingerprint {', '.join(missing)}")
    n = len(d["layers"])
    if n == 0:
        raise bad("layers", "is empty")
    notes = " ".join(str(x) for x in d.get("notes") or [])
    for name, entry in d["metrics"].items():
        _validate_metric(name, entry, n, notes, bad)


def _validate_metric(name: str, entry: Any, n: int, notes: str, bad: Any) -> None:
    where = f"metrics.{name}"
    if not isinstance(entry, dict):
        raise bad(where, "is not a JSON object")
    if not isinstance(entry.get("higher_is_better"), bool):
        raise bad(f"{where}.higher_is_better", "is missing or not true/false")
    for key in ("values", "ranks"):
        if not isinstance(entry.get(key), list) or len(entry[key]) != n:
            got = len(entry[key]) if isinstance(entry.get(key), list) else "no list of"
            raise bad(f"{where}.{key}", f"has {got} values for {n} layers")
    may_be_null = entry.get("needs") == "weights" or name in notes
    for i, v in enumerate(entry["values"]):
        if v is None and may_be_null:
            continue
        if v is None:
            raise bad(f"{where}.values[{i}]", f"is null, but {name} has no undefined values (no note says why)")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"{where}.values[{i}]", f"is {v!r}, not a finite number")
    for i, r in enumerate(entry["ranks"]):
        if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= n:
            raise bad(f"{where}.ranks[{i}]", f"is {r!r}, not a rank in 1..{n}")


def metric_entry(values: list[float], info: dict[str, Any], stability: dict | None,
                 extras: dict[str, Any]) -> dict[str, Any]:
    """The card's entry for one metric: values, ranks, cumulative table (higher-is-better only)."""
    hib = info["higher_is_better"]
    values = [None if v is None else float(v) for v in values]  # None: undefined at that layer, ranked last
    entry = {**info, "values": values, "ranks": ranks_of([_nan_if_none(v) for v in values], hib),
             "cumulative": cumulative_table([0.0 if v is None else max(v, 0.0) for v in values]) if hib else None,
             "stability": stability, "extras": extras}
    return entry


def _nan_if_none(v: float | None) -> float:
    return float("nan") if v is None else v
