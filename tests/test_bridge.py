"""The adapter bridge: every registered peft method lands on exactly the selected modules, per-layer
ranks, target groups, fused layers, save/load round trips, verification and flag-naming errors."""

from __future__ import annotations

import copy
import re
import warnings

import peft
import pytest
import torch
import transformers
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import ModulesToSaveWrapper

from layerwise.adapters import bridge
from layerwise.adapters.bridge import (
    METHODS,
    AdapterMethod,
    AdapterMismatchError,
    adapted_modules,
    apply_adapter,
    build_peft_config,
    expected_adapter_modules,
    register_method,
    task_type_for,
    verify_adapted,
)
from layerwise.runtime.errors import ConfigError, LayerwiseError
from layerwise.models.layers import find_layer_stack

# peft touches transformers' deprecated `is_gradient_checkpointing`: third-party noise, not ours.
_GC_WARNING = "`is_gradient_checkpointing` is deprecated"
pytestmark = pytest.mark.filterwarnings(f"ignore:{_GC_WARNING}:FutureWarning")

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, LAYERS = 32, 4, 2, 8, 64, 4
_IDS = {"vocab_size": 100, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
INPUT_IDS = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5]])
SELECTED = [1, 3]
RANKED = [name for name, method in METHODS.items() if method.supports_ranks]
UNRANKED = sorted(name for name, method in METHODS.items() if not method.supports_ranks)
LORA_FAMILY = {"lora", "dora", "rslora", "pissa"}
RSLORA = {"rslora"}
CONV1D_UNSUPPORTED = {"loha", "lokr"}
"""peft's LyCORIS layers take torch Linear/Conv only, not transformers' Conv1D (GPT-2)."""
NOT_RELOADABLE = {"pissa"}
"""PiSSA moves the top singular directions out of the base weights: a fresh base is not its base."""


def bert(num_layers: int = LAYERS) -> torch.nn.Module:
    config = transformers.BertConfig(hidden_size=HIDDEN, num_hidden_layers=num_layers, num_attention_heads=HEADS,
                                     intermediate_size=INTER, max_position_embeddings=64, **_IDS)
    return transformers.BertForSequenceClassification(config).eval()


def llama(num_layers: int = LAYERS) -> torch.nn.Module:
    config = transformers.LlamaConfig(hidden_size=HIDDEN, num_hidden_layers=num_layers, num_attention_heads=HEADS,
                                      num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM, intermediate_size=INTER,
                                      max_position_embeddings=64, **_IDS)
    return transformers.LlamaForCausalLM(config).eval()


def gpt2(num_layers: int = LAYERS) -> torch.nn.Module:
    config = transformers.GPT2Config(n_embd=HIDDEN, n_layer=num_layers, n_head=HEADS, n_inner=INTER,
                                     n_positions=64, **_IDS)
    return transformers.GPT2LMHeadModel(config).eval()


MODELS = {"bert": bert, "llama": llama, "gpt2": gpt2}
# Names (relative to the block) of the q and v projections.
QV = {"bert": ["attention.self.query", "attention.self.value"],
      "llama": ["self_attn.q_proj", "self_attn.v_proj"],
      "gpt2": ["attn.c_attn"]}
PATHS = {"bert": "bert.encoder.layer", "llama": "model.layers", "gpt2": "transformer.h"}


def _wrap(family: str, method: str = "lora", layers=SELECTED, **kwargs):
    """(peft model, layer stack, untouched copy of the base model)."""
    model = MODELS[family]()
    fresh = copy.deepcopy(model)
    stack = find_layer_stack(model)
    kwargs.setdefault("total_steps", 10)
    return apply_adapter(model, stack, layers, method=method, **kwargs), stack, fresh


def _adapter_params(peft_model: torch.nn.Module) -> set[int]:
    """ids of the adapter parameters of every peft tuner layer (found by module type, not by name)."""
    out: set[int] = set()
    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names:
                part = getattr(module, attr, None)
                if isinstance(part, torch.nn.Module):
                    out.update(id(p) for p in part.parameters())
    return out


def _head_params(peft_model: torch.nn.Module) -> set[int]:
    """ids of the trainable copies peft keeps for ``modules_to_save`` (the classifier head)."""
    return {id(p) for module in peft_model.modules() if isinstance(module, ModulesToSaveWrapper)
            for p in module.modules_to_save.parameters()}


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=INPUT_IDS).logits


