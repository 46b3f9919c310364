"""A Layer Card is validated on load (issue 19, class 2): schema version, fingerprint, one value and rank per
layer in every metric, finite values (null only where the metric documents undefined values); the error names
the file and the field. A card from one calibration batch saves (its stability is undefined, with a note)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from layerwise.card.layer_card import SCHEMA_VERSION, LayerCard
from layerwise.runtime.errors import ConfigError


def card_dict(n: int = 6) -> dict:
    """A small valid card written by hand (independent of the profiler)."""
    values = [float(i + 1) for i in range(n)]
    metric = {"needs": "backward", "higher_is_better": True, "description": "d", "paper": None,
              "values": values, "ranks": list(range(n, 0, -1)), "cumulative": None, "stability": None, "extras": {}}
    weights = {**copy.deepcopy(metric), "needs": "weights", "values": [None] + values[1:]}
    return {"model": {"name": "m", "model_type": "bert", "config_hash": "abc", "parameters": 10},
            "data": {}, "layers": [{"index": i} for i in range(n)], "probe": {}, "created": "",
            "schema_version": SCHEMA_VERSION, "notes": ["snr undefined at layer 0: zero matrix"],
            "metrics": {"resnorm": metric, "snr": weights}}


def _load(tmp_path: Path, d: dict) -> LayerCard:
    (tmp_path / "card.json").write_text(json.dumps(d))  # json.dumps writes NaN as a bare NaN token
    return LayerCard.load(tmp_path)


def test_a_valid_card_loads_and_null_is_allowed_for_weight_metrics(tmp_path: Path) -> None:
    card = _load(tmp_path, card_dict())
    assert card.num_layers == 6 and card.values("snr")[0] is None


def _edit(path: list, value):
    def apply(d: dict) -> None:
        target = d
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return apply


@pytest.mark.parametrize("edit, field, what", [
    (_edit(["metrics", "resnorm", "values"], [1.0, 2.0, 3.0, 4.0]), "metrics.resnorm.values", "has 4 values for 6"),
    (_edit(["metrics", "resnorm", "ranks"], [1, 2]), "metrics.resnorm.ranks", "has 2 values for 6"),
    (_edit(["metrics", "resnorm", "values", 3], float("nan")), r"metrics.resnorm.values\[3\]", "is nan, not a finite"),
    (_edit(["metrics", "resnorm", "values", 2], float("inf")), r"metrics.resnorm.values\[2\]", "is inf, not a finite"),
    (_edit(["metrics", "resnorm", "values", 1], "big"), r"metrics.resnorm.values\[1\]", "is 'big', not a finite"),
    (_edit(["metrics", "resnorm", "values", 0], None), r"metrics.resnorm.values\[0\]", "is null, but resnorm"),
    (_edit(["metrics", "resnorm", "ranks", 0], 9), r"metrics.resnorm.ranks\[0\]", "is 9, not a rank in 1..6"),
    (_edit(["model", "config_hash"], KeyError), "model", "lacks the fingerprint config_hash"),
    (_edit(["layers"], KeyError), "layers", "is missing"),
    (_edit(["metrics", "resnorm", "higher_is_better"], "yes"), "metrics.resnorm.higher_is_better",
     "is missing or not true"),
])
def test_a_tampered_card_is_refused_naming_file_and_field(tmp_path: Path, edit, field: str, what: str) -> None:
    d = card_dict()
    edit(d)
    with pytest.raises(ConfigError, match=rf"--card {tmp_path}/card.json: field {field} {what}"):
        _load(tmp_path, d)


def test_a_card_of_one_calibration_batch_saves_with_undefined_stability(tmp_path: Path) -> None:
    import torch

    from layerwise.card.profiling import profile_layers
    from tiny_models import tiny_bert

    torch.manual_seed(0)
    batch = {"input_ids": torch.randint(5, 100, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long),
             "labels": torch.tensor([0, 1, 0, 1])}
    card = profile_layers(tiny_bert(layers=3), [batch], "actnorm,gradnorm", show_progress=False)
    card.save(tmp_path, plots=False)  # JSON refuses NaN: this raised ValueError before
    saved = json.loads((tmp_path / "card.json").read_text())
    stab = saved["metrics"]["gradnorm"]["stability"]
    assert stab["kendall_tau_mean"] is None and stab["n_batches"] == 1 and "one calibration batch" in stab["note"]
    assert "n/a (one batch)" in (tmp_path / "card.md").read_text()
    LayerCard.load(tmp_path)  # and it loads back
