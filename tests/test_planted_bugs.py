"""Tests for the 13 single bugs a planted-bug audit (issue 29) found surviving the other tests. Each test names
the bug it catches; each was run once with its bug planted by hand (never committed) and failed, and passes
on the code as it is. They use hand computations, scripted metric sequences, a round trip through plain peft
and dtype asserts, on tiny models: the whole file takes seconds."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tiny_models import tiny_bert


# ---------------------------------------------------------------- bench aggregation (pure)


def _cell(method: str, seed: int, score: float, steps: int, scored_at: int) -> dict:
    return {"method": method, "seed": seed, "main_metric": "accuracy", "score": score, "metrics": {"accuracy": score},
            "trainable_params": 10, "train_seconds": 1.0,
            "phase_seconds": {"forward": 0.5, "backward": 0.25, "optimizer": 0.25}, "peak_memory": 1,
            "memory_kind": "cpu_rss", "layers": [0], "steps": steps, "scored_at": scored_at}


def test_bench_scored_at_is_the_step_scored_not_the_steps_trained() -> None:
    """Bug: ``scored_at`` copied from ``steps``. A run of 100 steps whose best validation step was 60 and 40."""
    from layerwise.bench.aggregate import aggregate

    (row,) = aggregate([_cell("lora", 0, 0.7, 100, 60), _cell("lora", 1, 0.8, 100, 40)])
    assert row["steps"]["mean"] == 100.0 and row["scored_at"]["mean"] == 50.0


def test_bench_percent_change_is_of_the_baselines_magnitude() -> None:
    """Bug: the percent change divided by a signed baseline. Matthews correlation can be negative: from -0.2
    to 0.1 is +0.3, which is +150% of |-0.2| (dividing by -0.2 said -150%: a gain shown as a loss)."""
    from layerwise.bench.aggregate import aggregate

    rows = aggregate([_cell("lora", 0, -0.2, 3, 3), _cell("top", 0, 0.1, 3, 3)])
    v = rows[1]["vs_baseline"]
    assert v["score_diff"] == pytest.approx(0.3) and v["score_change_pct"] == pytest.approx(150.0)


def test_majority_baseline_breaks_a_tie_toward_the_lower_class() -> None:
    """Bug: majority ties broken toward the higher class. Train labels 1,0,1,0 tie; the lower class, 0, is
    predicted; on dev 0,0,1 that scores 2/3 (class 1 would score 1/3)."""
    from layerwise.data.task_metrics import majority_baseline
    from layerwise.data.tasks import TaskSpec

    task = TaskSpec("t", "classification", 2, None, False, ("accuracy",), "accuracy")
    base = majority_baseline(task, [1, 0, 1, 0], [0, 0, 1])
    assert base["predictor"].startswith("always class 0 ") and base["metrics"]["accuracy"] == pytest.approx(2 / 3)


# ---------------------------------------------------------------- bench cells, rank budget, selection


def test_bench_random_k_draws_other_layers_for_each_seed() -> None:
    """Bug: ``random{k}`` not redrawn per seed (every seed trained the draw of seed 0)."""
    from layerwise.bench.methods import BenchSettings, build_cell
    from layerwise.selection.policies import random_layers
    from layerwise.train import TrainConfig

    cells = [build_cell("random2", seed, TrainConfig(steps=1), BenchSettings()) for seed in range(4)]
    assert [c.selection.draw for c in cells] == [0, 1, 2, 3]
    assert [c.train_config.seed for c in cells] == [0, 1, 2, 3]
    draws = {tuple(random_layers(30, 2, c.selection.draw)) for c in cells}
    assert len(draws) == 4  # on smollm2's 30 blocks the four seeds draw four different pairs


def _card(values: list[float], higher_is_better: bool):
    from layerwise.card.layer_card import LayerCard, metric_entry

    n = len(values)
    info = {"needs": "forward", "higher_is_better": higher_is_better, "description": "m"}
    return LayerCard(model={"name": "t", "model_type": "bert", "config_hash": "x", "parameters": 1}, data={},
                     layers=[{"index": i, "name": f"encoder.layer.{i}", "linears": []} for i in range(n)],
                     metrics={"m": metric_entry(values, info, None, {})}, probe={}, created="", notes=[])


def test_rank_budget_flips_a_lower_is_better_metric() -> None:
    """Bug: a lower-is-better metric not flipped. Values 1, 2, 5 (lower is better) give importance
    5-1, 5-2, 5-5 = 4, 3, 0. A budget of 15: 1 to each layer (the floor), the other 12 split 4:3:0 is 6.86,
    5.14, 0, floored 6, 5, 0 with the last one to the largest remainder (0.86): ranks 1+7, 1+5, 1+0."""
    from layerwise.selection.rank_budget import ranks_from_card

    assert ranks_from_card(_card([1.0, 2.0, 5.0], higher_is_better=False), [0, 1, 2], 15, "m") == {0: 8, 1: 6, 2: 1}
    higher = ranks_from_card(_card([1.0, 2.0, 5.0], higher_is_better=True), [0, 1, 2], 15, "m")
    assert higher[2] > higher[1] > higher[0] and sum(higher.values()) == 15


# ---------------------------------------------------------------- export


@pytest.fixture(scope="module")
def bert_card():
    """The card (data-free: no probe) of a 3-block BERT: every block has q, k, v, o, up, down."""
    from layerwise.card.profiling import profile_layers

    return profile_layers(tiny_bert(layers=3), [], "weights", show_progress=False)


def test_export_regex_of_blocks_with_different_linears_matches_exactly_their_targets(bert_card) -> None:
    """Bug: blocks with different linears exported with the short regex ``stack.(1|2).(q|v)``, which also
    adapts block 2's v although only its q was chosen."""
    import dataclasses

    from layerwise.adapters.export import from_card, target_regex
    from layerwise.settings import AdapterChoice

    sel = from_card(bert_card, [1, 2], AdapterChoice(targets="q,v"))
    uneven = dataclasses.replace(sel, targets=tuple(t for t in sel.targets
                                                    if not (t.block == 2 and t.within.endswith("value"))))
    names = [f"{prefix}encoder.layer.{i}.{lin['name'].split(f'layer.{i}.')[1]}" for prefix in ("", "bert.")
             for i in range(3) for lin in bert_card.layers[i]["linears"]]
    for s in (sel, uneven):
        wanted = {t.name for t in s.targets}
        matched = {n.removeprefix("bert.") for n in names if re.fullmatch(target_regex(s), n)}
        assert matched == wanted, (target_regex(s), matched ^ wanted)


