"""The GPU path (pytest marker ``gpu``; skipped without CUDA): a bf16 card, mixed-precision training with
gradient checkpointing, float16 loss scaling, the prefix cache and 4-bit loading. Run them on a machine with a
GPU: ``python -m pytest -m gpu``."""

from __future__ import annotations

import random

import pytest
import torch

from layerwise.models.layers import find_layer_stack
from numerics import assert_tensors_within_fp32_spread

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
              pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")]

CUDA = torch.device("cuda")


def _bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


@pytest.fixture(scope="module")
def rt():
    from layerwise.data import load_task

    data = load_task("rotten-tomatoes")
    rng = random.Random(0)
    return data.task, rng.sample(data.train, 64), rng.sample(data.dev, 16)


def _peft_bert(vocab: int, layers: list[int], dtype: torch.dtype):
    import peft

    from tests.tiny_models import tiny_bert

    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"],
                           layers_to_transform=layers)
    return peft.get_peft_model(tiny_bert(vocab, layers=4).to(device=CUDA, dtype=dtype), lora)


def test_dtype_auto_is_bf16_on_a_gpu_that_has_it() -> None:
    from layerwise.models.precision import resolve_dtype

    assert resolve_dtype("auto", "cuda") == ("bfloat16" if _bf16() else "float32")
    assert resolve_dtype("float16", "cuda") == "float16"


@pytest.mark.skipif(not _bf16(), reason="needs bf16 (compute capability 8.0+)")
def test_bf16_card_on_the_gpu_ranks_like_fp32_with_float64_statistics() -> None:
    from scipy.stats import kendalltau

    from layerwise.card.profiling import profile_layers
    from layerwise.card.probe.runner import run_probe
    from tests.test_precision import RANKED, _batches, distinct_blocks, tiny_llama

    batches = [{k: v.to(CUDA) for k, v in b.items()} for b in _batches(1, causal=True)]
    model = distinct_blocks(tiny_llama()).eval().to(CUDA)
    fp32 = profile_layers(model, batches, ",".join(RANKED), name="t", show_progress=False, n_boot=20, device=CUDA)
    model.to(torch.bfloat16)
    bf16 = profile_layers(model, batches, ",".join(RANKED), name="t", show_progress=False, n_boot=20, device=CUDA)
    assert bf16.probe["model_dtype"] == "bfloat16" and bf16.probe["peak_memory"] > 0
    for name in RANKED:
        assert kendalltau(fp32.values(name), bf16.values(name)).statistic >= 0.85, name
    result = run_probe(model, find_layer_stack(model), batches[:2], ["input_cov", "param_grad"], show_progress=False,
                       device=CUDA)
    assert result.stats.input_cov[0].centred().dtype == torch.float64
    assert all(t.dtype == torch.float64 for t in result.stats.grad_sq)


@pytest.mark.skipif(not _bf16(), reason="needs bf16 (compute capability 8.0+)")
def test_bf16_training_with_checkpointing_on_the_gpu(tokenizer, rt, tmp_path) -> None:
    from layerwise.train import TrainConfig, train

    results = {}
    for on in (False, True):
        torch.manual_seed(0)
        model = _peft_bert(tokenizer.vocab_size, [2, 3], torch.bfloat16)
        # batches of 32 x 64 tokens: the activations of blocks 2-3 dominate the step's allocations
        cfg = TrainConfig(steps=4, lr=5e-3, batch_size=32, max_length=64, gradient_checkpointing=on,
                          prefix_cache="off")
        results[on] = train(model, tokenizer, *rt, cfg, tmp_path / str(on), show_progress=False)
        trained = [p for p in model.parameters() if p.requires_grad]
        assert trained and all(p.dtype == torch.float32 and p.is_cuda for p in trained)
        assert all(p.dtype == torch.bfloat16 for p in model.parameters() if not p.requires_grad)
    import json

    metrics = json.loads((tmp_path / "True" / "metrics.json").read_text())
    assert metrics["memory_kind"] == "cuda_allocated"
    assert results[True].peak_memory <= results[False].peak_memory  # activations of blocks 2-3 not kept
    assert results[True].final_metrics.keys() == results[False].final_metrics.keys()


def test_float16_training_scales_the_loss_and_checkpoints_the_scale(tokenizer, rt, tmp_path) -> None:
    from layerwise.train import TrainConfig, train

    model = _peft_bert(tokenizer.vocab_size, [3], torch.float16)
    cfg = TrainConfig(steps=4, lr=5e-3, batch_size=8, max_length=32, prefix_cache="off")
    result = train(model, tokenizer, *rt, cfg, tmp_path / "fp16", show_progress=False)
    assert result.steps == 4
    assert (tmp_path / "fp16" / "checkpoint" / "callbacks.pt").exists()  # the GradScaler's state (LossScaling)
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)


def test_prefix_cache_on_the_gpu_matches_the_recomputed_prefix(tokenizer, rt, tmp_path) -> None:
    from layerwise.train import TrainConfig, train

    adapters = {}
    for mode, dtype in (("off", torch.float32), ("memory", torch.float32), ("f64", torch.float64)):
        torch.manual_seed(0)
        model = _peft_bert(tokenizer.vocab_size, [3], dtype)
        cfg = TrainConfig(steps=12, lr=5e-3, batch_size=8, max_length=32, eval_every=6,
                          prefix_cache="off" if mode == "f64" else mode)
        result = train(model, tokenizer, *rt, cfg, tmp_path / mode, show_progress=False)
        assert result.prefix_cache["used"] == (mode == "memory")
        adapters[mode] = {n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad}
    # as close to the float64 run as the fp32 run without the cache (tests/numerics.py)
    assert_tensors_within_fp32_spread(adapters["memory"], adapters["off"], adapters["f64"])


def test_4bit_loading_trains_lora_on_top(tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    from layerwise.adapters.bridge import apply_adapter
    from layerwise.models.precision import quantization_config
    from tests.test_precision import tiny_llama

    tiny_llama(layers=2).save_pretrained(tmp_path / "tiny")
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "tiny", quantization_config=quantization_config("4bit", "bfloat16"), device_map={"": "cuda"})
    stack = find_layer_stack(model)
    peft_model = apply_adapter(model, stack, [1], method="lora", targets="q,v", rank=4)
    ids = torch.randint(1, 128, (2, 16), device=CUDA)
    loss = peft_model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in peft_model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
