"""The Layer Card as files and on the real bundled models and data."""

from __future__ import annotations

import json
import math

import pytest

from layerwise.card import LayerCard, cumulative_table
from layerwise.errors import ConfigError, ModelError
from layerwise.importance import DEFAULT_METRICS

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def test_cumulative_table_is_act_lora_threshold_mapping() -> None:
    # shares sorted: 0.4, 0.3, 0.2, 0.1 -> 25%: 1, 50%: 2, 75%: 3, 90%: 3, 100%: 4
    assert cumulative_table([0.1, 0.4, 0.2, 0.3]) == {"25": 1, "50": 2, "75": 3, "90": 3, "100": 4}
    assert cumulative_table([0.0, 0.0]) == {"25": 2, "50": 2, "75": 2, "90": 2, "100": 2}


@pytest.fixture(scope="module")
def minilm_sst2_card(minilm, glue_dir):
    from layerwise.data import load_task, make_batches, sample_calibration
    from layerwise.profiling import profile_layers

    task = load_task("sst2", glue_dir / "SST-2")
    examples = sample_calibration(task.train, 64, seed=0)
    batches = make_batches(examples, minilm.tokenizer, task.task, batch_size=16)
    info = {"task": "sst2", "source": task.source, "samples": 64, "seed": 0, "batch_size": 16, "max_length": 128}
    return profile_layers(minilm.model, batches, name="minilm", data_info=info, show_progress=False)


@pytest.mark.slow
def test_real_minilm_card_on_sst2(minilm_sst2_card) -> None:
    card = minilm_sst2_card
    assert card.num_layers == 6
    assert set(card.metric_names) == set(DEFAULT_METRICS)
    for name in card.metric_names:
        assert all(math.isfinite(v) for v in card.values(name)), name
        assert sorted(card.ranks(name)) == list(range(1, 7))
    assert card.model["name"] == "minilm" and card.model["parameters"] > 20_000_000
    assert card.probe["batches"] == 4 and card.probe["examples"] == 64
    # cost: an adapter lower down forces a deeper backward pass
    cost = card.values("cost")
    assert cost == sorted(cost, reverse=True)


@pytest.mark.slow
def test_card_files_round_trip(minilm_sst2_card, minilm, tmp_path) -> None:
    files = minilm_sst2_card.save(tmp_path)
    assert {p.name for p in files.values()} == {"card.json", "card.md", "card.png"}
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(files["json"].read_text())
    assert data["schema_version"] == 1
    again = LayerCard.load(tmp_path)
    assert again.to_dict() == minilm_sst2_card.to_dict()
    md = files["md"].read_text()
    assert "| layer |" in md and "Cumulative importance" in md
    again.check_model(minilm.fingerprint)


@pytest.mark.slow
def test_card_refuses_another_model(minilm_sst2_card) -> None:
    other = dict(minilm_sst2_card.model, config_hash="0000", name="other")
    with pytest.raises(ModelError, match="made for 'minilm'"):
        minilm_sst2_card.check_model(other)


def test_load_errors(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        LayerCard.load(tmp_path / "nope")
    (tmp_path / "card.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        LayerCard.load(tmp_path)
    (tmp_path / "card.json").write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(ConfigError, match="schema version 99"):
        LayerCard.load(tmp_path)


@pytest.mark.slow
def test_real_smollm2_card_on_gsm8k(smollm2, gsm8k_dir) -> None:
    from layerwise.data import load_task, make_batches, sample_calibration
    from layerwise.profiling import profile_layers

    task = load_task("gsm8k", gsm8k_dir)
    examples = sample_calibration(task.train, 4, seed=0)
    batches = make_batches(examples, smollm2.tokenizer, task.task, batch_size=2, max_length=96)
    card = profile_layers(smollm2.model, batches, name="smollm2-135m", show_progress=False)
    assert card.num_layers == 30
    for name in card.metric_names:
        assert all(math.isfinite(v) for v in card.values(name)), name
    assert card.data["pooling"] == "last"