def test_ia3_feedforward_modules_are_the_mlp_targets_only(bert_card) -> None:
    """Bug: IA3's ``feedforward_modules`` listing every target (peft then scales attention on the input
    side). Round trip through plain peft: each adapted module's ``is_feedforward`` is its role's."""
    import peft
    import transformers

    from layerwise.adapters.export import from_card, peft_config
    from layerwise.settings import AdapterChoice

    sel = from_card(bert_card, [0, 2], AdapterChoice(method="ia3", targets="q,v,up,down"))
    config = peft_config(sel)
    model = peft.get_peft_model(tiny_bert(layers=3), config)
    flags = {name.split("base_model.model.")[-1]: m.is_feedforward for name, m in model.named_modules()
             if isinstance(m, peft.tuners.ia3.IA3Layer)}
    expected = {t.name if t.name.startswith("bert.") else "bert." + t.name: t.mlp for t in sel.targets}
    assert flags == expected and sum(flags.values()) == 4 and len(flags) == 8
    assert isinstance(model, peft.PeftModel) and transformers is not None


# ---------------------------------------------------------------- training: best step, precision


def test_best_step_follows_the_validation_split_not_dev(monkeypatch, tmp_path) -> None:
    """Bug: best step chosen by dev although a validation split exists. Scripted metrics: validation
    0.5, 0.8, 0.7 and dev 0.9, 0.6, 0.95 at steps 1-3: the best step is 2 (dev's best would be 3)."""
    from layerwise.train import loop
    from layerwise.train.state import TrainState

    saved = []
    monkeypatch.setattr(loop, "_save_adapter", lambda run, path: saved.append(run.state.step))
    run = SimpleNamespace(state=TrainState(), task=SimpleNamespace(main_metric="accuracy"), higher_is_better=True,
                          config=SimpleNamespace(early_stopping=0), out_dir=tmp_path)
    for step, (val, dev) in enumerate([(0.5, 0.9), (0.8, 0.6), (0.7, 0.95)], start=1):
        run.state.step = step
        loop._update_best(run, {"accuracy": dev}, {"accuracy": val})
    assert run.state.best_step == 2 and saved == [1, 2]
    assert run.state.best_metrics == {"accuracy": 0.6} and run.state.best_validation == {"accuracy": 0.8}


