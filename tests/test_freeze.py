"""Freeze as you go (``--freeze``): the criteria on synthetic histories, and runs on a tiny BERT with real data:
frozen weights stay bitwise, frozen blocks are a prefix, the moved cache equals a recomputed prefix within fp32
rounding, ``off`` changes nothing, resume after some blocks froze is bit-identical, and the Trainer callback."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from layerwise.adapters.bridge import apply_adapter
from layerwise.data.load import load_task
from layerwise.models.layers import find_layer_stack
from layerwise.runtime.errors import ConfigError
from layerwise.train import TrainConfig, train
from layerwise.train.freeze import (auto_decision, card_schedule, card_targets, kendall_tau, relative_changes,
                                    schedule_warning)
from layerwise.train.log import freeze_lines, read_log
from layerwise.train.prefix.frozen import quiet_frozen_prefix

from numerics import assert_within_fp32_spread
from tiny_models import tiny_bert

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")]

LAYERS = 4


@pytest.fixture(scope="module")
def rt():
    data = load_task("rotten-tomatoes")
    rng = random.Random(0)
    return data.task, rng.sample(data.train, 48), rng.sample(data.dev, 16)


def _config(**overrides) -> TrainConfig:
    base = dict(steps=12, lr=5e-3, batch_size=8, max_length=40, eval_every=6, warmup_ratio=0.2, seed=3)
    return TrainConfig(**{**base, **overrides})


def _adapted(tokenizer, double: bool = False):
    model = tiny_bert(tokenizer.vocab_size, layers=LAYERS)
    if double:
        model = model.double()
    stack = find_layer_stack(model)
    torch.manual_seed(0)
    peft_model = apply_adapter(model, stack, list(range(LAYERS)), method="lora", targets="q,v", rank=4)
    quiet_frozen_prefix(peft_model, stack, list(range(LAYERS)))
    return peft_model


IMPORTANCE = [2.0, 1.0, 3.0, 5.0]  # card order: block 1 first, then 0, then 2; block 3 kept (keep_top 1)


class _Snapshots:
    """Every adapter tensor after every step."""

    def __init__(self, model) -> None:
        self.model, self.steps = model, {}

    def on_step_end(self, state) -> None:
        self.steps[state.step] = {n: p.detach().clone() for n, p in self.model.named_parameters() if "lora_" in n}


class _StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state) -> None:
        state.should_stop = state.should_stop or state.step == self.step


def _adapter(result) -> dict[str, torch.Tensor]:
    return load_file(str(result.adapter_dir / "adapter_model.safetensors"))


def _block(name: str) -> int:
    return int(name.split(".layer.")[1].split(".")[0])


# --- the criteria ------------------------------------------------------------------------------------------

def test_the_auto_rule_fires_exactly_as_specified_on_a_synthetic_history():
    previous = [1.0, 1.0, 1.0, 1.0]
    # changes 0.05, 0.5, 1.0, 0.2: the median of the trainable blocks' changes is (0.2 + 0.5) / 2 = 0.35
    fire, info = auto_decision(previous, [1.05, 1.5, 2.0, 1.2], frozen=0, keep_top=1, percentile=50)
    assert fire and info["threshold"] == pytest.approx(0.35) and info["candidate"] == 0
    assert info["changes"] == pytest.approx([0.05, 0.5, 1.0, 0.2])
    # its own change moves the median: 0.6 against median (0.5 + 0.6) / 2 = 0.55
    assert not auto_decision(previous, [1.6, 1.5, 2.0, 1.2], 0, 1, 50)[0]
    assert not auto_decision(previous, [0.4, 1.5, 2.0, 1.2], 0, 1, 50)[0]  # a fall counts as |change|: 0.6
    assert auto_decision(previous, [0.6, 1.5, 2.0, 1.2], 0, 1, 50)[0]  # 0.4 < median 0.45
    # only the still-trainable blocks make the threshold: blocks 1..3 change 0.45, 1.0, 0.2 -> median 0.45
    fire, info = auto_decision(previous, [9.0, 1.45, 2.0, 1.2], frozen=1, keep_top=1, percentile=50)
    assert not fire and info["threshold"] == pytest.approx(0.45) and info["candidate"] == 1
    assert auto_decision(previous, [9.0, 1.3, 2.0, 1.2], 1, 1, 50)[0] is False  # 0.3 vs median 0.3: strict <
    assert auto_decision(previous, [9.0, 1.3, 2.0, 1.2], 1, 1, 60)[0] is True  # 60th pct 0.38
    # the kept top blocks never freeze; the first check has no previous interval
    assert auto_decision(previous, [1.0, 1.0, 1.0, 5.0], frozen=3, keep_top=1, percentile=100)[0] is False
    assert auto_decision(None, [1.0, 1.0, 1.0, 5.0], frozen=0, keep_top=1, percentile=100)[0] is False
    assert relative_changes([0.0, 2.0], [1.0, 1.0]) == [math.inf, 0.5]
    # equal changes everywhere: nothing is below the percentile
    assert auto_decision(previous, [2.0, 2.0, 2.0, 2.0], 0, 1, 50)[0] is False


def test_the_card_schedule_orders_by_importance_and_keeps_a_bottom_prefix():
    assert card_targets([3.0, 1.0, 2.0, 5.0, 9.0], 100, 1, 0.3, 0.7) == [57, 30, 43, 70]
    assert card_schedule([3.0, 1.0, 2.0, 5.0, 9.0], 100, 1, 0.3, 0.7) == [57, 57, 57, 70]
    assert card_schedule([1.0, 2.0, 3.0], 10, 1, 0.2, 0.6) == [2, 6]
    assert card_schedule([1.0, 2.0], 10, 2, 0.2, 0.6) == []
    # importance falling with depth (SmolLM2's card): the prefix waits for block 0, and all freeze at once
    falling = card_schedule([9.0, 5.0, 3.0, 2.0, 1.0], 100, 1, 0.1, 0.5)
    assert falling == [50, 50, 50, 50]
    assert "blocks 0-3 (4 of 4 freezable) all freeze after step 50" in schedule_warning(falling, [0, 1, 2, 3])
    assert schedule_warning(card_schedule([1.0, 2.0, 3.0, 5.0, 9.0], 100, 1, 0.1, 0.5), [0, 1, 2, 3]) is None
    assert schedule_warning([57, 57, 57, 70], [0, 1, 2, 3]) is not None and schedule_warning([2, 6], [0, 1]) is None
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
    assert kendall_tau([1, 1], [2, 3]) is None


def test_config_checks_the_freeze_flags():
    with pytest.raises(ConfigError, match="--freeze-percentile"):
        _config(freeze="auto", freeze_percentile=0)
    with pytest.raises(ConfigError, match="--freeze-start"):
        _config(freeze="card", freeze_start=0.8, freeze_end=0.5)
    assert _config(freeze="auto", eval_every=0).freeze_interval == 1  # a tenth of 12 steps
    assert _config(freeze="auto", eval_every=6).freeze_interval == 6
    assert _config(freeze="auto", eval_every=6, freeze_every=2).freeze_interval == 2
    with pytest.raises(ConfigError, match="--freeze card does not support --gradient-checkpointing"):
        _config(freeze="card", gradient_checkpointing=True)
    with pytest.raises(ConfigError, match="--freeze must be one of"):
        _config(freeze="sometimes")


# --- runs ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cache", ["auto", "off", "dropout"])
def test_frozen_weights_stay_bitwise_and_frozen_blocks_are_a_prefix(tokenizer, rt, tmp_path, cache):
    """With the cache the frozen blocks do not even run; without it (or with --prefix-dropout, which keeps
    their dropout and so cannot cache) they run and requires_grad=False keeps them out of the backward and the
    optimizer."""
    model = _adapted(tokenizer)
    snaps = _Snapshots(model)
    extra = {"prefix_dropout": True} if cache == "dropout" else {"prefix_cache": cache}
    cfg = _config(freeze="card", freeze_start=0.25, freeze_end=0.6, **extra)
    result = train(model, tokenizer, *rt, cfg, tmp_path / "card", callbacks=[snaps], show_progress=False,
                   freeze_importance=IMPORTANCE)
    rec = result.freeze
    # targets: block 1 at 3, block 0 at 5 (0.4 x 12 = 4.8), block 2 at 7; the prefix rule makes them 5, 5, 7
    assert rec["card_schedule"] == [5, 5, 7]
    assert rec["freeze_step"] == {"0": 5, "1": 5, "2": 7, "3": None}
    assert rec["depth"] == [[0, 4], [5, 3], [5, 2], [7, 1]]
    lines = freeze_lines(read_log(tmp_path / "card" / "train_log.jsonl"))  # one line per step that froze blocks
    assert [(r["step"], r["freeze"]["frozen"], r["freeze"]["trainable"]) for r in lines] == [(5, 2, 2), (7, 3, 1)]
    assert all(r["freeze"]["fill_s"] > 0 for r in lines) == (cache == "auto")  # the cache is filled
    steps = [s for s in rec["freeze_step"].values()]
    frozen = [s is not None for s in steps]
    assert frozen == sorted(frozen, reverse=True)  # a prefix: no trainable block below a frozen one
    final = _adapter(result)
    moved_after = {b: False for b in range(LAYERS)}
    for name in snaps.steps[12]:
        b = _block(name)
        at = rec["freeze_step"][str(b)]
        if at is None:
            continue
        for step in range(at, 13):  # from the step it froze after to the end: bitwise the same
            assert torch.equal(snaps.steps[step][name], snaps.steps[at][name]), (name, step)
        if "lora_B" in name:  # and it did train before (B starts at 0)
            moved_after[b] |= not torch.equal(snaps.steps[at - 1][name], snaps.steps[at][name])
    assert all(moved_after[b] for b in (0, 1, 2))
    lora = [k for k in final if "lora_" in k]
    assert len(lora) == 2 * 2 * LAYERS  # the adapter still holds every block's LoRA weights (q, v; A, B)
    for name in lora:  # and the frozen ones as they were when they froze
        b = _block(name)
        if rec["freeze_step"][str(b)] is not None:
            tail = name.split("bert.")[1].replace(".weight", ".default.weight")
            live = next(k for k in snaps.steps[12] if k.endswith(tail))
            assert torch.equal(final[name], snaps.steps[12][live]), name
    metrics = json.loads((tmp_path / "card" / "metrics.json").read_text())
    assert metrics["freeze"]["freeze_step"] == rec["freeze_step"] and metrics["config"]["freeze"] == "card"
    assert (metrics["freeze"]["cache_fill_seconds"] > 0) == (cache == "auto")
    assert len(metrics["freeze"]["epoch_seconds"]) == 2  # 48 examples / 8 = 6 steps an epoch
    assert (tmp_path / "card" / "freeze.png").stat().st_size > 0


def test_freeze_off_and_a_freezer_that_never_fires_are_bit_identical_to_uniform_lora(tokenizer, rt, tmp_path):
    plain = train(_adapted(tokenizer), tokenizer, *rt, _config(), tmp_path / "plain", show_progress=False)
    off = train(_adapted(tokenizer), tokenizer, *rt, _config(freeze="off"), tmp_path / "off", show_progress=False)
    idle = train(_adapted(tokenizer), tokenizer, *rt, _config(freeze="auto", freeze_every=1000),
                 tmp_path / "idle", show_progress=False)
    assert off.freeze is None and idle.freeze["frozen"] == 0
    a, b, c = _adapter(plain), _adapter(off), _adapter(idle)
    for name in a:
        assert torch.equal(a[name], b[name]) and torch.equal(a[name], c[name]), name
    assert plain.final_metrics == off.final_metrics == idle.final_metrics


def test_the_moved_cache_equals_the_recomputed_prefix_with_the_frozen_adapters(tokenizer, rt):
    from layerwise.train.freezing import Freezer
    from layerwise.data.collate import encode_examples
    from layerwise.models.layers import unwrap_model

    task, train_ex, _ = rt
    features = encode_examples(train_ex[:20], tokenizer, task, 40)

    def frozen_model(double: bool):
        model = _adapted(tokenizer, double)
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():  # trained-looking adapters: B is no longer zero
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * 0.5)
        return model

    def recomputed(model, layer: int) -> list[torch.Tensor]:
        """Block ``layer``'s input for each example alone (batch of one, no padding), prefix in eval mode."""
        blocks = unwrap_model(model).get_submodule(find_layer_stack(model).path)
        rows, seen = [], {}
        handle = blocks[layer].register_forward_pre_hook(lambda m, a, k: seen.__setitem__("h", a[0] if a else
                                                         k["hidden_states"]), with_kwargs=True)
        model.eval()
        with torch.no_grad():
            for f in features:
                model(**{k: torch.tensor([f[k]]) for k in ("input_ids", "attention_mask", "token_type_ids")})
                rows.append(seen["h"][0].clone())
        handle.remove()
        return rows

    model = frozen_model(False)
    cfg = _config(freeze="card")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
    freezer = Freezer(model, cfg, features, optimizer, IMPORTANCE)
    freezer.freeze_next(1)
    freezer.freeze_next(2)  # blocks 0 and 1: the cache holds block 2's input, built 0 -> 1 -> 2
    assert freezer.cache.skipper.layer == 2
    store = freezer.cache.train
    got = torch.cat([store.data[int(store.offsets[i]):int(store.offsets[i + 1])] for i in range(len(features))])
    base = torch.cat(recomputed(model, 2))
    ref = torch.cat(recomputed(frozen_model(True), 2))
    assert_within_fp32_spread(got, base, ref, "cached rows of block 2")
    # the frozen adapters are applied: the same prefix without them is far off
    plain = _adapted(tokenizer)
    assert float((torch.cat(recomputed(plain, 2)) - ref.float()).norm()) > 1e3 * float((got - ref).norm())


