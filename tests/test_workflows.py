"""The jobs behind the commands, on the real bundled MiniLM and real data."""

from __future__ import annotations

import json

import pytest

from layerwise.runtime.errors import ConfigError
from layerwise.train import TrainConfig
from layerwise.settings import DataSource
from layerwise.workflows.train import AdapterChoice, SelectionChoice, parse_ranks, train_job

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def test_parse_ranks() -> None:
    assert parse_ranks("3:16,4:8") == {3: 16, 4: 8}
    assert parse_ranks(None) is None
    with pytest.raises(ConfigError, match="--ranks"):
        parse_ranks("3=16")


@pytest.mark.slow
def test_adalora_really_reallocates_ranks(tmp_path, glue_dir) -> None:
    result, chosen = train_job("minilm", DataSource("sst2", str(glue_dir / "SST-2")), tmp_path / "ada",
                               train_config=TrainConfig(steps=12, eval_max_examples=16),
                               adapter=AdapterChoice(method="adalora"), show_progress=False)
    config = json.loads((tmp_path / "ada" / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA"
    # update_and_allocate ran: peft records the final per-module ranks it allocated
    assert config["rank_pattern"], "AdaLoRA's budget allocation never ran"
    assert chosen.layers == tuple(range(6))


@pytest.mark.slow
def test_train_job_with_a_card_policy_refuses_an_existing_folder(tmp_path, glue_dir) -> None:
    data = str(glue_dir / "SST-2")
    cfg = TrainConfig(steps=2, eval_max_examples=16)
    result, chosen = train_job("minilm", DataSource("sst2", data), tmp_path / "top2", train_config=cfg,
                               selection=SelectionChoice("top-k", "gradnorm", k=2), show_progress=False,
                               calibration=None)
    assert len(chosen.layers) == 2 and (tmp_path / "top2" / "card" / "card.json").exists()
    saved = json.loads((tmp_path / "top2" / "selection.json").read_text())
    assert saved["selection"]["layers"] == list(chosen.layers)
    with pytest.raises(ConfigError, match="--overwrite"):
        train_job("minilm", DataSource("sst2", data), tmp_path / "top2", train_config=cfg, show_progress=False)


def test_frozen_prefix_runs_without_dropout() -> None:
    import torch
    from tiny_models import tiny_bert

    from layerwise.adapters.bridge import apply_adapter
    from layerwise.models.layers import find_layer_stack
    from layerwise.train.prefix.frozen import quiet_frozen_prefix

    model = tiny_bert(100, layers=4, max_positions=512)
    stack = find_layer_stack(model)
    peft_model = apply_adapter(model, stack, [2, 3])
    handles = quiet_frozen_prefix(peft_model, stack, [2, 3])
    peft_model.train()
    ids = torch.randint(1, 100, (4, 9))
    with torch.no_grad():
        out = [peft_model(input_ids=ids).logits for _ in range(2)]
    assert not torch.equal(out[0], out[1])  # the adapted blocks still drop out in train mode
    assert not model.bert.embeddings.training and not model.bert.encoder.layer[1].training
    assert model.bert.encoder.layer[2].training and model.bert.encoder.layer[3].training  # adapted: dropout kept
    # the prefix is deterministic: the input of block 2 is the same in two train-mode passes
    seen = []
    h = model.bert.encoder.layer[2].register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    with torch.no_grad():
        peft_model(input_ids=ids)
        peft_model(input_ids=ids)
    h.remove()
    assert torch.equal(seen[0], seen[1])
    for handle in handles:
        handle.remove()


@pytest.mark.slow
def test_run_side_by_side_trains_exactly_what_the_sequential_run_trains(tmp_path) -> None:
    """``layerwise run --side-by-side``: both trainings in lockstep, each ending with the weights it gets when
    the two run one after the other; the same files and report."""
    import shutil

    import torch
    from safetensors.torch import load_file

    from layerwise.settings import Calibration as CalibrationSpec
    from layerwise.workflows.run import run_pipeline

    kwargs = dict(train_config=TrainConfig(steps=3, eval_max_examples=16), selection=SelectionChoice("pareto"),
                  adapter=AdapterChoice(), calibration=CalibrationSpec(samples=32), show_progress=False)
    sequential = run_pipeline("minilm", "rotten-tomatoes", tmp_path / "seq", **kwargs)
    (tmp_path / "sbs").mkdir()
    shutil.copytree(tmp_path / "seq" / "card", tmp_path / "sbs" / "card")  # the same card, not made again
    together = run_pipeline("minilm", "rotten-tomatoes", tmp_path / "sbs", resume=True, side_by_side=True,
                            **kwargs)
    for label in ("selected", "uniform"):
        a = load_file(str(tmp_path / "seq" / label / "adapter" / "adapter_model.safetensors"))
        b = load_file(str(tmp_path / "sbs" / label / "adapter" / "adapter_model.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), label
    assert [r["score"] for r in together["rows"]] == [r["score"] for r in sequential["rows"]]
    assert "trained side by side, in lockstep" in (tmp_path / "sbs" / "report.md").read_text()
    assert "trained one after the other" in (tmp_path / "seq" / "report.md").read_text()
