"""Model dtypes (--dtype), quantized loading (--quantize) and mixed-precision training: what each device
allows, and a 16-bit card that ranks the blocks like the float32 one."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

from layerwise.runtime.errors import ConfigError
from numerics import assert_within_fp32_spread

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

RANKED = ("actnorm", "cka", "act_energy", "gradnorm", "fisher", "resnorm")
"""The metrics whose bf16 ranking must agree with fp32 (taylor is unstable even in fp32)."""


def tiny_llama(layers: int = 8, hidden: int = 64, seed: int = 0) -> transformers.LlamaForCausalLM:
    """A seeded random Llama decoder (4 heads, 2 KV heads, MLP width 128), float32."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=2 * hidden,
                                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, pad_token_id=0)
    return transformers.LlamaForCausalLM(config)


def tiny_bert_classifier(layers: int = 8, seed: int = 0) -> transformers.BertForSequenceClassification:
    from tests.tiny_models import tiny_bert

    return tiny_bert(layers=layers, hidden=64, seed=seed)


def distinct_blocks(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Scale each block's weights by its own factor (0.5 to 2.5 in a seeded order), so the blocks differ in
    every metric (a random BERT's LayerNorm makes every block's output norm the same)."""
    from layerwise.models.layers import find_layer_stack

    blocks = find_layer_stack(model).blocks
    factors = torch.linspace(0.5, 2.5, len(blocks))[torch.randperm(len(blocks),
                                                                   generator=torch.Generator().manual_seed(seed))]
    with torch.no_grad():
        for block, f in zip(blocks, factors.tolist()):
            for p in block.module.parameters():
                p.mul_(f)
    return model


def _batches(seed: int, n: int = 6, batch: int = 8, length: int = 24, vocab: int = 100,
             causal: bool = False) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(1, vocab, (batch, length), generator=g)
        lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
        mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
        ids = ids * mask
        labels = torch.where(mask.bool(), ids, -100) if causal else torch.randint(0, 2, (batch,), generator=g)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


@pytest.mark.parametrize("make, causal", [(tiny_bert_classifier, False), (tiny_llama, True)],
                         ids=["bert", "llama"])
def test_bf16_card_ranks_the_blocks_like_the_fp32_card(make, causal, one_thread) -> None:
    from scipy.stats import kendalltau

    from layerwise.card.profiling import profile_layers

    batches = _batches(1, causal=causal)
    metrics = ",".join(RANKED)
    model = distinct_blocks(make()).eval()
    fp32 = profile_layers(model, batches, metrics, name="tiny", show_progress=False, n_boot=20)
    bf16 = profile_layers(model.to(torch.bfloat16), batches, metrics, name="tiny", show_progress=False, n_boot=20)
    assert fp32.probe["model_dtype"] == "float32" and bf16.probe["model_dtype"] == "bfloat16"
    for name in RANKED:
        a, b = fp32.values(name), bf16.values(name)
        assert all(isinstance(v, float) and v == v for v in a + b), name
        tau = kendalltau(a, b).statistic
        assert tau >= 0.85, f"{name}: tau {tau:.3f} between the bf16 and the fp32 card"


def test_bf16_gradients_are_squared_and_summed_in_float32_at_least(one_thread) -> None:
    """The probe's per-block sum of squared gradients of a bf16 model equals the float64 sum of the same bf16
    gradients (computed here by hand) to float32 precision; summed in bf16 it would be off by ~1e-3."""
    from layerwise.models.layers import find_layer_stack
    from layerwise.card.probe.runner import run_probe

    model = distinct_blocks(tiny_llama(layers=3)).eval().to(torch.bfloat16)
    stack = find_layer_stack(model)
    batch = _batches(2, n=1, causal=True)[0]
    model(**batch).loss.backward()
    expected = []
    for block in stack.blocks:
        grads = [model.get_submodule(lin.name).weight.grad.double() for lin in block.linears]
        expected.append(sum(float((g * g).sum()) for g in grads))
    model.zero_grad(set_to_none=True)
    result = run_probe(model, stack, [batch], ["param_grad"], show_progress=False)
    got = result.stats.grad_sq[0].tolist()
    assert got == pytest.approx(expected, rel=1e-5)


def test_dtype_auto_is_float32_on_the_cpu_and_16_bit_where_the_cpu_lacks_it_is_refused() -> None:
    from layerwise.models.precision import resolve_dtype

    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("bfloat16", "cpu") == "bfloat16"
    assert resolve_dtype("float32", torch.device("cpu")) == "float32"
    with pytest.raises(ConfigError, match=r"^--dtype float16 is not supported on cpu \(allowed there: auto, "
                                          r"float32, bfloat16\); float16 needs a CUDA device"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(ConfigError, match="--dtype must be one of auto, float32, bfloat16, float16, got 'half'"):
        resolve_dtype("half", "cpu")


def test_model_source_checks_dtype_and_quantize_naming_the_flags() -> None:
    from layerwise.settings import ModelSource

    assert ModelSource().dtype == "auto" and ModelSource().quantize == "none"
    with pytest.raises(ConfigError, match="^--dtype must be one of auto, float32, bfloat16, float16"):
        ModelSource(dtype="fp16")
    with pytest.raises(ConfigError, match="^--quantize must be one of none, 4bit, 8bit"):
        ModelSource(quantize="2bit")


def test_quantized_loading_is_refused_without_bitsandbytes_or_a_gpu(monkeypatch) -> None:
    import importlib.util

    from layerwise.models import precision

    real = importlib.util.find_spec
    monkeypatch.setattr(precision.importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match="^--quantize 4bit needs the bitsandbytes package, which is not installed"):
        precision.check_quantization("4bit", "cpu")
    monkeypatch.setattr(precision.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ConfigError, match=r"^--quantize 8bit needs a CUDA device \(the run is on cpu\)"):
        precision.check_quantization("8bit", "cpu")
    precision.check_quantization("none", "cpu")  # nothing to check


@pytest.mark.parametrize("flags, says", [
    (["--dtype", "float16"], "--dtype float16 is not supported on cpu"),
    (["--quantize", "4bit"], "--quantize 4bit needs"),
], ids=["float16", "4bit"])
def test_the_cli_refuses_what_the_cpu_lacks_in_one_line(flags, says, tmp_path) -> None:
    from tests.test_cli import layerwise

    out = tmp_path / "card"
    proc = layerwise("card", "--device", "cpu", *flags, "--samples", "16", "--out", str(out), check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()  # refused before anything was written


def test_float16_loss_scaling_skips_an_overflowing_step_and_unscales_before_the_update() -> None:
    """GradScaler's documented rules, checked by hand: initial scale 2**16; a step whose scaled gradient is
    inf is skipped and halves the scale; otherwise the update uses the true (unscaled) gradient."""
    from layerwise.train.precision import Precision

    prec = Precision(torch.float16, "cpu")
    assert prec.enabled and prec.scaling is not None and len(prec.stateful()) == 1
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    prec.backward(w.sum() * 1e35)  # gradient 1e35 * 2**16 overflows float32
    prec.unscale(opt)
    prec.step(opt)
    assert w.detach().tolist() == [1.0, -2.0]  # skipped
    assert prec.scaling.scaler.get_scale() == 2.0**15
    opt.zero_grad()
    prec.backward((w * torch.tensor([3.0, 5.0])).sum())  # true gradient (3, 5)
    prec.unscale(opt)
    assert w.grad.tolist() == [3.0, 5.0]  # clipping sees the true gradient
    prec.step(opt)
    assert w.detach().tolist() == pytest.approx([1.0 - 0.3, -2.0 - 0.5])
    assert Precision.stateful(Precision(torch.float32)) == () and not Precision(torch.float32).enabled


def test_compute_dtype_and_fp32_master_weights() -> None:
    from layerwise.train.precision import Precision, compute_dtype

    lin = torch.nn.Linear(4, 4).to(torch.bfloat16)
    head = torch.nn.Linear(4, 2).to(torch.bfloat16)
    lin.requires_grad_(False)
    model = torch.nn.Sequential(lin, head)
    assert compute_dtype(model) == torch.bfloat16
    params = list(head.parameters())
    ids = [id(p) for p in params]
    prec = Precision.for_model(model, params)
    assert prec.dtype == torch.bfloat16 and prec.device_type == "cpu" and prec.scaling is None
    assert [id(p) for p in head.parameters()] == ids and all(p.dtype == torch.float32 for p in head.parameters())
    assert lin.weight.dtype == torch.bfloat16
    with prec.autocast():  # bf16 body, fp32 head: autocast makes them meet
        y = model(torch.randn(3, 4, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert compute_dtype(torch.nn.Linear(2, 2)) == torch.float32


def test_a_bf16_model_trains_with_float32_adapters_on_the_cpu(tokenizer, tmp_path, one_thread) -> None:
    import random

    import peft

    from layerwise.data import load_task
    from layerwise.train import TrainConfig, train
    from tests.tiny_models import tiny_bert

    data = load_task("rotten-tomatoes")
    rng = random.Random(0)
    train_ex, dev_ex = rng.sample(data.train, 64), rng.sample(data.dev, 32)
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
    model = peft.get_peft_model(tiny_bert(tokenizer.vocab_size).to(torch.bfloat16), lora)
    before = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = TrainConfig(steps=6, lr=5e-3, batch_size=8, max_length=32, prefix_cache="off")
    result = train(model, tokenizer, data.task, train_ex, dev_ex, cfg, tmp_path / "run", show_progress=False)
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert set(trained) == set(before) and all(p.dtype == torch.float32 for p in trained.values())
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert any(not torch.equal(before[n], p.detach()) for n, p in trained.items() if "lora_B" in n)
    from layerwise.train.log import read_log, step_lines

    losses = [r["loss"] for r in step_lines(read_log(result.log_path))]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert 0.0 <= result.final_metrics["accuracy"] <= 1.0


class FakeInt8Linear(torch.nn.Linear):
    """A linear layer whose weight is stored as int8 with a per-row scale (like a bitsandbytes layer, its weight
    is not floating point and cannot have a gradient)."""

    def __init__(self, lin: torch.nn.Linear) -> None:
        super().__init__(lin.in_features, lin.out_features, bias=lin.bias is not None)
        w = lin.weight.detach()
        scale = w.abs().amax(1, keepdim=True) / 127
        self.weight = torch.nn.Parameter(torch.round(w / scale).to(torch.int8), requires_grad=False)
        self.register_buffer("scale", scale)
        if lin.bias is not None:
            self.bias = torch.nn.Parameter(lin.bias.detach().clone())

    def dequantized(self) -> torch.Tensor:
        return self.weight.float() * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.dequantized(), self.bias)


def test_a_card_of_quantized_weights_measures_the_residual_signal_and_refuses_weight_gradients() -> None:
    from layerwise.models.layers import find_layer_stack
    from layerwise.card.probe.runner import run_probe

    fp = distinct_blocks(tiny_llama(layers=3)).eval()
    q = distinct_blocks(tiny_llama(layers=3)).eval()
    for block in find_layer_stack(q).blocks:
        for lin in block.linears:
            parent, _, leaf = lin.name.rpartition(".")
            fake = FakeInt8Linear(q.get_submodule(lin.name))
            setattr(q.get_submodule(parent), leaf, fake)
            fp.get_submodule(lin.name).weight.data.copy_(fake.dequantized())  # the same function in float
    batches = _batches(4, n=2, causal=True)
    got = run_probe(q, find_layer_stack(q), batches, ["out_grad"], show_progress=False)
    ref = run_probe(fp, find_layer_stack(fp), batches, ["out_grad"], show_progress=False)
    for a, b in zip(got.stats.out_grad, ref.stats.out_grad):
        assert float(a.value().abs().max()) > 0
        torch.testing.assert_close(a.value(), b.value(), rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for p in q.parameters())
    with pytest.raises(ConfigError, match=r"^gradnorm, fisher and taylor .* quantized model \(--quantize\)"):
        run_probe(q, find_layer_stack(q), batches, ["param_grad"], show_progress=False)


def test_input_covariance_of_a_bf16_model_equals_the_float64_sums_of_its_states(one_thread) -> None:
    """What act_energy reads: the centred Gram of each block's real-token inputs, from a bf16 model's own
    states, equals the float64 computation from those states (captured here by hand)."""
    from layerwise.models.layers import find_layer_stack
    from layerwise.card.probe.runner import run_probe

    model = distinct_blocks(tiny_llama(layers=3)).eval().to(torch.bfloat16)
    stack = find_layer_stack(model)
    batches = _batches(5, n=3, causal=True)
    rows: dict[int, list[torch.Tensor]] = {b.index: [] for b in stack.blocks}
    handles = [b.module.register_forward_pre_hook(
        lambda m, a, kw, i=b.index: rows[i].append((a[0] if a else kw["hidden_states"]).detach()), with_kwargs=True)
        for b in stack.blocks]
    with torch.no_grad():
        for batch in batches:
            model(**{k: v for k, v in batch.items() if k != "labels"})
    for h in handles:
        h.remove()
    result = run_probe(model, stack, batches, ["input_cov"], show_progress=False)
    for i, states in rows.items():
        real = [s[m.bool()] for s, m in zip(states, (b["attention_mask"] for b in batches))]
        x = torch.cat(real).double()
        xc = x - x.mean(0)
        want = xc.T @ xc  # float64 truth
        # the same streaming sums without the probe: plain float32 products per batch, merged in float64
        n, total = len(x), sum((r.float().T @ r.float()).double() for r in real)
        plain = total - n * torch.outer(x.mean(0), x.mean(0))
        assert_within_fp32_spread(result.stats.input_cov[i].centred(), plain, want, f"input_cov[{i}]")


def test_a_float16_run_checkpoints_its_loss_scale_and_resumes_exactly(tokenizer, tmp_path, one_thread) -> None:
    """float16 on the CPU through train() (the CLI refuses it there; the loop does not care where): the
    GradScaler's state is in the checkpoint, a resumed run continues its growth count (6 good steps, not 3) and
    ends with the uninterrupted run's adapter bit for bit."""
    import random

    import peft
    from safetensors.torch import load_file

    from layerwise.data import load_task
    from layerwise.train import TrainConfig, train
    from tests.tiny_models import tiny_bert

    data = load_task("rotten-tomatoes")
    rng = random.Random(0)
    train_ex, dev_ex = rng.sample(data.train, 64), rng.sample(data.dev, 16)
    cfg = TrainConfig(steps=6, lr=5e-3, batch_size=8, max_length=32, prefix_cache="off")

    class StopAt3:
        def on_step_end(self, state) -> None:
            state.should_stop = state.should_stop or state.step == 3

    def run(out, **kwargs):
        lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"])
        model = peft.get_peft_model(tiny_bert(tokenizer.vocab_size, layers=2).to(torch.float16), lora)
        return train(model, tokenizer, data.task, train_ex, dev_ex, cfg, out, show_progress=False, **kwargs)

    whole = run(tmp_path / "whole")
    assert run(tmp_path / "resumed", callbacks=[StopAt3()]).steps == 3
    resumed = run(tmp_path / "resumed", resume=True)
    state = torch.load(tmp_path / "resumed" / "checkpoint" / "callbacks.pt", weights_only=True)["LossScaling"]
    assert state["scale"] == 2.0**16 and state["_growth_tracker"] == 6
    a = load_file(whole.adapter_dir / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_evaluate_scores_a_bf16_model_with_a_float32_head(tokenizer) -> None:
    """After training a bf16 base its head is float32 (master weights): ``evaluate`` runs it under autocast."""
    from layerwise.data import load_task
    from layerwise.train import evaluate
    from tests.tiny_models import tiny_bert

    data = load_task("rotten-tomatoes")
    model = tiny_bert(tokenizer.vocab_size).to(torch.bfloat16)
    model.classifier.float()
    metrics = evaluate(model, data.dev[:16], data.task, tokenizer, batch_size=8, max_length=32)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and math.isfinite(metrics["loss"])
