"""Gradient checkpointing of the adapted blocks only: the frozen prefix stays out of autograd."""

from __future__ import annotations

import pytest
import torch
import transformers

from layerwise.models.layers import find_layer_stack
import layerwise
from layerwise.train.prefix.recompute import input_grads_enabled, prepare_gradient_checkpointing

pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
              pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
              pytest.mark.usefixtures("one_thread")]

LAYERS, TOP = 6, [4, 5]


def top2_llama():
    """A seeded tiny Llama (attention dropout 0.1, so the recompute must repeat the dropout masks) with LoRA
    on q, v of its top two blocks, in training mode."""
    import peft

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                      attention_dropout=0.1, pad_token_id=0)
    base = transformers.LlamaForCausalLM(config)
    lora = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                           layers_to_transform=TOP, init_lora_weights=False)  # B != 0: every factor gets a gradient
    return peft.get_peft_model(base, lora).train()


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 128, (4, 16), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def step(model) -> tuple[dict[str, torch.Tensor], list[int], list[int]]:
    """One forward + backward from a fixed RNG state: (gradients of the trainable parameters, backward calls per
    block, forward calls of each block's attention module, which a recompute calls again)."""
    blocks = find_layer_stack(model).blocks
    backward, forward = [0] * len(blocks), [0] * len(blocks)
    handles = []
    for b in blocks:
        handles.append(b.module.register_full_backward_hook(
            lambda m, gi, go, i=b.index: backward.__setitem__(i, backward[i] + 1)))
        handles.append(b.module.self_attn.register_forward_hook(
            lambda m, a, o, i=b.index: forward.__setitem__(i, forward[i] + 1)))
    torch.manual_seed(7)
    model.zero_grad(set_to_none=True)
    model(**batch()).loss.backward()
    for h in handles:
        h.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return grads, backward, forward


def test_checkpointing_a_top2_selection_touches_no_block_below_it_and_keeps_the_gradients() -> None:
    model = top2_llama()
    plain, backward, forward = step(model)
    assert backward == [0, 0, 0, 0, 1, 1] and forward == [1] * LAYERS
    handle = prepare_gradient_checkpointing(model)
    assert handle.blocks == TOP and handle.lowest == 4 and not handle.removed_input_grads
    grads, backward, forward = step(model)
    assert backward == [0, 0, 0, 0, 1, 1]  # the frozen prefix never enters the backward
    assert forward == [1, 1, 1, 1, 2, 2]  # the adapted blocks are recomputed in the backward: checkpointed
    assert set(grads) == set(plain) and len(grads) == 8
    for name, g in grads.items():
        torch.testing.assert_close(g, plain[name], rtol=1e-5, atol=1e-7, msg=name)
    handle.remove()
    assert step(model)[2] == [1] * LAYERS and model.config.use_cache is True


def test_input_grads_enabled_below_the_lowest_adapter_are_removed_with_a_warning() -> None:
    model = top2_llama()
    plain = step(model)[0]
    model.enable_input_require_grads()  # what gradient_checkpointing=True in the Trainer / TRL does
    assert input_grads_enabled(model)
    backward = step(model)[1]
    assert backward == [1] * LAYERS  # every frozen block below the adapters now runs its backward
    with pytest.warns(UserWarning, match="lowest adapter is on block 4: the backward would run through the 4 frozen"):
        handle = layerwise.prepare_gradient_checkpointing(model)  # the public helper
    assert handle.removed_input_grads and not input_grads_enabled(model)
    grads, backward, _ = step(model)
    assert backward == [0, 0, 0, 0, 1, 1]
    for name, g in grads.items():
        torch.testing.assert_close(g, plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_a_trained_embedding_keeps_its_input_grads() -> None:
    model = top2_llama()
    model.get_input_embeddings().weight.requires_grad_(True)
    model.enable_input_require_grads()
    handle = prepare_gradient_checkpointing(model)
    assert not handle.removed_input_grads and input_grads_enabled(model)


def test_the_training_loop_with_gradient_checkpointing_ends_with_the_same_adapter(tokenizer, tmp_path) -> None:
    import random

    import peft

    from layerwise.data import load_task
    from layerwise.train import TrainConfig, train
    from tests.tiny_models import tiny_bert

    data = load_task("rotten-tomatoes")
    rng = random.Random(0)
    train_ex, dev_ex = rng.sample(data.train, 48), rng.sample(data.dev, 16)
    adapters = {}
    for on in (False, True):
        lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.1,
                               target_modules=["query", "value"], layers_to_transform=[2, 3])
        model = peft.get_peft_model(tiny_bert(tokenizer.vocab_size, layers=4), lora)
        cfg = TrainConfig(steps=4, lr=5e-3, batch_size=8, max_length=32, gradient_checkpointing=on)
        train(model, tokenizer, data.task, train_ex, dev_ex, cfg, tmp_path / str(on), show_progress=False)
        adapters[on] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        if on:  # the loop checkpointed blocks 2 and 3 only
            wrapped = [b.index for b in find_layer_stack(model).blocks if "forward" in vars(b.module)]
            assert wrapped == [2, 3]
    assert set(adapters[True]) == set(adapters[False])
    for name, value in adapters[True].items():
        torch.testing.assert_close(value, adapters[False][name], rtol=1e-5, atol=1e-6, msg=name)


def test_the_helper_in_a_hugging_face_trainer_keeps_the_prefix_out_of_the_backward(tmp_path) -> None:
    """The README's recipe: checkpointing left off in the Trainer's arguments, the helper on the
    model; the Trainer's steps recompute the adapted blocks and never run a backward below them."""
    model = top2_llama()
    model.enable_input_require_grads()  # as a model prepared for kbit / TRL training arrives
    with pytest.warns(UserWarning, match="input grads enabled"):
        layerwise.prepare_gradient_checkpointing(model)
    blocks = find_layer_stack(model).blocks
    backward, forward = [0] * LAYERS, [0] * LAYERS
    for b in blocks:
        b.module.register_full_backward_hook(lambda m, gi, go, i=b.index: backward.__setitem__(i, backward[i] + 1))
        b.module.self_attn.register_forward_hook(lambda m, a, o, i=b.index: forward.__setitem__(i, forward[i] + 1))
    rows = [{k: v[i] for k, v in batch().items()} for i in range(4)]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                                          report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                                          seed=0)  # activation (gradient) checkpointing off: the default
    transformers.Trainer(model=model, args=args, train_dataset=rows).train()
    assert backward == [0, 0, 0, 0, 2, 2]  # one backward per step, adapted blocks only
    assert forward == [2, 2, 2, 2, 4, 4]  # each step recomputes the adapted blocks once
