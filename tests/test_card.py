"""The Layer Card as files and on the real bundled models and data."""

from __future__ import annotations

import json
import math

import pytest

from layerwise.card.layer_card import LayerCard, cumulative_table
from layerwise.runtime.errors import ConfigError, ModelError
from layerwise.card.metrics import DEFAULT_METRICS

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def test_cumulative_table_is_act_lora_threshold_mapping() -> None:
    # shares sorted: 0.4, 0.3, 0.2, 0.1 -> 25%: 1, 50%: 2, 75%: 3, 90%: 3, 100%: 4
    assert cumulative_table([0.1, 0.4, 0.2, 0.3]) == {"25": 1, "50": 2, "75": 3, "90": 3, "100": 4}
    assert cumulative_table([0.0, 0.0]) == {"25": 2, "50": 2, "75": 2, "90": 2, "100": 2}


@pytest.fixture(scope="module")
def minilm_sst2_card(minilm, glue_dir):
    from layerwise.data import load_task, make_batches, sample_calibration
    from layerwise.card.profiling import profile_layers

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
        # block 0's [CLS] input is the same embedding for every example: its CKA is 0/0, undefined
        defined = card.values(name)[1:] if name == "cka" else card.values(name)
        assert all(math.isfinite(v) for v in defined), name
        assert sorted(card.ranks(name)) == list(range(1, 7))
    assert card.values("cka")[0] is None and card.ranks("cka")[0] == 6
    assert any(n.startswith("cka (1 - CKA) undefined at block 0: its input") for n in card.notes)
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
    from layerwise.card.profiling import profile_layers

    task = load_task("gsm8k", gsm8k_dir)
    examples = sample_calibration(task.train, 4, seed=0)
    batches = make_batches(examples, smollm2.tokenizer, task.task, batch_size=2, max_length=96)
    card = profile_layers(smollm2.model, batches, name="smollm2-135m", show_progress=False)
    assert card.num_layers == 30
    for name in card.metric_names:
        assert all(math.isfinite(v) for v in card.values(name)), name
    assert card.data["pooling"] == "last"


@pytest.mark.slow
def test_cka_ratio_policy_reproduces_the_authors_layer_choice(minilm_sst2_card, minilm, glue_dir) -> None:
    """The CKA method as its authors' encoder script runs it (feature-space linear CKA between the [CLS]
    vectors of hidden_states[i] and hidden_states[i + 1], layers sorted by CKA ascending, the top-ranked one
    skipped, floor(0.5 * L) kept), computed here from output_hidden_states with numpy, picks the layers
    the ``ratio`` policy picks from the card."""
    import numpy as np
    import torch

    from layerwise.data import load_task, make_batches, sample_calibration
    from layerwise.selection.policies import select

    task = load_task("sst2", glue_dir / "SST-2")
    batches = make_batches(sample_calibration(task.train, 64, seed=0), minilm.tokenizer, task.task, batch_size=16)
    feats: list[list[np.ndarray]] = [[] for _ in range(7)]
    with torch.no_grad():
        for b in batches:
            out = minilm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                               token_type_ids=b.get("token_type_ids"), output_hidden_states=True)
            for i, h in enumerate(out.hidden_states):
                feats[i].append(h[:, 0].double().numpy())
    reps = [np.concatenate(f) for f in feats]

    def cka(x: np.ndarray, y: np.ndarray) -> float:
        x, y = x - x.mean(0), y - y.mean(0)
        den = max(np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y), 1e-12)
        return float(np.linalg.norm(x.T @ y) ** 2 / den)

    values = [cka(reps[i], reps[i + 1]) for i in range(6)]
    order = sorted(range(6), key=lambda i: values[i])
    authors = order[1: int(np.floor(0.5 * 6)) + 1]
    assert order[0] == 0 and values[0] < 1e-6  # the skipped top-ranked layer is the undefined block 0
    card = minilm_sst2_card
    assert set(select(card, "ratio", metric="cka").layers) == set(authors)
    for i in range(1, 6):
        assert card.values("cka")[i] == pytest.approx(1.0 - values[i], abs=1e-4)
