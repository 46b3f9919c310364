"""Finding the layer stack: every supported family, peft round trips, fallbacks, overrides and errors."""

from __future__ import annotations

from dataclasses import dataclass, field

import peft
import pytest
import torch
import transformers

from layerwise.runtime.errors import ConfigError, ModelError
from layerwise.models.layers import (
    ROLES,
    TARGET_GROUPS,
    _role,
    find_layer_stack,
    parse_targets,
    unwrap_model,
)

# peft touches transformers' deprecated `is_gradient_checkpointing`: third-party noise, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTER, LAYERS = 32, 4, 2, 8, 64, 2
_IDS = {"vocab_size": 100, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
_BERTLIKE = {"hidden_size": HIDDEN, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
             "intermediate_size": INTER, "max_position_embeddings": 64, **_IDS}
_DECODER = {**_BERTLIKE, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM}

ENCODER_ROLES = {"q", "k", "v", "o", "up", "down"}
LLAMA_ROLES = {"q", "k", "v", "o", "gate", "up", "down"}
KV_OUT = KV_HEADS * HEAD_DIM
# (in_features, out_features) by role for the tiny configs above.
ENCODER_SHAPES = {"q": (HIDDEN, HIDDEN), "k": (HIDDEN, HIDDEN), "v": (HIDDEN, HIDDEN), "o": (HIDDEN, HIDDEN),
                  "up": (HIDDEN, INTER), "down": (INTER, HIDDEN)}
DECODER_SHAPES = {"q": (HIDDEN, HEADS * HEAD_DIM), "k": (HIDDEN, KV_OUT), "v": (HIDDEN, KV_OUT),
                  "o": (HEADS * HEAD_DIM, HIDDEN), "gate": (HIDDEN, INTER), "up": (HIDDEN, INTER),
                  "down": (INTER, HIDDEN)}


@dataclass
class Family:
    """A model family: its config, the model classes to build and what the stack must look like."""

    name: str
    config: str
    kwargs: dict
    variants: dict[str, str]
    """Model class name -> expected block-list path."""
    roles: set[str]
    shapes: dict[str, tuple[int, int]]
    lora_kwargs: dict = field(default_factory=dict)

    def build(self, cls_name: str) -> torch.nn.Module:
        config = getattr(transformers, self.config)(**self.kwargs)
        return getattr(transformers, cls_name)(config).eval()


def _encoder(name: str, config: str, prefix: str, base: str, head: str) -> Family:
    return Family(name, config, dict(_BERTLIKE), {base: "encoder.layer", head: f"{prefix}.encoder.layer"},
                  ENCODER_ROLES, ENCODER_SHAPES)


def _llama_like(name: str, config: str, base: str, causal: str) -> Family:
    return Family(name, config, dict(_DECODER), {base: "layers", causal: "model.layers"},
                  LLAMA_ROLES, DECODER_SHAPES)


FAMILIES = [
    _encoder("bert", "BertConfig", "bert", "BertModel", "BertForSequenceClassification"),
    _encoder("roberta", "RobertaConfig", "roberta", "RobertaModel", "RobertaForSequenceClassification"),
    _encoder("deberta-v2", "DebertaV2Config", "deberta", "DebertaV2Model", "DebertaV2ForSequenceClassification"),
    _encoder("electra", "ElectraConfig", "electra", "ElectraModel", "ElectraForSequenceClassification"),
    _encoder("mpnet", "MPNetConfig", "mpnet", "MPNetModel", "MPNetForSequenceClassification"),
    Family("distilbert", "DistilBertConfig",
           {"dim": HIDDEN, "n_layers": LAYERS, "n_heads": HEADS, "hidden_dim": INTER,
            "max_position_embeddings": 64, "vocab_size": 100, "pad_token_id": 0},
           {"DistilBertModel": "transformer.layer",
            "DistilBertForSequenceClassification": "distilbert.transformer.layer"},
           ENCODER_ROLES, ENCODER_SHAPES),
    Family("gpt2", "GPT2Config",
           {"n_embd": HIDDEN, "n_layer": LAYERS, "n_head": HEADS, "n_inner": INTER, "n_positions": 64, **_IDS},
           {"GPT2Model": "h", "GPT2LMHeadModel": "transformer.h",
            "GPT2ForSequenceClassification": "transformer.h"},
           {"qkv", "o", "up", "down"},
           {"qkv": (HIDDEN, 3 * HIDDEN), "o": (HIDDEN, HIDDEN), "up": (HIDDEN, INTER), "down": (INTER, HIDDEN)},
           lora_kwargs={"fan_in_fan_out": True}),
    _llama_like("llama", "LlamaConfig", "LlamaModel", "LlamaForCausalLM"),
    _llama_like("mistral", "MistralConfig", "MistralModel", "MistralForCausalLM"),
    _llama_like("qwen2", "Qwen2Config", "Qwen2Model", "Qwen2ForCausalLM"),
    _llama_like("qwen3", "Qwen3Config", "Qwen3Model", "Qwen3ForCausalLM"),
    _llama_like("gemma", "GemmaConfig", "GemmaModel", "GemmaForCausalLM"),
    _llama_like("gemma3", "Gemma3TextConfig", "Gemma3TextModel", "Gemma3ForCausalLM"),
    Family("phi3", "Phi3Config", dict(_BERTLIKE, num_key_value_heads=KV_HEADS),
           {"Phi3Model": "layers", "Phi3ForCausalLM": "model.layers"},
           {"qkv", "o", "gate_up", "down"},
           {"qkv": (HIDDEN, HIDDEN + 2 * KV_OUT), "o": (HIDDEN, HIDDEN), "gate_up": (HIDDEN, 2 * INTER),
            "down": (INTER, HIDDEN)}),
]
BY_NAME = {f.name: f for f in FAMILIES}
CASES = [pytest.param(fam, cls, path, id=f"{fam.name}-{cls}")
         for fam in FAMILIES for cls, path in fam.variants.items()]


def _adapted(model: torch.nn.Module) -> set[str]:
    """Full names (on the unwrapped model) of the modules that carry a LoRA adapter."""
    return {name for name, module in unwrap_model(model).named_modules() if hasattr(module, "lora_A")}


def _weight_shape(module: torch.nn.Module) -> tuple[int, int]:
    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    rows, cols = module.weight.shape  # transformers Conv1D: (in, out)
    return rows, cols


@pytest.mark.parametrize(("family", "cls_name", "path"), CASES)
def test_family_stack(family: Family, cls_name: str, path: str) -> None:
    model = family.build(cls_name)
    stack = find_layer_stack(model)
    assert stack.path == path
    assert stack.layers_pattern == path.rsplit(".", 1)[-1]
    assert stack.model_class == cls_name
    assert len(stack) == model.config.num_hidden_layers == LAYERS
    for i, block in enumerate(stack.blocks):
        assert (block.index, block.name) == (i, f"{path}.{i}")
        assert model.get_submodule(block.name) is block.module
        assert set(block.roles) == family.roles
        assert all(len(names) == 1 for names in block.roles.values())
        for lin in block.linears:
            assert _weight_shape(model.get_submodule(lin.name)) == (lin.in_features, lin.out_features)
            assert (lin.in_features, lin.out_features) == family.shapes[lin.role], lin.name
            assert stack.block_of(lin.name) == i


@pytest.mark.parametrize(("family", "cls_name", "path"), CASES)
def test_family_lora_lands_on_target_names(family: Family, cls_name: str, path: str) -> None:
    model = family.build(cls_name)
    stack = find_layer_stack(model)
    before = [block.linears for block in stack.blocks]
    names = stack.target_names(range(len(stack)), sorted(family.roles))
    assert len(names) == len(family.roles) * LAYERS
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=names, **family.lora_kwargs)
    wrapped = peft.get_peft_model(model, config)
    assert _adapted(wrapped) == set(names)
    # The wrapped model (PeftModel and its LoraModel) gives the same stack: no lora_A/lora_B, same names.
    for again in (find_layer_stack(wrapped), find_layer_stack(wrapped.base_model)):
        assert again.path == stack.path and again.model_class == cls_name
        assert [block.linears for block in again.blocks] == before
        assert again.target_names(range(len(again)), sorted(family.roles)) == names
    assert stack.block_of(f"base_model.model.{names[-1]}.lora_A.default") == LAYERS - 1