def _perturb_trainable(model: torch.nn.Module) -> None:
    """Move every trainable parameter off its initial value (LoRA's B = 0 would make any reload trivially right)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))


# Every registered method.


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_every_method_adapts_exactly_the_selection(family: str, method: str) -> None:
    if family == "gpt2" and method in CONV1D_UNSUPPORTED:
        with pytest.raises(ConfigError, match=rf"--method {method} .*--targets 'q,v'.*Conv1D"):
            _wrap(family, method)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # peft must not have to correct or ignore anything in our config
        warnings.filterwarnings("ignore", re.escape(_GC_WARNING), FutureWarning)
        peft_model, stack, _ = _wrap(family, method)
    expected = [f"{PATHS[family]}.{i}.{rel}" for i in SELECTED for rel in QV[family]]
    assert expected_adapter_modules(stack, SELECTED, "q,v") == expected
    assert adapted_modules(peft_model) == expected
    assert find_layer_stack(peft_model).path == stack.path
    logits = _logits(peft_model)
    assert logits.shape[0] == 2 and torch.isfinite(logits).all()
    trainable = {id(p) for p in peft_model.parameters() if p.requires_grad}
    adapter, head = _adapter_params(peft_model), _head_params(peft_model)
    assert trainable & adapter, "no adapter parameter is trainable"
    assert trainable <= adapter | head, "a base-model parameter is trainable"
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) > 0
    config = peft_model.peft_config["default"]
    assert config.task_type == task_type_for(peft_model)
    if family == "bert":  # SEQ_CLS: peft trains the classifier head too
        assert config.task_type == "SEQ_CLS" and head and head <= trainable
    else:
        assert config.task_type == "CAUSAL_LM" and not head


@pytest.mark.parametrize("method", sorted(METHODS))
def test_config_records_the_selection(method: str) -> None:
    stack = find_layer_stack(llama())
    config = build_peft_config(stack, [3, 1, 3], method=method, total_steps=10)
    assert isinstance(config, peft.PeftConfig)
    assert set(config.target_modules) == set(expected_adapter_modules(stack, SELECTED, "q,v"))
    if hasattr(config, "layers_to_transform"):
        assert config.layers_to_transform == SELECTED and config.layers_pattern == "layers"


# Per-layer ranks.


@pytest.mark.parametrize("alpha", [None, 16.0])
@pytest.mark.parametrize("method", RANKED)
def test_per_layer_ranks(method: str, alpha: float | None) -> None:
    ranks = {1: 4, 3: 2}  # block 0 keeps --rank 8
    peft_model, stack, _ = _wrap("llama", method, layers=[0, 1, 3], rank=8, ranks=ranks, alpha=alpha)
    want = {0: 8, **ranks}
    names = adapted_modules(peft_model)
    assert names == expected_adapter_modules(stack, [0, 1, 3], "q,v")
    for name in names:
        module = peft_model.get_base_model().get_submodule(name)
        r = want[stack.block_of(name)]
        a = alpha if alpha is not None else 2.0 * r  # default: alpha/r = 2 in every block
        assert module.r["default"] == r
        assert module.scaling["default"] == pytest.approx(a / r ** 0.5 if method in RSLORA else a / r)
        in_features = module.get_base_layer().in_features
        if method in LORA_FAMILY:
            assert module.lora_A["default"].weight.shape == (r, in_features)
        if method == "loha":
            assert module.hada_w1_b["default"].shape == (r, in_features)


def test_rank_pattern_keys_do_not_leak_to_other_layers() -> None:
    # `layers.1.` is a prefix of `layers.11.`: the keys are escaped full names, so each matches one module.
    stack = find_layer_stack(model := llama(12))
    peft_model = apply_adapter(model, stack, [1, 11], ranks={1: 4}, rank=2)
    config = peft_model.peft_config["default"]
    assert set(config.rank_pattern) == {re.escape(f"model.layers.1.self_attn.{p}") for p in ("q_proj", "v_proj")}
    ranks = {name: peft_model.get_base_model().get_submodule(name).r["default"]
             for name in adapted_modules(peft_model)}
    assert ranks == {"model.layers.1.self_attn.q_proj": 4, "model.layers.1.self_attn.v_proj": 4,
                     "model.layers.11.self_attn.q_proj": 2, "model.layers.11.self_attn.v_proj": 2}


# Target groups and fused layers.


@pytest.mark.parametrize(("targets", "rels"), [
    ("attn", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]),
    ("mlp", ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    ("all-linear", ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
    (["k", "mlp"], ["self_attn.k_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]),
])
@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_target_groups_on_llama(method: str, targets, rels: list[str]) -> None:
    peft_model, _, _ = _wrap("llama", method, targets=targets)
    assert adapted_modules(peft_model) == [f"model.layers.{i}.{rel}" for i in SELECTED for rel in rels]
    if method == "ia3":  # MLP layers are scaled on their input side, the others on their output side
        for name in adapted_modules(peft_model):
            module = peft_model.get_base_model().get_submodule(name)
            assert module.is_feedforward == (".mlp." in name), name
    assert torch.isfinite(_logits(peft_model)).all()


@pytest.mark.parametrize(("targets", "rels"), [
    ("q,v", ["attn.c_attn"]), ("qkv", ["attn.c_attn"]), ("mlp", ["mlp.c_fc", "mlp.c_proj"]),
    ("all-linear", ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
])
def test_gpt2_fused_conv1d(targets: str, rels: list[str]) -> None:
    peft_model, stack, _ = _wrap("gpt2", targets=targets)
    assert adapted_modules(peft_model) == [f"transformer.h.{i}.{rel}" for i in SELECTED for rel in rels]
    assert peft_model.peft_config["default"].fan_in_fan_out is True  # Conv1D stores weights (in, out)
    assert torch.isfinite(_logits(peft_model)).all()


# Save and reload.


@pytest.mark.parametrize(("family", "method", "ranks"), [
    pytest.param("llama", "lora", {1: 4, 3: 2}, id="llama-lora-ranks"),
    pytest.param("bert", "lora", {1: 2}, id="bert-lora-ranks"),
    *[pytest.param("bert", m, None, id=f"bert-{m}") for m in sorted(set(METHODS) - NOT_RELOADABLE)],
    pytest.param("llama", "dora", {3: 2}, id="llama-dora-ranks"),
    pytest.param("llama", "loha", {1: 2}, id="llama-loha-ranks"),
    pytest.param("llama", "ia3", None, id="llama-ia3"),
    pytest.param("llama", "vera", None, id="llama-vera"),
])
def test_save_and_reload_reproduces_outputs(family: str, method: str, ranks, tmp_path) -> None:
    peft_model, _, fresh = _wrap(family, method, ranks=ranks)
    _perturb_trainable(peft_model)
    peft_model.eval()
    want = _logits(peft_model)
    assert not torch.allclose(want, _logits(fresh), atol=1e-4), "the adapter must change the outputs"
    peft_model.save_pretrained(tmp_path)
    loaded = peft.PeftModel.from_pretrained(fresh, tmp_path).eval()
    assert adapted_modules(loaded) == adapted_modules(peft_model)
    torch.testing.assert_close(_logits(loaded), want, atol=1e-5, rtol=0)


# Verification.


def test_verify_adapted_lists_missing_and_unexpected() -> None:
    peft_model, stack, _ = _wrap("llama")
    expected = expected_adapter_modules(stack, SELECTED, "q,v")
    verify_adapted(peft_model, expected)
    extra = "model.layers.2.self_attn.q_proj"
    with pytest.raises(AdapterMismatchError, match=r"missing: \['model\.layers\.2\.self_attn\.q_proj'\]; "
                                                    r"unexpected: none") as info:
        verify_adapted(peft_model, [*expected, extra])
    assert isinstance(info.value, LayerwiseError)
    with pytest.raises(AdapterMismatchError, match=r"missing: \['model\.layers\.2\.self_attn\.q_proj'\]; "
                                                   r"unexpected: \['model\.layers\.1\.self_attn\.q_proj'\]"):
        verify_adapted(peft_model, [*expected[1:], extra])


def test_apply_adapter_catches_a_config_that_misses_modules(monkeypatch) -> None:
    def drops_last(spec, **kwargs) -> peft.PeftConfig:  # what a too-narrow peft pattern does silently
        return peft.LoraConfig(r=spec.rank, target_modules=list(spec.target_modules[:-1]))

    monkeypatch.setitem(METHODS, "lora", AdapterMethod("lora", drops_last, True, "drops one target"))
    with pytest.raises(AdapterMismatchError, match=r"missing: \['model\.layers\.3\.self_attn\.v_proj'\]"):
        _wrap("llama")


def test_adapted_modules_of_a_plain_model_is_empty() -> None:
    assert adapted_modules(llama()) == []


# Registry and task types.


def test_register_method_adds_and_refuses_duplicates(monkeypatch) -> None:
    monkeypatch.setattr(bridge, "METHODS", dict(METHODS))

    @register_method("lora-rank1", supports_ranks=False, description="test only")
    def _rank1(spec, **kwargs) -> peft.PeftConfig:
        return peft.LoraConfig(r=1, target_modules=list(spec.target_modules))

    assert bridge.METHODS["lora-rank1"] == AdapterMethod("lora-rank1", _rank1, False, "test only")
    stack = find_layer_stack(model := llama())
    peft_model = bridge.apply_adapter(model, stack, [2], method="lora-rank1")
    assert adapted_modules(peft_model) == ["model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.v_proj"]
    with pytest.raises(ValueError, match="already registered"):
        register_method("lora", supports_ranks=True, description="again")(_rank1)


def test_registry_entries_are_described() -> None:
    assert {"lora", "dora", "rslora", "pissa", "loha", "lokr", "vera", "ia3", "adalora"} <= set(METHODS)
    for name, method in METHODS.items():
        assert method.name == name and method.description and callable(method.build)


@pytest.mark.parametrize(("build", "task"), [
    (bert, "SEQ_CLS"), (llama, "CAUSAL_LM"), (gpt2, "CAUSAL_LM"),
    (lambda: transformers.BertModel(bert().config), "FEATURE_EXTRACTION"),
])
def test_task_type_for(build, task: str) -> None:
    model = build()
    assert task_type_for(model) == task
    stack = find_layer_stack(model)
    assert task_type_for(peft.get_peft_model(model, build_peft_config(stack, [0]))) == task


# Errors name their flag.


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"method": "nope"}, r"--method 'nope' is unknown; allowed: lora, dora, rslora, pissa, loha, lokr, vera, ia3"),
    ({"layers": []}, r"--layers: the layer selection is empty"),
    ({"layers": [1, 4]}, r"--layers: index\(es\) \[4\] out of range; LlamaForCausalLM has 4 blocks \(0\.\.3\)"),
    ({"layers": [-1]}, r"--layers: index\(es\) \[-1\] out of range"),
    ({"rank": 0}, r"--rank must be >= 1, got 0"),
    ({"ranks": {2: 4}}, r"--ranks gives ranks for layer\(s\) \[2\] that are not selected \(\[1, 3\]\)"),
    ({"ranks": {1: 0}}, r"--ranks: every rank must be >= 1"),
    ({"targets": "query"}, r"--targets 'query'.*allowed values"),
    ({"targets": ["q", "nope"]}, r"--targets: unknown role 'nope'"),
    ({"targets": "gate", "family": "bert"}, r"--targets 'gate' matches no linear layer in blocks \[1, 3\] of "
                                            r"BertForSequenceClassification; roles present there: down, k, o"),
    ({"alpha": 0}, r"--alpha must be > 0"),
    ({"dropout": 1.0}, r"--dropout must be in \[0, 1\)"),
    ({"method": "adalora", "total_steps": None}, r"--method adalora needs .*--steps"),
    ({"method": "vera", "alpha": 4.0}, r"--alpha 4\.0 is not used by --method vera"),
    ({"method": "ia3", "dropout": 0.1}, r"--dropout 0\.1 is not supported by --method ia3"),
    ({"method": "lora", "bogus": 1}, r"--method lora: peft rejects the configuration.*bogus"),
    ({"method": "adalora", "tinit": 9}, r"--method adalora: peft rejects the configuration"),
])
def test_errors_name_the_flag(kwargs: dict, pattern: str) -> None:
    kwargs = {"layers": SELECTED, "total_steps": 10, **kwargs}
    model = MODELS[kwargs.pop("family", "llama")]()
    stack = find_layer_stack(model)
    layers = kwargs.pop("layers")
    with pytest.raises(ConfigError, match=pattern):
        build_peft_config(stack, layers, **kwargs)
    with pytest.raises(ConfigError, match=pattern):
        apply_adapter(model, stack, layers, **kwargs)


@pytest.mark.parametrize("method", UNRANKED)
def test_per_layer_ranks_refused_where_unsupported(method: str) -> None:
    stack = find_layer_stack(llama())
    with pytest.raises(ConfigError, match=rf"--ranks: per-layer ranks are not supported by --method {method}; "
                                          rf"methods with per-layer ranks: {', '.join(RANKED)}"):
        build_peft_config(stack, SELECTED, method=method, ranks={1: 4}, total_steps=10)


def test_method_that_cannot_take_the_targets_names_method_and_targets() -> None:
    with pytest.raises(ConfigError, match=r"--method loha cannot be applied to --targets 'mlp' of GPT2LMHeadModel "
                                          r"\(4 modules, e\.g\. transformer\.h\.1\.mlp\.c_fc\): .*Conv1D"):
        _wrap("gpt2", "loha", targets="mlp")
