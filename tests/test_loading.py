"""A trained adapter describes itself: ``layerwise.load_adapter(dir)`` gives the base, its head, its class names
and the adapter in one call; the class names are in the base config where transformers reads them; peft's
model card names the portable base; plain peft and ``AutoPeftModel*`` (with the documented lines for a bundled
alias) reload the same model."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

import layerwise
from layerwise.cli import main
from layerwise.runtime.errors import ConfigError

pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`layerwise train` on a small CSV whose classes are named neg/pos (3 steps, MiniLM, last block)."""
    root = tmp_path_factory.mktemp("loading")
    rows = ["text,label"] + [f"{w} movie number {i},{'pos' if w == 'great' else 'neg'}"
                             for i in range(24) for w in ("great", "awful")]
    (root / "reviews.csv").write_text("\n".join(rows) + "\n")
    out = root / "run"
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["train", "--model", "minilm", "--task", "csv", "--data", str(root / "reviews.csv"),
                     "--policy", "manual", "--layers", "5", "--steps", "3", "--batch-size", "8", "--max-length",
                     "16", "--lr", "5e-2", "--eval-max-examples", "8", "--out", str(out)])
    assert code == 0, err.getvalue()
    return out


def _logits(model: torch.nn.Module) -> torch.Tensor:
    ids = torch.tensor([[101, 2307, 3185, 102], [101, 9643, 3185, 102]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_load_adapter_gives_base_head_labels_and_adapter(csv_run: Path) -> None:
    record = json.loads((csv_run / "adapter" / "layerwise_base.json").read_text())
    assert record["id2label"] == {"0": "neg", "1": "pos"} and record["label2id"] == {"neg": 0, "pos": 1}
    loaded = layerwise.load_adapter(csv_run / "adapter")
    assert loaded.base_model == "minilm" and loaded.head == "classification" and loaded.labels == ["neg", "pos"]
    config = loaded.model.get_base_model().config
    assert config.id2label == {0: "neg", 1: "pos"} and config.label2id == {"neg": 0, "pos": 1}
    assert "neg" in repr(loaded) and "\n" not in repr(loaded)
    run_folder = layerwise.load_adapter(csv_run)  # the run folder means its adapter/
    torch.testing.assert_close(_logits(run_folder.model), _logits(loaded.model), rtol=0, atol=0)
    # the adapter is on: without it the logits differ
    with loaded.model.disable_adapter():
        plain = _logits(loaded.model)
    assert not torch.equal(plain, _logits(loaded.model))


def test_plain_peft_and_auto_peft_reload_the_same_model(csv_run: Path, tmp_path: Path) -> None:
    import peft
    import transformers

    from layerwise import resolve_model

    loaded = layerwise.load_adapter(csv_run / "adapter")
    expected = _logits(loaded.model)
    # plain peft, as docs/LOADING.md writes it
    record = json.loads((csv_run / "adapter" / "layerwise_base.json").read_text())
    id2label = {int(i): name for i, name in record["id2label"].items()}  # JSON keys are strings
    base = transformers.AutoModelForSequenceClassification.from_pretrained(
        resolve_model(record["base_model"]).path, num_labels=record["num_labels"], id2label=id2label)
    model = peft.PeftModel.from_pretrained(base, str(csv_run / "adapter")).eval()
    torch.testing.assert_close(_logits(model), expected, rtol=0, atol=0)
    assert model.config.id2label == {0: "neg", 1: "pos"}
    # AutoPeftModel: for a bundled alias, a copy whose adapter_config.json names the resolved folder
    copy = tmp_path / "adapter-local"
    shutil.copytree(csv_run / "adapter", copy)
    config = json.loads((copy / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = resolve_model(config["base_model_name_or_path"]).path
    (copy / "adapter_config.json").write_text(json.dumps(config, indent=2))
    auto = peft.AutoPeftModelForSequenceClassification.from_pretrained(
        str(copy), num_labels=record["num_labels"], id2label=id2label).eval()
    torch.testing.assert_close(_logits(auto), expected, rtol=0, atol=0)


def test_the_model_card_names_the_portable_base(csv_run: Path) -> None:
    card = (csv_run / "adapter" / "README.md").read_text()
    front = card.split("---")[1]
    assert 'base_model: "minilm"' in front and "site-packages" not in front
    assert json.loads((csv_run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == "minilm"


def test_a_folder_that_is_not_a_layerwise_adapter_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no adapter_config.json"):
        layerwise.load_adapter(tmp_path)
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match="layerwise_base.json"):
        layerwise.load_adapter(tmp_path)