def test_full_fine_tuning_of_a_bfloat16_model_computes_in_bfloat16(tmp_path) -> None:
    """Bug: full fine-tuning of a bf16 model trained in fp32 (every parameter is trainable, so no frozen
    weight is left to say the model's dtype). The weights are float32 masters; the forward runs in bf16."""
    from layerwise.data.examples import Example
    from layerwise.data.tasks import TaskSpec
    from layerwise.models.resolve import resolve_model
    from layerwise.models.loading import load_tokenizer
    from layerwise.train import TrainConfig, train

    tok = load_tokenizer(resolve_model("minilm"))
    model = tiny_bert(vocab_size=tok.vocab_size, layers=2).to(torch.bfloat16)
    for p in model.parameters():
        p.requires_grad_(True)
    seen = []
    model.bert.encoder.layer[1].attention.self.query.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    task = TaskSpec("t", "classification", 2, None, False, ("accuracy",), "accuracy")
    examples = [Example(f"text {i}", None, i % 2) for i in range(8)]
    train(model, tok, task, examples, examples[:4], TrainConfig(steps=1, batch_size=4, max_length=16,
                                                                prefix_cache="off"), tmp_path, show_progress=False)
    assert seen[0] == torch.bfloat16  # the training step's forward (the evaluation after it comes later)
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # the float32 master weights


# ---------------------------------------------------------------- the frozen-prefix cache


@pytest.fixture(scope="module")
def small_rt():
    """24 training and 8 dev rows of rotten-tomatoes (bundled), and 8 other training rows as a validation split."""
    import random

    from layerwise.data.load import load_task

    data = load_task("rotten-tomatoes")
    rng = random.Random(1)
    rows = rng.sample(data.train, 32)
    return data.task, rows[:24], rng.sample(data.dev, 8), rows[24:]


def _adapted_bert(vocab: int, layers: list[int], dtype: torch.dtype = torch.float32):
    from layerwise.adapters.bridge import apply_adapter
    from layerwise.models.layers import find_layer_stack
    from layerwise.train.prefix.frozen import quiet_frozen_prefix

    model = tiny_bert(vocab, layers=3).to(dtype)
    stack = find_layer_stack(model)
    torch.manual_seed(0)
    peft_model = apply_adapter(model, stack, layers, method="lora", targets="q,v", rank=4)
    quiet_frozen_prefix(peft_model, stack, layers)
    return peft_model, stack


def _config(**overrides):
    from layerwise.train import TrainConfig

    return TrainConfig(**{**dict(steps=6, lr=5e-3, batch_size=8, max_length=32, eval_every=3, warmup_ratio=0.2,
                                 seed=3), **overrides})