def test_resume_after_some_blocks_froze_is_bit_identical(tokenizer, rt, tmp_path):
    cfg = _config(freeze="auto", freeze_every=2, freeze_percentile=100)
    whole = train(_adapted(tokenizer), tokenizer, *rt, cfg, tmp_path / "whole", show_progress=False)
    assert 0 < whole.freeze["frozen"] and whole.freeze["freeze_step"]["0"] < 7
    out = tmp_path / "stopped"
    first = train(_adapted(tokenizer), tokenizer, *rt, cfg, out, callbacks=[_StopAt(7)], show_progress=False)
    assert first.steps == 7 and first.freeze["frozen"] >= 1  # stopped mid-interval, with blocks frozen
    resumed = train(_adapted(tokenizer), tokenizer, *rt, cfg, out, resume=True, show_progress=False)
    assert resumed.steps == 12
    assert resumed.freeze["freeze_step"] == whole.freeze["freeze_step"]
    assert resumed.freeze["checks"] == whole.freeze["checks"]  # every change and threshold, bit for bit
    a, b = _adapter(whole), _adapter(resumed)
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed.final_metrics == whole.final_metrics


def test_unsupported_combinations_are_refused_naming_freeze(tokenizer, rt, tmp_path):
    from layerwise.settings import AdapterChoice, AdaptiveRanks
    from layerwise.train.freezing import check_freeze

    with pytest.raises(ConfigError, match="--freeze card needs a Layer Card"):
        train(_adapted(tokenizer), tokenizer, *rt, _config(freeze="card"), tmp_path / "nocard", show_progress=False)
    with pytest.raises(ConfigError, match="--freeze auto is not supported with AdaLoRA"):
        check_freeze(_config(freeze="auto"), AdapterChoice("adalora", "q,v", 4))
    with pytest.raises(ConfigError, match="--freeze auto is not supported with La-LoRA"):
        check_freeze(_config(freeze="auto"), AdapterChoice("lora", "q,v", 4, adaptive=AdaptiveRanks(r_max=4)))
    with pytest.raises(ConfigError, match="--freeze auto freezes adapted blocks; full fine-tuning"):
        check_freeze(_config(freeze="auto"), None)
    check_freeze(_config(), None)  # off: anything goes (torchrun is supported: tests/test_distributed.py)


