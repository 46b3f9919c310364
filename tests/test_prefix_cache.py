"""The frozen-prefix cache: a run that feeds block l from cached hidden states matches the same run that
recomputes the prefix, on tiny encoders and decoders and once on MiniLM; resume with a cache, rebuild on
mismatch, and the cases where it must be off.

"Matches" is measured against fp32's own rounding on this CPU (tests/numerics.py): the cached rows are computed
at another batch shape than the recomputed prefix, so both fp32 runs are compared with a float64 run without
the cache, and the cached run may be no further from it than a small multiple of the plain fp32 run's distance."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from layerwise.adapters.bridge import apply_adapter
from layerwise.data.load import load_task
from layerwise.runtime.errors import ConfigError
from layerwise.models.layers import find_layer_stack
from layerwise.train import TrainConfig, train
from layerwise.train.prefix.frozen import quiet_frozen_prefix
from layerwise.train.prefix.cache import BUILD_BATCH, PrefixStore

from numerics import assert_tensors_within_fp32_spread, assert_within_fp32_spread
from tiny_models import tiny_bert

pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
              pytest.mark.usefixtures("one_thread")]



@pytest.fixture(scope="module")
def rt():
    data = load_task("rotten-tomatoes")
    rng = random.Random(0)
    return data.task, rng.sample(data.train, 48), rng.sample(data.dev, 16)


@pytest.fixture(scope="module")
def gsm(gsm8k_dir):
    from layerwise.models import resolve_model
    from layerwise.models.loading import load_tokenizer

    data = load_task("gsm8k", gsm8k_dir)
    return load_tokenizer(resolve_model("smollm2-135m")), data.task, data.train[:12], data.dev[:4]


def _config(**overrides) -> TrainConfig:
    base = dict(steps=9, lr=5e-3, batch_size=8, max_length=40, eval_every=4, warmup_ratio=0.2, seed=3)
    return TrainConfig(**{**base, **overrides})


def _adapted(make, layers, targets="q,v"):
    model = make()
    stack = find_layer_stack(model)
    torch.manual_seed(0)
    peft_model = apply_adapter(model, stack, layers, method="lora", targets=targets, rank=4)
    quiet_frozen_prefix(peft_model, stack, layers)  # what `layerwise train` does by default
    return peft_model


def _run(make, layers, tok, task, train_ex, dev_ex, out: Path, **overrides):
    model = _adapted(make, layers)
    result = train(model, tok, task, train_ex, dev_ex, _config(**overrides), out, show_progress=False)
    return result, model


def _losses(result) -> np.ndarray:
    rows = [json.loads(line) for line in result.log_path.read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r and "step" in r and "eval" not in r], dtype=np.float64)


def _reference(make, layers, tok, task, train_ex, dev_ex, out: Path, **overrides):
    """The same run in float64 without the cache: the value both fp32 runs approximate."""
    overrides = {**overrides, "prefix_cache": "off"}
    return _run(lambda: make().double(), layers, tok, task, train_ex, dev_ex, out, **overrides)[0]


def _adapter(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.adapter_dir / "adapter_model.safetensors"))


def _assert_close_runs(plain, cached, reference) -> None:
    """``cached`` (fp32, the cache on) is as close to ``reference`` (float64, off) as fp32 allows, judged by
    ``plain`` (fp32, off): the losses of every step, each final adapter tensor and the final metrics."""
    lp, lc, lr = _losses(plain), _losses(cached), _losses(reference)
    assert len(lp) == len(lc) == len(lr) > 0
    assert_within_fp32_spread(lc, lp, lr, "losses")
    tp, tc, tr = _adapter(plain), _adapter(cached), _adapter(reference)
    assert max(float(t.abs().max()) for t in tr.values()) > 0
    assert_tensors_within_fp32_spread(tc, tp, tr)
    for key, value in reference.final_metrics.items():
        assert_within_fp32_spread(cached.final_metrics[key], plain.final_metrics[key], value, key)


def _tiny_llama(vocab: int, pad: int, layers: int = 3):
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, max_position_embeddings=512, pad_token_id=pad, attention_dropout=0.1))


def _tiny_gpt2(vocab: int, pad: int, layers: int = 3):
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=vocab, n_embd=16, n_layer=layers, n_head=2, n_positions=512, pad_token_id=pad))


def _tiny_roberta(vocab: int):
    torch.manual_seed(0)
    return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=130, pad_token_id=0, num_labels=2))


def _tiny_deberta(vocab: int):
    torch.manual_seed(0)
    return transformers.DebertaV2ForSequenceClassification(transformers.DebertaV2Config(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128, relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"],
        pad_token_id=0, num_labels=2))


# --- the store -------------------------------------------------------------------------------------------


def test_gather_pads_each_example_with_zeros_in_token_major_order():
    rng = np.random.default_rng(0)
    lengths = [3, 1, 4]
    data = rng.normal(size=(sum(lengths), 5)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    out = PrefixStore(torch.from_numpy(data), offsets).gather([2, 0], 6, torch.float64).numpy()
    expected = np.zeros((2, 6, 5))
    expected[0, :4] = data[4:8]
    expected[1, :3] = data[0:3]
    np.testing.assert_array_equal(out, expected)


# --- exactness ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bert", "roberta", "deberta"])
def test_encoder_runs_with_an_fp32_cache_match_the_recomputed_prefix(name, tokenizer, rt, tmp_path):
    make = {"bert": lambda: tiny_bert(tokenizer.vocab_size, layers=3),
            "roberta": lambda: _tiny_roberta(tokenizer.vocab_size),
            "deberta": lambda: _tiny_deberta(tokenizer.vocab_size)}[name]
    plain, _ = _run(make, [2], tokenizer, *rt, tmp_path / "off", prefix_cache="off")
    cached, _ = _run(make, [2], tokenizer, *rt, tmp_path / "on", prefix_cache="memory")
    assert plain.prefix_cache["used"] is False and cached.prefix_cache["used"] is True
    assert cached.prefix_cache["layer"] == 2 and cached.prefix_cache["bytes"] > 0
    _assert_close_runs(plain, cached, _reference(make, [2], tokenizer, *rt, tmp_path / "f64"))


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_decoder_runs_with_an_fp32_disk_cache_match_the_recomputed_prefix(arch, gsm, tmp_path):
    tok, task, train_ex, dev_ex = gsm
    make = {"llama": _tiny_llama, "gpt2": _tiny_gpt2}[arch]
    overrides = dict(batch_size=4, max_length=96, eval_every=5, gen_max_new_tokens=4)
    plain, _ = _run(lambda: make(len(tok), tok.pad_token_id), [1, 2], tok, task, train_ex, dev_ex,
                    tmp_path / "off", prefix_cache="off", **overrides)
    cached, _ = _run(lambda: make(len(tok), tok.pad_token_id), [1, 2], tok, task, train_ex, dev_ex,
                     tmp_path / "on", prefix_cache="disk", **overrides)
    report = cached.prefix_cache
    assert report["used"] and report["mode"] == "disk" and Path(report["path"]).is_file()
    # token-major: one row of hidden_size per training token, in the dtype asked for
    meta = json.loads(Path(report["path"]).with_suffix(".json").read_text())
    assert Path(report["path"]).stat().st_size == meta["tokens"] * 16 * 4
    reference = _reference(lambda: make(len(tok), tok.pad_token_id), [1, 2], tok, task, train_ex, dev_ex,
                           tmp_path / "f64", **overrides)
    _assert_close_runs(plain, cached, reference)


def test_the_blocks_below_the_lowest_adapter_do_not_run_with_the_cache(tokenizer, rt, tmp_path):
    calls = {"off": 0, "memory": 0}
    for mode in calls:
        model = _adapted(lambda: tiny_bert(tokenizer.vocab_size, layers=3), [2])
        stack = find_layer_stack(model)

        def count(*_args, mode=mode):
            calls[mode] += 1

        above = []
        stack.blocks[0].module.attention.register_forward_hook(count)
        stack.blocks[2].module.attention.register_forward_hook(lambda *a: above.append(1))
        train(model, tokenizer, *rt, _config(prefix_cache=mode), tmp_path / mode, show_progress=False)
        assert len(above) >= 9 + 3 * 2
    # without the cache block 0 runs in every step (9) and in each of the 3 evaluations (steps 4, 8, 9) on
    # 2 dev batches; with it, only while the cache is built: the 48 training examples in batches of
    # BUILD_BATCH, and the 2 dev batches
    assert calls["off"] == 9 + 3 * 2
    assert calls["memory"] == -(-48 // BUILD_BATCH) + 2


def test_a_run_that_evaluates_once_caches_only_the_training_set(tokenizer, rt, tmp_path):
    task, train_ex, dev_ex = rt
    encoded = {name: tokenizer([e.text for e in ex], truncation=True, max_length=40)["input_ids"]
               for name, ex in (("train", train_ex), ("dev", dev_ex))}
    tokens = {name: sum(len(ids) for ids in rows) for name, rows in encoded.items()}
    make = lambda: tiny_bert(tokenizer.vocab_size, layers=3)  # noqa: E731
    once, _ = _run(make, [2], tokenizer, *rt, tmp_path / "once", prefix_cache="memory", eval_every=0)
    thrice, _ = _run(make, [2], tokenizer, *rt, tmp_path / "thrice", prefix_cache="memory", eval_every=4)
    hidden, fp32 = 32, 4
    assert once.prefix_cache["bytes"] == tokens["train"] * hidden * fp32
    assert thrice.prefix_cache["bytes"] == (tokens["train"] + tokens["dev"]) * hidden * fp32


# --- resume, keys, degenerate cases ---------------------------------------------------------------------


class _StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state) -> None:
        state.should_stop = state.should_stop or state.step == self.step


def test_resume_mid_epoch_with_a_disk_cache_reuses_it_and_is_bit_identical(tokenizer, rt, tmp_path):
    make = lambda: tiny_bert(tokenizer.vocab_size, layers=3)  # noqa: E731
    whole, _ = _run(make, [1, 2], tokenizer, *rt, tmp_path / "whole", prefix_cache="disk")
    out = tmp_path / "stopped"
    model = _adapted(make, [1, 2])
    first = train(model, tokenizer, *rt, _config(prefix_cache="disk"), out, callbacks=[_StopAt(4)],
                  show_progress=False)  # 6 batches per epoch: step 4 is mid-epoch
    assert first.steps == 4 and first.prefix_cache["reused"] is False
    resumed = train(_adapted(make, [1, 2]), tokenizer, *rt, _config(prefix_cache="disk"), out, resume=True,
                    show_progress=False)
    assert resumed.steps == 9 and resumed.prefix_cache["reused"] is True
    assert resumed.prefix_cache["build_seconds"] == 0.0
    a = load_file(str(whole.adapter_dir / "adapter_model.safetensors"))
    b = load_file(str(resumed.adapter_dir / "adapter_model.safetensors"))
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_a_shared_cache_is_reused_only_when_model_data_and_layer_match(tokenizer, rt, tmp_path):
    make = lambda: tiny_bert(tokenizer.vocab_size, layers=3)  # noqa: E731
    shared = str(tmp_path / "shared")
    task, train_ex, dev_ex = rt
    first, _ = _run(make, [2], tokenizer, *rt, tmp_path / "a", prefix_cache="disk", prefix_cache_dir=shared)
    again, _ = _run(make, [2], tokenizer, *rt, tmp_path / "b", prefix_cache="disk", prefix_cache_dir=shared,
                    lr=1e-3, seed=7)
    assert not first.prefix_cache["reused"] and again.prefix_cache["reused"]
    assert again.prefix_cache["path"] == first.prefix_cache["path"]
    changes = {"max_length": dict(max_length=24), "data": dict(), "layer": dict(), "weights": dict()}
    for what, overrides in changes.items():
        data = (task, train_ex[:40], dev_ex) if what == "data" else rt
        layers = [1, 2] if what == "layer" else [2]
        model_fn = (lambda: tiny_bert(tokenizer.vocab_size, layers=3, seed=1)) if what == "weights" else make
        result, _ = _run(model_fn, layers, tokenizer, *data, tmp_path / what, prefix_cache="disk",
                         prefix_cache_dir=shared, **overrides)
        assert result.prefix_cache["used"] and not result.prefix_cache["reused"], what
        assert result.prefix_cache["path"] != first.prefix_cache["path"], what


def test_a_corrupted_cache_file_is_rebuilt_not_reused(tokenizer, rt, tmp_path):
    make = lambda: tiny_bert(tokenizer.vocab_size, layers=3)  # noqa: E731
    shared = str(tmp_path / "shared")
    first, _ = _run(make, [2], tokenizer, *rt, tmp_path / "a", prefix_cache="disk", prefix_cache_dir=shared)
    path = Path(first.prefix_cache["path"])
    path.write_bytes(path.read_bytes()[:-4])  # truncated: the size no longer matches the metadata
    again, _ = _run(make, [2], tokenizer, *rt, tmp_path / "b", prefix_cache="disk", prefix_cache_dir=shared)
    assert again.prefix_cache["used"] and not again.prefix_cache["reused"]
    # the rebuilt cache is the same computation at the same shapes as the first: bit for bit
    assert np.array_equal(_losses(first), _losses(again))
    a, b = _adapter(first), _adapter(again)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_the_cache_is_off_with_the_reason_when_it_cannot_be_exact(tokenizer, rt, tmp_path):
    make = lambda: tiny_bert(tokenizer.vocab_size, layers=3)  # noqa: E731
    uniform, _ = _run(make, [0, 1, 2], tokenizer, *rt, tmp_path / "uniform", prefix_cache="memory")
    assert not uniform.prefix_cache["used"] and "lowest adapted block is 0" in uniform.prefix_cache["reason"]
    dropout, _ = _run(make, [2], tokenizer, *rt, tmp_path / "dropout", prefix_cache="memory", prefix_dropout=True)
    assert not dropout.prefix_cache["used"] and "--prefix-dropout" in dropout.prefix_cache["reason"]
    one_pass, _ = _run(make, [2], tokenizer, *rt, tmp_path / "one", prefix_cache="auto", steps=6)
    assert not one_pass.prefix_cache["used"] and "one pass" in one_pass.prefix_cache["reason"]
    two_passes, _ = _run(make, [2], tokenizer, *rt, tmp_path / "two", prefix_cache="auto", steps=7)
    assert two_passes.prefix_cache["used"] and two_passes.prefix_cache["mode"] == "memory"
    # a method that trains the embeddings changes the prefix's output
    model = _adapted(make, [2])
    model.base_model.model.bert.embeddings.word_embeddings.weight.requires_grad_(True)
    result = train(model, tokenizer, *rt, _config(prefix_cache="memory"), tmp_path / "embed", show_progress=False)
    assert not result.prefix_cache["used"] and "embeddings" in result.prefix_cache["reason"]
    metrics = json.loads((tmp_path / "embed" / "metrics.json").read_text())
    assert metrics["prefix_cache"]["reason"] == result.prefix_cache["reason"]


def test_a_cache_that_does_not_fit_is_refused_naming_the_flag(tokenizer, rt, tmp_path, monkeypatch):
    import layerwise.train.prefix.cache as pc

    monkeypatch.setattr(pc, "MEMORY_SHARE", 1e-12)
    monkeypatch.setattr(pc, "DISK_SHARE", 1e-12)
    make = lambda: tiny_bert(tokenizer.vocab_size, layers=3)  # noqa: E731
    for mode in ("memory", "disk"):
        with pytest.raises(ConfigError, match=f"--prefix-cache {mode}: the cache needs"):
            _run(make, [2], tokenizer, *rt, tmp_path / mode, prefix_cache=mode)
    auto, _ = _run(make, [2], tokenizer, *rt, tmp_path / "auto", prefix_cache="auto")
    assert not auto.prefix_cache["used"] and "fits neither" in auto.prefix_cache["reason"]


def test_config_checks_the_prefix_cache_flags():
    for kwargs, flag in ((dict(prefix_cache="ram"), "--prefix-cache "), (dict(prefix_cache_dtype="int8"),
                                                                          "--prefix-cache-dtype")):
        with pytest.raises(ConfigError, match=flag):
            TrainConfig(steps=1, **kwargs)


# --- the bundled models -----------------------------------------------------------------------------------


def test_minilm_top_two_with_a_cache_matches_the_recomputed_prefix(minilm, tmp_path):
    import copy

    data = load_task("rotten-tomatoes")
    rng = random.Random(2)
    rt_ = (data.task, rng.sample(data.train, 48), rng.sample(data.dev, 16))
    make = lambda: copy.deepcopy(minilm.model)  # noqa: E731  (the session fixture stays untouched)
    kwargs = dict(steps=6, batch_size=16, max_length=40, eval_every=3)
    plain, _ = _run(make, [4, 5], minilm.tokenizer, *rt_, tmp_path / "off", prefix_cache="off", **kwargs)
    cached, _ = _run(make, [4, 5], minilm.tokenizer, *rt_, tmp_path / "on", prefix_cache="auto", **kwargs)
    assert cached.prefix_cache["used"] and cached.prefix_cache["layer"] == 4
    assert cached.prefix_cache["reason"].startswith("auto")
    # The cached rows differ from a recomputed prefix by fp32 rounding at another batch shape (~5e-7 of the
    # largest value); Adam turns a rounding-level change of a near-zero gradient into a step of about lr, so
    # the adapters differ by 2e-6..2e-5 relative per tensor: as far as the plain fp32 run is from float64.
    _assert_close_runs(plain, cached, _reference(make, [4, 5], minilm.tokenizer, *rt_, tmp_path / "f64", **kwargs))
    assert cached.best_metrics["accuracy"] == plain.best_metrics["accuracy"]


@pytest.mark.slow
def test_smollm2_top_eight_with_a_cache_matches_the_recomputed_prefix(smollm2, gsm, tmp_path):
    import copy

    _, task, train_ex, dev_ex = gsm
    make = lambda: copy.deepcopy(smollm2.model)  # noqa: E731
    kwargs = dict(steps=3, batch_size=2, max_length=40, eval_every=0, gen_max_new_tokens=1,
                  eval_max_examples=2)
    layers = list(range(22, 30))
    plain, _ = _run(make, layers, smollm2.tokenizer, task, train_ex[:4], dev_ex, tmp_path / "off",
                    prefix_cache="off", **kwargs)
    cached, _ = _run(make, layers, smollm2.tokenizer, task, train_ex[:4], dev_ex, tmp_path / "on",
                     prefix_cache="memory", **kwargs)
    assert cached.prefix_cache["used"] and cached.prefix_cache["layer"] == 22
    reference = _reference(make, layers, smollm2.tokenizer, task, train_ex[:4], dev_ex, tmp_path / "f64", **kwargs)
    _assert_close_runs(plain, cached, reference)


def test_a_bfloat16_cache_is_half_the_size_and_trains_close_to_the_exact_one(tokenizer, rt, tmp_path):
    make = lambda: tiny_bert(tokenizer.vocab_size, layers=3)  # noqa: E731
    exact, _ = _run(make, [2], tokenizer, *rt, tmp_path / "fp32", prefix_cache="memory")
    half, _ = _run(make, [2], tokenizer, *rt, tmp_path / "bf16", prefix_cache="disk", prefix_cache_dtype="bfloat16")
    assert half.prefix_cache["dtype"] == "bfloat16"
    assert half.prefix_cache["bytes"] * 2 == exact.prefix_cache["bytes"]
    # bf16 keeps 8 bits of mantissa: the losses move by about 2**-9 relative, not more
    np.testing.assert_allclose(_losses(half), _losses(exact), rtol=1e-2)
    assert not np.array_equal(_losses(half), _losses(exact))


@pytest.mark.parametrize("command", ["train", "run", "bench"])
def test_train_run_and_bench_take_the_prefix_cache_flags(command, tmp_path):
    from layerwise.cli import build_parser
    from layerwise.commands.common import training_group
    from layerwise.commands.flags import build

    def train_config_from_args(args):
        return build(training_group(), args)

    base = [command, "--model", "minilm", "--task", "sst2", "--out", str(tmp_path)]
    default = train_config_from_args(build_parser().parse_args(base))
    assert (default.prefix_cache, default.prefix_cache_dtype, default.prefix_cache_dir) == ("auto", "float32", None)
    args = build_parser().parse_args(base + ["--prefix-cache", "disk", "--prefix-cache-dtype", "bfloat16",
                                             "--prefix-cache-dir", str(tmp_path / "shared")])
    config = train_config_from_args(args)
    assert (config.prefix_cache, config.prefix_cache_dtype, config.prefix_cache_dir) == (
        "disk", "bfloat16", str(tmp_path / "shared"))


def test_the_run_report_says_whether_each_run_used_the_cache():
    from layerwise.evaluate.report import compare, render_report_md

    def row(label, cache):
        return {"label": label, "main_metric": "accuracy", "score": 0.8, "trainable_params": 10, "steps": 5,
                "train_seconds": 2.0, "phase_seconds": {"forward": 1.0, "backward": 0.5, "optimizer": 0.5},
                "peak_memory": 2**20, "memory_kind": "cpu_rss", "layers": [4, 5], "prefix_cache": cache}

    used = {"used": True, "reason": "auto", "mode": "memory", "layer": 4, "dtype": "float32", "bytes": 3 * 2**20,
            "build_seconds": 1.25, "reused": False}
    off = {"used": False, "reason": "the lowest adapted block is 0: no frozen block below it to cache"}
    rows = [row("selected", used), row("uniform", off)]
    text = render_report_md(compare(rows, rows[1]), {"model": "m", "task": "t", "selection": "s"})
    assert "- selected: memory, input of block 4, float32, 3.0 MiB, built in 1.2 s" in text
    assert "- uniform: off (the lowest adapted block is 0: no frozen block below it to cache)" in text
