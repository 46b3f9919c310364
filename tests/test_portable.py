"""Portable adapters: the saved adapter names its base model as the user gave it (alias or hub id; an absolute
path only for the user's own folder) and records the class, head and label count it needs."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
import transformers

from layerwise.adapters.bridge import apply_adapter
from layerwise.models.layers import find_layer_stack
from layerwise.models import load_model, resolve_model
from layerwise.models.resolve import ModelSource
from layerwise.train.checkpoint import BASE_RECORD, save_adapter

pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]


def test_portable_name_is_the_alias_the_hub_id_or_the_users_absolute_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert ModelSource("MiniLM", "/venv/site-packages/x/model", "bundled", "minilm").portable_name == "minilm"
    assert ModelSource("org/name", "org/name", "hub").portable_name == "org/name"
    assert ModelSource("mine", str(tmp_path / "mine"), "local").portable_name == str(tmp_path / "mine")


def test_a_saved_adapter_names_the_alias_and_records_its_head_and_labels(tmp_path: Path) -> None:
    loaded = load_model("minilm", head="classification", num_labels=3)
    assert loaded.model.name_or_path == "minilm"
    model = apply_adapter(loaded.model, find_layer_stack(loaded.model), [5], targets="q,v")
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()  # a non-zero update, so a reload that dropped it would show
    save_adapter(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    record = json.loads((tmp_path / "adapter" / BASE_RECORD).read_text())
    assert config["base_model_name_or_path"] == "minilm"
    assert record == {"schema_version": 1, "base_model": "minilm", "model_class": "BertForSequenceClassification",
                      "head": "classification", "num_labels": 3, "problem_type": "single_label_classification"}
    # on "another machine": only the record and the adapter folder
    cls = getattr(transformers, record["model_class"])
    base = cls.from_pretrained(resolve_model(record["base_model"]).path, num_labels=record["num_labels"])
    reloaded = peft.PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