def test_the_block_just_below_the_cached_one_does_not_run_in_the_steps(tokenizer, small_rt, tmp_path, one_thread):
    """Bug: one block below the cached one recomputed every step (the skip covering blocks 0..l-2). With
    the adapter on block 2, block 1 runs only while the cache is built (24 training rows in batches of
    BUILD_BATCH, and the dev set's one batch), never in the 6 steps or the 2 evaluations."""
    from layerwise.train import train
    from layerwise.train.prefix.cache import BUILD_BATCH

    task, train_ex, dev_ex, _ = small_rt
    model, stack = _adapted_bert(tokenizer.vocab_size, [2])
    calls = []
    stack.blocks[1].module.attention.register_forward_hook(lambda *a: calls.append(1))
    train(model, tokenizer, task, train_ex, dev_ex, _config(prefix_cache="memory"), tmp_path, show_progress=False)
    assert len(calls) == -(-24 // BUILD_BATCH) + 1


def test_the_cache_key_covers_every_block_below_the_cached_one(tokenizer) -> None:
    """Bug: the cache key missing the weights of the block just below l: a changed block l-1 reused a
    cache of another model's hidden states. Each block below l (and the embeddings) changes the key; block
    l and above do not (they are recomputed)."""
    from layerwise.train.prefix.cache import prefix_digest

    model, stack = _adapted_bert(tokenizer.vocab_size, [2])
    base = prefix_digest(model, stack, 2)
    for block, changes in ((0, True), (1, True), (2, False)):
        weight = stack.blocks[block].module.attention.output.dense.weight
        kept = weight.detach().clone()
        with torch.no_grad():
            weight[0, 0] += 1.0
        assert (prefix_digest(model, stack, 2) != base) is changes, block
        with torch.no_grad():
            weight.copy_(kept)
    assert prefix_digest(model, stack, 2) == base


def test_dev_metrics_with_the_cache_and_a_validation_split_are_the_dev_sets(tokenizer, small_rt, tmp_path,
                                                                             one_thread) -> None:
    """Bug: the dev set fed the validation split's cached rows (both sets' batches sit in one cache, the
    validation's first). Dev and validation loss of every evaluation with the cache are within fp32's spread
    of the same run without it, judged against a float64 run."""
    import json

    from numerics import assert_within_fp32_spread

    from layerwise.train import train

    task, train_ex, dev_ex, val_ex = small_rt
    evals = {}
    for name, dtype, mode in (("plain", torch.float32, "off"), ("cached", torch.float32, "memory"),
                              ("reference", torch.float64, "off")):
        model, _ = _adapted_bert(tokenizer.vocab_size, [2], dtype)
        result = train(model, tokenizer, task, train_ex, dev_ex, _config(prefix_cache=mode), tmp_path / name,
                       show_progress=False, validation_examples=val_ex)
        rows = [json.loads(line) for line in result.log_path.read_text().splitlines()]
        evals[name] = [r for r in rows if "eval" in r]
    assert len(evals["cached"]) == 2
    for key in ("eval", "validation"):
        losses = {name: np.array([r[key]["loss"] for r in rows], dtype=np.float64) for name, rows in evals.items()}
        assert_within_fp32_spread(losses["cached"], losses["plain"], losses["reference"], key)


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_a_bfloat16_cache_holds_bfloat16(tokenizer, small_rt, tmp_path, mode) -> None:
    """Bug: a bf16 cache stored as fp16. The stored hidden states are bfloat16, bit for bit the float32
    cache's values rounded to bfloat16."""
    from layerwise.data.collate import encode_examples
    from layerwise.train.prefix.cache import prepare_prefix_cache

    task, train_ex, _, _ = small_rt
    model, _ = _adapted_bert(tokenizer.vocab_size, [2])
    model.eval()
    features = encode_examples(train_ex, tokenizer, task, 32)
    exact, _ = prepare_prefix_cache(model, features, [], _config(prefix_cache=mode), tmp_path / "fp32", print)
    half, report = prepare_prefix_cache(model, features, [], _config(prefix_cache=mode,
                                                                      prefix_cache_dtype="bfloat16"),
                                        tmp_path / "bf16", print)
    assert report.dtype == "bfloat16" and half.train.data.dtype == torch.bfloat16
    assert torch.equal(half.train.data, exact.train.data.to(torch.bfloat16))
