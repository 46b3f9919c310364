"""`layerwise export`: a card's selection as a peft config that adapts exactly the chosen modules of the model
with any head, axolotl's LoRA keys that do the same, plain JSON; from a card or a finished run; errors for
what a format cannot express."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import peft
import pytest
import torch
import transformers
import yaml

from layerwise.adapters import export
from layerwise.adapters.bridge import adapted_modules, apply_adapter
from layerwise.card.layer_card import LayerCard, metric_entry
from layerwise.cli import main
from layerwise.runtime.errors import ConfigError
from layerwise.models.layers import find_layer_stack
from layerwise.models.loading import model_fingerprint
from layerwise.card.profiling import _layers_info
from layerwise.settings import AdapterChoice, AdaptiveRanks

pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
              pytest.mark.filterwarnings("ignore:The PEFT config's `base_model_name_or_path`:UserWarning")]

_IDS = {"vocab_size": 100, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
LAYERS, SELECTED, RANKS = 4, [1, 3], {1: 4}


def bert_config() -> transformers.BertConfig:
    return transformers.BertConfig(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64, **_IDS)


def llama_config() -> transformers.LlamaConfig:
    return transformers.LlamaConfig(hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=8, intermediate_size=64,
                                    max_position_embeddings=64, **_IDS)


def gpt2_config() -> transformers.GPT2Config:
    return transformers.GPT2Config(n_embd=32, n_layer=LAYERS, n_head=4, n_positions=64, **_IDS)


HEADS = {
    "bert": (bert_config, [transformers.BertModel, transformers.BertForSequenceClassification]),
    "llama": (llama_config, [transformers.LlamaModel, transformers.LlamaForCausalLM,
                             transformers.LlamaForSequenceClassification]),
    "gpt2": (gpt2_config, [transformers.GPT2Model, transformers.GPT2LMHeadModel]),
}


def card_of(model: torch.nn.Module, name: str = "tiny") -> LayerCard:
    """A card holding ``model``'s blocks (module names as the head class names them) and one metric."""
    stack = find_layer_stack(model)
    values = [float(i) for i in range(len(stack))]
    metric = metric_entry(values, {"higher_is_better": True, "needs": "forward", "description": "test"}, None, {})
    return LayerCard(model=model_fingerprint(model, name), data={}, layers=_layers_info(stack),
                     metrics={"m": metric}, probe={})


def lora_ranks(peft_model: torch.nn.Module) -> dict[str, int]:
    """Adapted module name (relative to the transformers model) -> its LoRA rank."""
    base = peft_model.get_base_model()
    return {name: int(module.r["default"]) for name, module in base.named_modules()
            if name in set(adapted_modules(peft_model))}