def test_lora_on_chosen_blocks_only() -> None:
    model = BY_NAME["llama"].build("LlamaForCausalLM")
    stack = find_layer_stack(model)
    names = stack.target_names([1], parse_targets("q,v"))
    assert names == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=names))
    assert _adapted(wrapped) == set(names)


def test_fused_roles_count_for_their_parts() -> None:
    gpt2 = find_layer_stack(BY_NAME["gpt2"].build("GPT2LMHeadModel")).blocks[0]
    assert [lin.name for lin in gpt2.by_role(["q", "v"])] == ["transformer.h.0.attn.c_attn"]
    assert [lin.role for lin in gpt2.by_role(TARGET_GROUPS["attn"])] == ["qkv", "o"]
    assert [lin.role for lin in gpt2.by_role(["gate"])] == []
    phi3 = find_layer_stack(BY_NAME["phi3"].build("Phi3ForCausalLM")).blocks[1]
    assert [lin.name for lin in phi3.by_role(["up"])] == ["model.layers.1.mlp.gate_up_proj"]
    assert [lin.name for lin in phi3.by_role(["gate"])] == ["model.layers.1.mlp.gate_up_proj"]
    assert [lin.role for lin in phi3.by_role("mlp")] == ["gate_up", "down"]
    llama = find_layer_stack(BY_NAME["llama"].build("LlamaModel")).blocks[0]
    assert [lin.role for lin in llama.by_role(["qkv"])] == ["q", "k", "v"]
    assert [lin.role for lin in llama.by_role(["gate_up"])] == ["gate", "up"]