# --- the Hugging Face Trainer ------------------------------------------------------------------------------

def _trainer_rows(n: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (n, 10), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(10, dtype=torch.long),
             "labels": torch.tensor(int(ids[i, 0] > 50))} for i in range(n)]


@pytest.mark.parametrize("mode", ["card", "auto"])
def test_the_trainer_callback_freezes_a_prefix_whose_weights_stay_bitwise(tmp_path, mode):
    import peft
    import transformers

    from layerwise import FreezeTrainerCallback

    model = tiny_bert(100, layers=LAYERS)
    model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    options = (dict(importance=IMPORTANCE, start=0.25, end=0.6) if mode == "card"
               else dict(every=2, percentile=100))
    freeze = FreezeTrainerCallback(model, mode=mode, **options)
    snaps = {}

    class Snap(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            snaps[state.global_step] = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=8,
                                          report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                                          learning_rate=5e-2, seed=0)
    transformers.Trainer(model=model, args=args, train_dataset=_trainer_rows(),
                         callbacks=[freeze, Snap()]).train()
    rec = json.loads((tmp_path / "freeze.json").read_text())
    if mode == "card":  # the same schedule as `layerwise train --freeze card` on 12 steps
        assert rec["freeze_step"] == {"0": 5, "1": 5, "2": 7, "3": None}
    steps = list(rec["freeze_step"].values())
    assert steps[0] is not None and steps[-1] is None  # something froze; the top block never does
    frozen = [s is not None for s in steps]
    assert frozen == sorted(frozen, reverse=True)
    for name in snaps[12]:
        at = rec["freeze_step"][str(_block(name))]
        if at is not None:
            assert all(torch.equal(snaps[s][name], snaps[at][name]) for s in range(at, 13)), name
            assert not dict(model.named_parameters())[name].requires_grad
    top = [n for n in snaps[12] if _block(n) == LAYERS - 1 and "lora_B" in n]
    assert all(not torch.equal(snaps[12][n], snaps[1][n]) for n in top)  # the unfrozen block kept training


