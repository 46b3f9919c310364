"""The cost table (``layerwise.card.cost``) against hand-computed counts, peft's own trainable parameters and the
FLOPs torch counts for the same matmuls."""

from __future__ import annotations

import peft
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import LlamaConfig, LlamaForCausalLM

from layerwise.card.cost import layer_costs, selection_cost
from layerwise.models.layers import find_layer_stack, parse_targets

from tiny_models import tiny_bert

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def tiny_llama() -> torch.nn.Module:
    """Grouped-query attention: q and o are 32 -> 32, k and v 32 -> 16 (2 of 4 heads of width 8)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=50, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


def test_bert_table_hand_values() -> None:
    """hidden 32, intermediate 64, 3 blocks, rank 8 on q and v (32 -> 32 each)."""
    costs = layer_costs(find_layer_stack(tiny_bert(layers=3)), rank=8, targets=("q", "v"))
    assert costs["params"] == [2 * 8 * (32 + 32)] * 3 == [1024] * 3
    assert costs["adapter_flops"] == [6 * 1024] * 3  # 2 FLOPs per multiply-add, forward + twice for backward
    block = 2 * (4 * 32 * 32 + 32 * 64 + 64 * 32)  # q, k, v, o, intermediate, output: 16384
    assert costs["forward_flops"] == [block] * 3
    assert costs["backward_depth_flops"] == [3 * block, 2 * block, block]
    assert costs["total_flops"] == [6144 + 3 * block, 6144 + 2 * block, 6144 + block]
    # two adapters: their own FLOPs plus the depth down to the lower one, counted once
    assert selection_cost(costs, [2, 1]) == {"params": 2048, "flops": 2 * 6144 + 2 * block}
    assert selection_cost(costs, []) == {"params": 0, "flops": 0}


def test_llama_table_hand_values() -> None:
    costs = layer_costs(find_layer_stack(tiny_llama()), rank=8, targets=("q", "v"))
    assert costs["params"] == [8 * (32 + 32) + 8 * (32 + 16)] * 3 == [896] * 3
    block = 2 * (2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64)  # q, o; k, v; gate, up, down: 18432
    assert costs["forward_flops"] == [block] * 3


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_params_equal_peft_trainable_parameters(kind: str) -> None:
    for rank, targets in ((8, ("q", "v")), (4, parse_targets("all-linear"))):
        model = tiny_bert(layers=3) if kind == "bert" else tiny_llama()
        stack = find_layer_stack(model)
        costs = layer_costs(stack, rank=rank, targets=targets)
        for i in range(len(stack)):
            wrapped = peft.get_peft_model(
                tiny_bert(layers=3) if kind == "bert" else tiny_llama(),
                peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=stack.target_names([i], targets)))
            trainable = sum(p.numel() for n, p in wrapped.named_parameters() if p.requires_grad and "lora_" in n)
            assert costs["params"][i] == trainable, (kind, rank, targets, i)


def test_flops_equal_what_torch_counts_for_the_same_matmuls() -> None:
    """One token: the block's linears forward, and each q/v LoRA path forward + backward (A, B and the input)."""
    model = tiny_llama()
    stack = find_layer_stack(model)
    costs = layer_costs(stack, rank=8, targets=("q", "v"))
    for block in stack.blocks:
        with FlopCounterMode(display=False) as counter:
            for lin in block.linears:
                module = model.get_submodule(lin.name)
                module(torch.randn(1, module.in_features))
        assert costs["forward_flops"][block.index] == counter.get_total_flops()
        adapter = 0
        for lin in block.by_role(("q", "v")):
            a = torch.randn(8, lin.in_features, requires_grad=True)  # (r, in)
            b = torch.randn(lin.out_features, 8, requires_grad=True)  # (out, r)
            x = torch.randn(1, lin.in_features, requires_grad=True)
            with FlopCounterMode(display=False) as counter:
                (x @ a.T @ b.T).sum().backward()
            adapter += counter.get_total_flops()
        assert costs["adapter_flops"][block.index] == adapter