def test_target_names_and_by_role_reject_bad_input() -> None:
    stack = find_layer_stack(BY_NAME["bert"].build("BertModel"))
    with pytest.raises(ConfigError, match=r"out of range.*2 blocks"):
        stack.target_names([0, 5], ["q"])
    with pytest.raises(ConfigError, match="query"):
        stack.blocks[0].by_role(["query"])
    assert stack.target_names([], ["q"]) == []
    assert stack.target_names([1, 0, 1], "q") == ["encoder.layer.0.attention.self.query",
                                                  "encoder.layer.1.attention.self.query"]
    assert stack.block_of("embeddings.word_embeddings") is None
    assert stack.block_of("encoder.layer.7.output.dense") is None


# Generic fallback, --layers-path and errors on custom modules.


class _Block(torch.nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        linear = torch.nn.Linear
        self.attn = torch.nn.ModuleDict({"q_proj": linear(width, width), "o_proj": linear(width, width)})
        self.mlp = torch.nn.Sequential(linear(width, 2 * width), torch.nn.GELU(), linear(2 * width, width))


class _Custom(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 8)
        self.mixed = torch.nn.ModuleList([torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8),
                                          torch.nn.Linear(8, 8), torch.nn.ReLU()])
        self.stages = torch.nn.ModuleList([_Block() for _ in range(3)])
        self.twins = torch.nn.ModuleList([_Block() for _ in range(3)])
        self.heads = torch.nn.ModuleList([torch.nn.Linear(8, 2) for _ in range(2)])


def test_generic_fallback_longest_uniform_list_first_on_tie() -> None:
    stack = find_layer_stack(_Custom())
    assert (stack.path, len(stack), stack.layers_pattern, stack.model_class) == ("stages", 3, "stages", "_Custom")
    block = stack.blocks[2]
    assert block.roles == {"q": ["stages.2.attn.q_proj"], "o": ["stages.2.attn.o_proj"],
                           "other": ["stages.2.mlp.0", "stages.2.mlp.2"]}
    assert [(lin.in_features, lin.out_features) for lin in block.by_role(["other"])] == [(8, 16), (16, 8)]