# --- the command, its record and report, the bench methods --------------------------------------------------

def _layerwise(*args: str):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LAYERWISE_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (str(repo), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True, text=True, env=env,
                          timeout=600)


TINY = ("--model", "minilm", "--task", "rotten-tomatoes", "--batch-size", "8", "--max-length", "32",
        "--train-subset", "64", "--eval-max-examples", "16")


def test_train_command_freezes_records_and_reports(tmp_path):
    from layerwise.evaluate.report import collect_run, freeze_lines

    out = tmp_path / "run"
    proc = _layerwise("train", *TINY, "--policy", "all", "--steps", "10", "--freeze", "auto", "--freeze-every", "2",
                      "--freeze-percentile", "100", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    f = metrics["freeze"]
    assert f["mode"] == "auto" and f["blocks"] == list(range(6)) and f["frozen"] >= 1
    steps = list(f["freeze_step"].values())
    assert steps[-1] is None and [s is not None for s in steps] == sorted([s is not None for s in steps], reverse=True)
    assert f["depth"][0] == [0, 6] and f["depth"][-1][1] == 6 - f["frozen"]
    assert len(f["epoch_seconds"]) == 1 and f["cache_fill_seconds"] > 0  # 64 examples / 8 = one epoch of 8 steps
    assert "freeze: auto" in (out / "config.yaml").read_text() and (out / "freeze.png").stat().st_size > 0
    line = freeze_lines([collect_run(out, "uniform+freeze")])
    assert "--freeze auto; frozen (block@step) 0@" in line[-1]
    refused = _layerwise("train", *TINY, "--policy", "all", "--steps", "2", "--freeze", "auto", "--freeze-every", "2",
                         "--adaptive-ranks", "--out", str(tmp_path / "no"))
    assert refused.returncode == 2 and "--freeze auto is not supported with La-LoRA" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_bench_methods_set_the_schedule():
    from layerwise.bench.methods import BenchSettings, build_cell, find_method

    cfg = _config()
    auto = build_cell("freeze-auto", 1, cfg, BenchSettings())
    assert auto.train_config.freeze == "auto" and auto.train_config.seed == 1 and auto.selection.policy == "all"
    card = build_cell("freeze-card", 0, cfg, BenchSettings(card="card.json"))
    assert card.train_config.freeze == "card" and card.selection.card == "card.json"
    assert find_method("freeze-card")[0].needs_card and not find_method("freeze-auto")[0].needs_card
    assert build_cell("lora", 0, cfg, BenchSettings()).train_config.freeze == "off"