def fresh(cls: type, config: transformers.PretrainedConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(config).eval()


@pytest.mark.parametrize("family", list(HEADS))
@pytest.mark.parametrize("targets", ["q,v", "mlp", "all-linear"])
def test_peft_export_adapts_exactly_what_train_adapts_under_every_head(tmp_path: Path, family: str,
                                                                      targets: str) -> None:
    make_config, classes = HEADS[family]
    config = make_config()
    # the card is made with one head; the export is applied to every other
    card = card_of(fresh(classes[-1], config))
    sel = export.from_card(card, SELECTED, AdapterChoice(targets=targets, rank=8, ranks=RANKS))
    export.write_export(sel, "peft", tmp_path)
    loaded = peft.LoraConfig.from_pretrained(str(tmp_path))  # from the file, as a user's script reads it
    assert loaded.base_model_name_or_path == "tiny"
    for cls in classes:
        model = fresh(cls, config)
        theirs = peft.get_peft_model(model, loaded)
        ours = apply_adapter(fresh(cls, config), find_layer_stack(model), SELECTED, targets=targets, rank=8,
                             ranks=RANKS)  # what `layerwise train` puts on the model
        assert adapted_modules(theirs) == adapted_modules(ours), cls.__name__
        stack = find_layer_stack(model)
        expected = {n: RANKS.get(stack.block_of(n), 8) for n in adapted_modules(ours)}  # hand rule: 1 -> 4, 3 -> 8
        assert lora_ranks(theirs) == expected, cls.__name__
        assert {stack.block_of(n) for n in expected} == set(SELECTED)


def test_portable_names_drop_only_the_head_wrapper_prefix() -> None:
    card = card_of(fresh(transformers.BertForSequenceClassification, bert_config()))
    sel = export.from_card(card, [1], AdapterChoice(targets="q,v"))
    assert [t.name for t in sel.targets] == ["encoder.layer.1.attention.self.query",
                                            "encoder.layer.1.attention.self.value"]
    assert export.target_regex(sel) == r"(?:.*\.)?encoder\.layer\.(?:1)\.(?:attention\.self\.query|" \
                                       r"attention\.self\.value)"
    assert export.base_model_prefix("llama") == "model" and export.base_model_prefix("gpt2") == "transformer"


def test_exported_regex_never_matches_a_longer_index_or_a_sibling_suffix() -> None:
    config = bert_config()
    config.num_hidden_layers = 12
    card = card_of(fresh(transformers.BertModel, config))
    sel = export.from_card(card, [1], AdapterChoice(targets="down"))  # output.dense, suffix of attention.output.dense
    model = peft.get_peft_model(fresh(transformers.BertModel, config), export.peft_config(sel))
    assert adapted_modules(model) == ["encoder.layer.1.output.dense"]


def axolotl_lora(keys: dict) -> peft.LoraConfig:
    """The LoraConfig axolotl builds from its keys (its loader passes them through unchanged)."""
    return peft.LoraConfig(r=keys["lora_r"], lora_alpha=keys["lora_alpha"], lora_dropout=keys["lora_dropout"],
                           target_modules=keys["lora_target_modules"],
                           layers_to_transform=keys.get("peft_layers_to_transform"),
                           layers_pattern=keys.get("peft_layers_pattern"), use_dora=keys.get("peft_use_dora", False),
                           use_rslora=keys.get("peft_use_rslora", False))


@pytest.mark.parametrize("family,targets,layer_keys", [("llama", "q,v", True), ("llama", "all-linear", True),
                                                       ("bert", "q,v", True), ("bert", "mlp", False)])
def test_axolotl_yaml_parses_and_its_lora_config_adapts_the_selection(family: str, targets: str,
                                                                      layer_keys: bool) -> None:
    make_config, classes = HEADS[family]
    config = make_config()
    card = card_of(fresh(classes[-1], config))
    sel = export.from_card(card, SELECTED, AdapterChoice(targets=targets, rank=8, alpha=16, method="dora"))
    keys = yaml.safe_load(export.axolotl_yaml(sel))
    assert keys["adapter"] == "lora" and keys["lora_r"] == 8 and keys["lora_alpha"] == 16
    assert keys["peft_use_dora"] is True
    # BERT's output.dense is a suffix of attention.output.dense: layer keys would adapt both, so a regex
    assert ("peft_layers_to_transform" in keys) == layer_keys
    if layer_keys:
        assert keys["peft_layers_to_transform"] == SELECTED
    for cls in classes:
        model = fresh(cls, config)
        ours = apply_adapter(fresh(cls, config), find_layer_stack(model), SELECTED, targets=targets)
        assert adapted_modules(peft.get_peft_model(model, axolotl_lora(keys))) == adapted_modules(ours)


def test_axolotl_per_layer_ranks_are_the_largest_with_a_note(caplog) -> None:
    card = card_of(fresh(transformers.LlamaForCausalLM, llama_config()))
    sel = export.from_card(card, SELECTED, AdapterChoice(rank=8, ranks={1: 16}))
    text = export.axolotl_yaml(sel)
    assert yaml.safe_load(text)["lora_r"] == 16 and yaml.safe_load(text)["lora_alpha"] == 32
    assert "# NOTE: per-layer ranks 1:16, 3:8" in text
    assert any("no rank_pattern" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("fmt,adapter,words", [
    ("axolotl", AdapterChoice(adaptive=AdaptiveRanks()), "--adaptive-ranks: axolotl"),
    ("peft", AdapterChoice(adaptive=AdaptiveRanks()), "--adaptive-ranks: La-LoRA chooses its ranks while training"),
    ("peft", AdapterChoice(method="vera", ranks={1: 4}), "--ranks: --method vera has no rank_pattern"),
    ("axolotl", AdapterChoice(method="loha"), "--method loha cannot be written for axolotl"),
    ("axolotl", AdapterChoice(method="ia3"), "--method ia3 cannot be written for axolotl"),
])
def test_what_a_format_cannot_express_is_an_error(tmp_path: Path, fmt: str, adapter: AdapterChoice,
                                                  words: str) -> None:
    card = card_of(fresh(transformers.LlamaForCausalLM, llama_config()))
    sel = export.from_card(card, SELECTED, adapter)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(")):
        export.write_export(sel, fmt, tmp_path)


def test_json_export_holds_layers_ranks_policy_and_fingerprint(tmp_path: Path) -> None:
    model = fresh(transformers.LlamaForCausalLM, llama_config())
    card = card_of(model)
    sel = export.from_card(card, [2, 3], AdapterChoice(ranks={2: 4}), policy="top-k", metric="m", params={"k": 2})
    export.write_export(sel, "json", tmp_path)
    data = json.loads((tmp_path / "selection.json").read_text())
    assert data["layers"] == [2, 3] and data["ranks"] == {"2": 4, "3": 8}
    assert (data["policy"], data["metric"], data["params"]) == ("top-k", "m", {"k": 2})
    assert data["model"]["config_hash"] == model_fingerprint(model, "x")["config_hash"]
    assert data["modules"] == [f"layers.{i}.self_attn.{p}_proj" for i in (2, 3) for p in "qv"]


def test_cli_export_from_a_card_and_from_a_finished_run_agree(tmp_path: Path, capsys) -> None:
    """The run folder is what `layerwise train` leaves (selection.json + adapter/), here without its card, so
    the names come from the saved adapter_config.json."""
    from layerwise.selection.policies import Selection
    from layerwise.workflows.train import _write_selection

    config = bert_config()
    model = fresh(transformers.BertForSequenceClassification, config)
    card = card_of(model)
    card.save(tmp_path / "card", plots=False)
    args = ["--policy", "top-k", "--metric", "m", "--k", "2", "--ranks", "3:4", "--targets", "attn"]
    assert main(["export", "--card", str(tmp_path / "card"), *args, "--out", str(tmp_path / "a")]) == 0
    assert "top-k by m: blocks 2, 3" in capsys.readouterr().out
    run = tmp_path / "run"
    adapter = AdapterChoice(targets="attn", ranks={3: 4})
    peft_model = apply_adapter(model, find_layer_stack(model), [2, 3], targets="attn", ranks={3: 4})
    peft_model.save_pretrained(str(run / "adapter"))
    _write_selection(run, Selection((2, 3), "top-k", "m", {"k": 2}), adapter, card.model)
    assert main(["export", "--from-run", str(run), "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "adapter_config.json").read_text()) for d in "ab")
    for key in ("target_modules", "rank_pattern", "alpha_pattern", "r", "lora_alpha"):
        assert a[key] == b[key], key
    assert main(["export", "--out", str(tmp_path / "c")]) == 2
    assert "--card is needed" in capsys.readouterr().err
    assert main(["export", "--card", str(tmp_path / "card"), *args, "--out", str(tmp_path / "a")]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_real_minilm_and_smollm2_exports_adapt_what_train_adapts(minilm, smollm2) -> None:
    """One check on the bundled models: a MiniLM card made with its classifier head exported and applied to
    plain AutoModel and to the classifier; SmolLM2's to its causal-LM model."""
    from layerwise.models import load_model

    base = load_model("minilm", head="base").model
    card = card_of(minilm.model, "minilm")
    sel = export.from_card(card, [0, 4], AdapterChoice(targets="q,v", ranks={4: 2}))
    config = export.peft_config(sel)
    assert config.base_model_name_or_path == "minilm"
    for model in (base, minilm.model):
        stack = find_layer_stack(model)
        expected = stack.target_names([0, 4], "q,v")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            wrapped = peft.get_peft_model(model, config)
        assert adapted_modules(wrapped) == expected
        wrapped.unload()
    card = card_of(smollm2.model, "smollm2-135m")
    sel = export.from_card(card, [7, 29], AdapterChoice(targets="all-linear"))
    wrapped = peft.get_peft_model(smollm2.model, export.peft_config(sel))
    assert adapted_modules(wrapped) == find_layer_stack(smollm2.model).target_names([7, 29], "all-linear")
    assert len(adapted_modules(wrapped)) == 14
    wrapped.unload()


def test_a_la_lora_run_exports_the_ranks_it_ended_with(tmp_path: Path) -> None:
    """La-LoRA's finished adapter has a rank_pattern keyed by escaped full names (what it trained); the export
    carries those ranks, as rank_pattern for peft."""
    from layerwise.selection.policies import Selection
    from layerwise.workflows.train import _write_selection

    model = fresh(transformers.LlamaForCausalLM, llama_config())
    final = {2: 3, 3: 5}
    peft_model = apply_adapter(model, find_layer_stack(model), [2, 3], rank=8, ranks=final)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    _write_selection(tmp_path, Selection((2, 3), "top-k", "m", {"k": 2}), AdapterChoice(adaptive=AdaptiveRanks()),
                     model_fingerprint(model, "tiny"))
    sel = export.from_run(tmp_path)
    assert sel.ranks == final and sel.adaptive is None
    assert export.peft_config(sel).rank_pattern == {rf"layers\.{i}\.self_attn\.{p}_proj": r
                                                    for i, r in final.items() for p in "qv"}


@pytest.mark.parametrize("targets", ["attn", "all-linear"])
def test_gpt2_conv1d_exports_fan_in_fan_out_and_peft_applies_it_without_a_warning(tmp_path: Path,
                                                                                   targets: str) -> None:
    """GPT-2's linears are transformers' Conv1D (weight stored (in, out)): the exported config and a suggestion's
    lora_config say fan_in_fan_out=True, so plain get_peft_model neither warns nor corrects anything, and they
    adapt exactly the chosen Conv1D modules; a Llama export keeps False."""
    import layerwise
    from transformers.pytorch_utils import Conv1D

    config = gpt2_config()
    card = card_of(fresh(transformers.GPT2LMHeadModel, config))
    assert all(lin.get("conv1d") for block in card.layers for lin in block["linears"])
    sel = export.from_card(card, SELECTED, AdapterChoice(targets=targets, ranks=RANKS))
    export.write_export(sel, "peft", tmp_path)
    loaded = peft.LoraConfig.from_pretrained(str(tmp_path))
    assert loaded.fan_in_fan_out is True
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(3, 100, (4, 10), generator=g)} for _ in range(2)]  # no labels
    suggestion = layerwise.suggest(fresh(transformers.GPT2LMHeadModel, config), batches, metric="actnorm", k=2,
                                   targets=targets)
    wanted = {"attn": {"attn.c_attn", "attn.c_proj"},
              "all-linear": {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}}[targets]
    for cls in (transformers.GPT2Model, transformers.GPT2LMHeadModel):
        for peft_config, layers in ((loaded, SELECTED), (suggestion.lora_config(), suggestion.layers)):
            model = fresh(cls, config)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                wrapped = peft.get_peft_model(model, peft_config)
            assert not [w for w in caught if "fan_in_fan_out" in str(w.message)], cls.__name__
            prefix = "transformer." if cls is transformers.GPT2LMHeadModel else ""
            expected = sorted(f"{prefix}h.{i}.{w}" for i in layers for w in wanted)  # by hand
            assert adapted_modules(wrapped) == expected, cls.__name__
            base = wrapped.get_base_model()
            assert all(isinstance(base.get_submodule(n).get_base_layer(), Conv1D) for n in expected)
            assert all(base.get_submodule(n).fan_in_fan_out for n in expected)
    assert yaml.safe_load(export.axolotl_yaml(sel))["lora_fan_in_fan_out"] is True
    llama = export.from_card(card_of(fresh(transformers.LlamaForCausalLM, llama_config())), SELECTED, AdapterChoice())
    assert export.peft_config(llama).fan_in_fan_out is False
    assert "lora_fan_in_fan_out" not in yaml.safe_load(export.axolotl_yaml(llama))


@pytest.mark.parametrize("fmt,name", [("json", "selection.json"), ("axolotl", "axolotl.yaml")])
def test_export_without_peft_imports_neither_torch_nor_transformers(tmp_path: Path, fmt: str, name: str) -> None:
    """The json and axolotl exports read a card and write text: no model, so no torch, transformers or peft
    (measured 2026-12-05 on one core: 11-15 s before, 0.7 s after). The card records the base model's prefix
    when it is made; a card without it (older) gives the same names through transformers' class lookup."""
    import os
    import subprocess
    import sys

    model = fresh(transformers.BertForSequenceClassification, bert_config())
    card = card_of(model)
    assert card.model["base_model_prefix"] == "bert"
    card.save(tmp_path / "card", plots=False)
    old = dict(card.model)
    del old["base_model_prefix"]
    LayerCard(model=old, data={}, layers=card.layers, metrics=card.metrics, probe={}).save(tmp_path / "old",
                                                                                             plots=False)
    code = ("import sys; from layerwise.cli import main; "
            f"code = main(['export', '--card', sys.argv[1], '--policy', 'top-k', '--metric', 'm', '--k', '2', '--format', '{fmt}', "
            "'--out', sys.argv[2]]); "
            "print(code, sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "card"), str(tmp_path / "new")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "0 []", proc.stderr
    assert main(["export", "--card", str(tmp_path / "old"), "--policy", "top-k", "--metric", "m", "--k", "2",
                 "--format", fmt, "--out", str(tmp_path / "looked-up")]) == 0
    new, looked_up = ((tmp_path / d / name).read_text() for d in ("new", "looked-up"))
    if fmt == "json":
        new, looked_up = (json.loads(t)["modules"] for t in (new, looked_up))
        assert "encoder.layer.3.attention.self.query" in new and not any(m.startswith("bert.") for m in new)
    assert new == looked_up