def test_layers_path_overrides_the_search() -> None:
    assert find_layer_stack(_Custom(), layers_path="twins").path == "twins"
    heads = find_layer_stack(_Custom(), layers_path="heads")
    assert len(heads) == 2 and heads.blocks[0].linears == []
    bert = BY_NAME["bert"].build("BertForSequenceClassification")
    assert find_layer_stack(bert, layers_path="bert.encoder.layer").path == "bert.encoder.layer"


@pytest.mark.parametrize(("path", "found"), [("bert.encoder.nope", "does not exist"),
                                              ("bert.encoder", "BertEncoder"),
                                              ("bert.encoder.layer.0", "BertLayer")])
def test_bad_layers_path_names_the_path(path: str, found: str) -> None:
    bert = BY_NAME["bert"].build("BertForSequenceClassification")
    with pytest.raises(ModelError, match=rf"--layers-path '{path}'.*{found}.*bert\.encoder\.layer"):
        find_layer_stack(bert, layers_path=path)


def test_no_blocks_names_class_and_override() -> None:
    flat = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ModelError, match=r"Sequential.*--layers-path"):
        find_layer_stack(flat)


# --targets


@pytest.mark.parametrize(("spec", "roles"), [
    ("q,v", ("q", "v")),
    ("attn", ("q", "k", "v", "o", "qkv")),
    ("mlp", ("gate", "up", "down", "gate_up")),
    ("all-linear", ROLES),
    (" q , k,q ,gate_up ", ("q", "k", "gate_up")),
    ("down", ("down",)),
])
def test_parse_targets(spec: str, roles: tuple[str, ...]) -> None:
    assert parse_targets(spec) == roles


@pytest.mark.parametrize("spec", ["", ",", "query", "q,foo", "other", "ATTN", "all"])
def test_parse_targets_rejects_unknown(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"--targets.*all-linear.*gate_up"):
        parse_targets(spec)


@pytest.mark.parametrize(("rel", "role"), [
    ("attention.self.query", "q"), ("attention.output.dense", "o"), ("intermediate.dense", "up"),
    ("output.dense", "down"), ("attn.c_proj", "o"), ("mlp.c_proj", "down"), ("self_attn.dense", "o"),
    ("attention.attn.o", "o"), ("ffn.lin2", "down"), ("mlp.Wqkv", "qkv"), ("pooler.dense", "other"),
    ("proj.c_proj", "other"), ("mlp.gate", "other"),
])
def test_role_disambiguation(rel: str, role: str) -> None:
    assert _role(rel) == role


# Real bundled models.


@pytest.mark.slow
def test_minilm_stack(minilm) -> None:
    cfg = minilm.model.config
    stack = find_layer_stack(minilm.model)
    assert (stack.path, len(stack)) == ("bert.encoder.layer", 6)
    shapes = {"q": (cfg.hidden_size,) * 2, "k": (cfg.hidden_size,) * 2, "v": (cfg.hidden_size,) * 2,
              "o": (cfg.hidden_size,) * 2, "up": (cfg.hidden_size, cfg.intermediate_size),
              "down": (cfg.intermediate_size, cfg.hidden_size)}
    for block in stack.blocks:
        assert {lin.role: (lin.in_features, lin.out_features) for lin in block.linears} == shapes


@pytest.mark.slow
def test_smollm2_stack(smollm2) -> None:
    cfg = smollm2.model.config
    assert (cfg.hidden_size, cfg.num_key_value_heads) == (576, 3)
    stack = find_layer_stack(smollm2.model)
    assert (stack.path, len(stack), stack.layers_pattern) == ("model.layers", 30, "layers")
    kv_out = cfg.num_key_value_heads * cfg.hidden_size // cfg.num_attention_heads
    assert kv_out == 192
    shapes = {"q": (576, 576), "k": (576, kv_out), "v": (576, kv_out), "o": (576, 576),
              "gate": (576, cfg.intermediate_size), "up": (576, cfg.intermediate_size),
              "down": (cfg.intermediate_size, 576)}
    for block in stack.blocks:
        assert {lin.role: (lin.in_features, lin.out_features) for lin in block.linears} == shapes
    assert stack.target_names([29], "q,v") == [
        "model.layers.29.self_attn.q_proj", "model.layers.29.self_attn.v_proj"]
