"""`layerwise bench`: the method registry, aggregation over seeds, ratios to LoRA, rendering, the inference
measurement on a tiny decoder, and a small real bench on MiniLM that resumes without retraining."""

from __future__ import annotations

from dataclasses import replace

import json
import math
from pathlib import Path

import pytest

from layerwise.settings import BenchOptions, parse_int_list
from layerwise.runtime.errors import ConfigError
from layerwise.train import TrainConfig
from layerwise.bench import (BENCH_METHODS, BenchSettings, aggregate, build_cell, find_method,
                                       relative_to, resolve_methods, summarize)


def _concrete(name: str) -> str:
    """A registered name made concrete (``actnorm-top{k}`` -> ``actnorm-top2``)."""
    return name.replace("{k}", "2")


# -- aggregation ---------------------------------------------------------------------------------------
def test_summarize_is_mean_and_sample_std_ignoring_none() -> None:
    s = summarize([1.0, None, 2.0, 3.0])
    assert s == {"mean": 2.0, "std": 1.0, "n": 3}
    assert summarize([0.5]) == {"mean": 0.5, "std": 0.0, "n": 1}
    assert summarize([None]) == {"mean": None, "std": None, "n": 0}


def _cell(method: str, seed: int, score: float, params: int, seconds: float, memory: int) -> dict:
    return {"method": method, "seed": seed, "main_metric": "accuracy", "score": score,
            "metrics": {"accuracy": score, "loss": 1 - score}, "trainable_params": params,
            "train_seconds": seconds, "phase_seconds": {"forward": seconds / 2, "backward": seconds / 4,
                                                         "optimizer": seconds / 4},
            "peak_memory": memory, "memory_kind": "cpu_rss", "layers": [0, 1], "steps": 3, "scored_at": 3}


def test_aggregate_means_over_seeds_and_ratios_to_lora() -> None:
    cells = [_cell("lora", 1, 0.80, 100, 10.0, 1000), _cell("lora", 0, 0.70, 100, 14.0, 1000),
             _cell("top", 0, 0.78, 25, 6.0, 800), _cell("top", 1, 0.72, 25, 6.0, 900)]
    rows = aggregate(cells, model_params=10_000, inference={"top": {"unmerged": {"latency_ms": 1.0}}})
    lora, top = rows
    assert [r["method"] for r in rows] == ["lora", "top"] and lora["seeds"] == [0, 1]
    assert lora["score"]["mean"] == pytest.approx(0.75) and lora["score"]["std"] == pytest.approx(math.sqrt(0.005))
    assert top["metrics"]["loss"]["mean"] == pytest.approx(0.25)
    assert top["trainable_params"] == 25 and top["params_share"] == pytest.approx(0.0025)
    assert top["inference"] == {"unmerged": {"latency_ms": 1.0}} and lora["inference"] is None
    v = top["vs_baseline"]
    assert v["score_change_pct"] == pytest.approx(0.0) and v["params_pct"] == pytest.approx(25.0)
    assert v["time_pct"] == pytest.approx(50.0) and v["memory_pct"] == pytest.approx(85.0)
    assert v["phase_pct"]["forward"] == pytest.approx(50.0)
    assert lora["vs_baseline"]["time_pct"] == pytest.approx(100.0)
    assert relative_to(top, {**lora, "score": {"mean": 0.6}})["score_change_pct"] == pytest.approx(25.0)
    assert relative_to(top, {**lora, "score": {"mean": 0.6}})["score_diff"] == pytest.approx(0.15)
    assert aggregate(cells[2:])[0]["vs_baseline"] is None  # no lora row: nothing to compare with


# -- registry -------------------------------------------------------------------------------------------
def test_method_names_resolve_with_k_and_unknown_ones_list_the_registry() -> None:
    assert resolve_methods("lora,actnorm-top,ia3,lora", ks=[1, 3]) == ["lora", "actnorm-top1", "actnorm-top3", "ia3"]
    assert resolve_methods("actnorm-top2") == ["actnorm-top2"]
    every = resolve_methods("all", ks=[2])
    assert len(every) == len(BENCH_METHODS) and "actnorm-top2" in every and "full" in every
    assert find_method("actnorm-top12")[1] == 12
    with pytest.raises(ConfigError, match="--methods: unknown method 'foo'.*lora.*actnorm-top"):
        resolve_methods("lora,foo")
    with pytest.raises(ConfigError, match="--methods is empty"):
        resolve_methods(" , ")
    with pytest.raises(ConfigError, match="unknown method 'actnorm-topx'"):
        find_method("actnorm-topx")


def test_int_lists() -> None:
    assert parse_int_list("0-2,5", "--train-seeds") == (0, 1, 2, 5)
    with pytest.raises(ConfigError, match="--ks takes integers"):
        parse_int_list("a", "--ks")


@pytest.fixture(scope="module")
def tiny_bert_stack():
    """A 2-block random BERT with a classification head and its layer stack (for building peft configs)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from layerwise.models.layers import find_layer_stack

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2))
    return find_layer_stack(model)


@pytest.mark.parametrize("name", list(BENCH_METHODS))
def test_every_method_builds_its_cell(name: str, tiny_bert_stack) -> None:
    from layerwise.adapters.bridge import build_peft_config
    from layerwise.workflows.train import AdapterChoice, SelectionChoice

    method, _ = find_method(_concrete(name))
    settings = BenchSettings(rank=4, targets="q,v", card="card/card.json", num_layers=2)
    try:
        job = build_cell(_concrete(name), 3, TrainConfig(steps=7, lr=1e-3), settings)
    except ConfigError as err:
        if "needs layerwise.train.lalora" in str(err):
            pytest.skip(f"{name}: La-LoRA (layerwise.train.lalora) is not in this install")
        raise
    assert job.train_config.seed == 3 and job.train_config.steps == 7 and job.train_config.lr == 1e-3
    with_full_lr = build_cell(_concrete(name), 3, TrainConfig(steps=7, lr=1e-3), replace(settings, full_lr=5e-5))
    assert with_full_lr.train_config.lr == (5e-5 if name == "full" else 1e-3)  # --full-lr: full fine-tuning only
    if name == "full":
        assert job.full and job.selection is None and job.adapter is None
        return
    assert isinstance(job.selection, SelectionChoice) and isinstance(job.adapter, AdapterChoice) and not job.full
    assert (job.selection.card == settings.card) == method.needs_card
    rank = job.adapter.r_max
    build_peft_config(tiny_bert_stack, [0, 1], method=job.adapter.method, targets=job.adapter.targets, rank=rank,
                      total_steps=job.train_config.steps)  # the adapter is one peft accepts
    if method.needs_card:
        with pytest.raises(ConfigError, match="needs the bench's Layer Card"):
            build_cell(_concrete(name), 0, TrainConfig(steps=7), BenchSettings())


def test_output_folder_is_resumed_or_cleared_but_never_taken_over(tmp_path) -> None:
    from layerwise.bench.cells import prepare_out as _prepare_out

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds no bench"):
        _prepare_out(other, overwrite=False)
    bench = tmp_path / "bench"
    (bench / "cells" / "lora" / "seed0").mkdir(parents=True)
    (bench / "bench_config.json").write_text("{}")
    (bench / "notes.txt").write_text("mine")
    assert _prepare_out(bench, overwrite=False) == bench and (bench / "cells").exists()
    _prepare_out(bench, overwrite=True)
    assert not (bench / "cells").exists() and not (bench / "bench_config.json").exists()
    assert (bench / "notes.txt").read_text() == "mine"  # only the bench's own outputs are removed


def test_a_bench_made_before_a_training_field_existed_resumes_at_its_default(tmp_path) -> None:
    from layerwise.bench.cells import check_resume as _check_resume

    config = {"model": "m", "train_config": TrainConfig(steps=5).to_dict()}
    older = {"model": "m", "train_config": {k: v for k, v in config["train_config"].items() if k != "group_by_length"}}
    (tmp_path / "bench_config.json").write_text(json.dumps(older))
    _check_resume(tmp_path, config)  # the new field at its default: the same training
    changed = {"model": "m", "train_config": TrainConfig(steps=5, group_by_length=8).to_dict()}
    with pytest.raises(ConfigError, match="--group-by-length is 8, was None"):
        _check_resume(tmp_path, changed)
    with pytest.raises(ConfigError, match="--steps is 6, was 5"):
        _check_resume(tmp_path, {"model": "m", "train_config": TrainConfig(steps=6).to_dict()})


def test_a_bench_resumes_with_another_dev_eval(tmp_path) -> None:
    """--dev-eval decides when dev is scored, not what a cell reports at its chosen step: a bench recorded before
    the field existed (or with 'every') resumes with 'best', as benchmarks/deep.py's main stage does."""
    from layerwise.bench.cells import bench_config, check_resume as _check_resume
    from layerwise.settings import Calibration, DataSource, ModelSource

    def config(**train):
        return bench_config(ModelSource("minilm"), DataSource("mrpc", validation_fraction=0.1),
                            TrainConfig(steps=5, **train), 8, "q,v", Calibration())

    old = config()
    old["train_config"].pop("dev_eval", None)
    (tmp_path / "bench_config.json").write_text(json.dumps(old))
    _check_resume(tmp_path, config(dev_eval="best"))
    with pytest.raises(ConfigError, match="--eval-every is 2"):
        _check_resume(tmp_path, config(dev_eval="best", eval_every=2))


def test_a_bench_resumes_only_with_the_same_carving_and_precision(tmp_path) -> None:
    from layerwise.bench.cells import bench_config, check_resume as _check_resume
    from layerwise.settings import Calibration, DataSource, ModelSource

    def config(**data):
        return bench_config(ModelSource("minilm"), DataSource("mrpc", **data), TrainConfig(steps=5), 8, "q,v",
                            Calibration())

    old = config()
    del old["carving"], old["precision"]  # a bench recorded before these were
    (tmp_path / "bench_config.json").write_text(json.dumps(old))
    _check_resume(tmp_path, config())  # at their defaults: the same data
    with pytest.raises(ConfigError, match="--validation-fraction is 0.1, was None"):
        _check_resume(tmp_path, config(validation_fraction=0.1))
    (tmp_path / "bench_config.json").write_text(json.dumps(config(validation_fraction=0.1)))
    with pytest.raises(ConfigError, match="--train-subset is 100, was None"):
        _check_resume(tmp_path, config(validation_fraction=0.1, train_subset=100))


def test_render_synthetic_bench(tmp_path) -> None:
    from layerwise.bench.render import k_sweep, render_bench_md, write_bench

    cells = [_cell(m, s, 0.7 + 0.01 * s, p, t, 900) for m, p, t in (("lora", 100, 10.0), ("actnorm-top2", 30, 5.0),
                                                                    ("actnorm-top1", 15, 4.0)) for s in (0, 1)]
    inference = {"lora": {"unmerged": {"latency_ms": 2.0, "throughput": 500.0, "ttft_ms": 3.0, "itl_ms": 1.0},
                          "merged": {"latency_ms": 1.5, "throughput": 600.0, "ttft_ms": 2.5, "itl_ms": 0.8}}}
    result = {"config": {"model": "m", "task": "t", "methods": ["lora", "actnorm-top2", "actnorm-top1"],
                         "seeds": [0, 1], "rank": 8, "targets": "q,v", "baseline": "lora",
                         "train_config": {"steps": 3, "lr": 5e-4, "batch_size": 16}},
              "table": aggregate(cells, 1000, inference)}
    assert [s["k"] for s in k_sweep(result["table"])] == [1, 2]
    md = render_bench_md(result)
    assert "| actnorm-top2 | 0,1 | 0.7050 ± 0.0071 | 3 / 3 | 30 | 3.000% |" in md
    assert "| actnorm-top1 | +0.0000 | +0.00% |" in md  # the difference in accuracy units, then in %
    assert "TTFT ms unmerged" in md and "| 1 | 0,1 |" in md and "Relative to uniform LoRA" in md
    files = write_bench(tmp_path, {"schema_version": 1, **result})
    assert set(files) == {"json", "md", "score_png", "phases_png", "memory_png", "k_png"}
    assert all(p.stat().st_size > 0 for p in files.values())
    assert json.loads(files["json"].read_text())["schema_version"] == 1


# -- inference ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_inference_on_a_tiny_decoder_times_first_and_later_tokens() -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from layerwise.data.examples import Example
    from layerwise.data.tasks import get_task
    from layerwise.evaluate.inference import measure_adapter_inference, measure_inference
    from layerwise.models import resolve_model
    from layerwise.models.loading import load_tokenizer

    tok = load_tokenizer(resolve_model("smollm2-135m"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tok)))
    examples = [Example(f"Question: what is {i} + 1?\nAnswer:", target=str(i + 1)) for i in range(5)]
    task = get_task("gsm8k")
    r = measure_inference(model, tok, task, examples, batch_size=2, repeats=2, new_tokens=4)
    assert r["kind"] == "causal-lm" and r["examples"] == 5 and r["new_tokens"] == 4
    assert r["ttft_ms"] > 0 and r["itl_ms"] > 0 and r["latency_ms"] > 0 and r["throughput"] > 0
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    both = measure_adapter_inference(peft_model, tok, task, examples[:2], batch_size=2, repeats=1, new_tokens=3)
    assert both["merge_error"] is None and both["merged"]["itl_ms"] > 0 and both["unmerged"]["ttft_ms"] > 0
    with pytest.raises(ConfigError, match="new_tokens must be >= 2"):
        measure_inference(model, tok, task, examples, new_tokens=1)


# -- a real bench ---------------------------------------------------------------------------------------------
@pytest.fixture
def small_sst2(tmp_path, glue_dir) -> Path:
    """The first 300 training and 100 dev rows of the shared SST-2 (the whole set takes ~10 s per cell to
    tokenise on one CPU core)."""
    folder = tmp_path / "sst2"
    folder.mkdir()
    for name, rows in (("train.tsv", 301), ("dev.tsv", 101)):
        lines = (glue_dir / "SST-2" / name).read_text(encoding="utf-8").splitlines(keepends=True)
        (folder / name).write_text("".join(lines[:rows]), encoding="utf-8")
    return folder


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_small_real_bench_resumes_without_retraining(tmp_path, small_sst2, capsys) -> None:
    from layerwise.cli import main

    out = tmp_path / "bench"
    argv = ["bench", "--model", "minilm", "--task", "sst2", "--data", str(small_sst2), "--methods",
            "lora,actnorm-top2,pareto", "--train-seeds", "0,1", "--steps", "3", "--eval-max-examples", "32",
            "--inference-examples", "8", "--inference-repeats", "1", "--samples", "32", "--prefix-cache", "disk",
            "--out", str(out)]
    assert main(argv) == 0
    for name in ("bench.json", "bench.md", "bench_score.png", "bench_phases.png", "bench_memory.png", "bench_k.png",
                 "card/card.json"):
        assert (out / name).stat().st_size > 0, name
    result = json.loads((out / "bench.json").read_text())
    assert [r["method"] for r in result["table"]] == ["lora", "actnorm-top2", "pareto"] and len(result["cells"]) == 6
    top2 = result["table"][1]
    assert len(top2["layers"]) == 2 and top2["score"]["n"] == 2 and 0 < top2["vs_baseline"]["params_pct"] < 100
    assert top2["inference"]["merged"]["latency_ms"] > 0 and top2["params_share"] < 0.01
    md = (out / "bench.md").read_text()
    assert all(f"| {m} |" in md for m in ("lora", "actnorm-top2", "pareto"))
    pareto = result["table"][2]
    assert min(pareto["layers"]) > 0  # the balanced point of MiniLM's front: upper blocks, a frozen prefix below
    caches = {s: json.loads((out / "cells" / "pareto" / f"seed{s}" / "metrics.json").read_text())["prefix_cache"]
              for s in (0, 1)}  # the bench's shared prefix cache: built by the first seed, reused by the second
    assert caches[0]["used"] and not caches[0]["reused"] and caches[1]["used"] and caches[1]["reused"], caches
    assert len(list((out / "prefix_cache").iterdir())) >= 1
    lora = json.loads((out / "cells" / "lora" / "seed0" / "metrics.json").read_text())["prefix_cache"]
    assert not lora["used"]  # uniform LoRA adapts block 0: nothing to cache
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("cells/*/seed*/metrics.json")}
    assert len(stamps) == 6
    capsys.readouterr()
    assert main(argv) == 0  # resumed: every cell finished, nothing trained again
    assert {p: p.stat().st_mtime_ns for p in out.glob("cells/*/seed*/metrics.json")} == stamps
    assert "[1/6]" not in capsys.readouterr().err
    assert main([*argv, "--steps", "4"]) == 2  # the last value of a flag wins
    assert "--steps is 4, was 3" in capsys.readouterr().err
    assert main([*argv, "--methods", "lora,nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main([*argv, "--methods", "actnorm-top9"]) == 2  # checked on the card, before any training
    assert "--k must be in 1..6" in capsys.readouterr().err and not (out / "cells" / "actnorm-top9").exists()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_puts_the_old_bench_back_when_the_new_one_fails_early(tmp_path, monkeypatch) -> None:
    """``bench --overwrite`` moves the old bench aside; a failure before any cell of the new one finished
    restores it byte for byte (the user's own files untouched), and a resumed bench that fails is left alone."""
    from layerwise.workflows import bench as bench_workflow

    out = tmp_path / "bench"
    (out / "cells" / "lora" / "seed0").mkdir(parents=True)
    (out / "cells" / "lora" / "seed0" / "metrics.json").write_text('{"old": true}')
    (out / "bench_config.json").write_text("{}")
    (out / "bench.md").write_text("old table")
    (out / "notes.txt").write_text("mine")
    before = _snapshot(out)

    def fail(*args, **kwargs):
        raise RuntimeError("killed while loading the model")

    monkeypatch.setattr(bench_workflow, "_model_params", fail)
    options = BenchOptions(methods="lora", train_seeds="0")
    with pytest.raises(RuntimeError, match="killed"):
        bench_workflow.run_bench("minilm", "rotten-tomatoes", out, train_config=TrainConfig(steps=2),
                                 bench=options, overwrite=True, show_progress=False)
    assert _snapshot(out) == before and sorted(p.name for p in out.iterdir()) == sorted(
        ["cells", "bench_config.json", "bench.md", "notes.txt"])  # no hidden folder left behind
    with pytest.raises(ConfigError, match="holds a bench made with other settings"):  # resumed, refused: untouched
        bench_workflow.run_bench("minilm", "rotten-tomatoes", out, train_config=TrainConfig(steps=2),
                                 bench=options, show_progress=False)
    assert _snapshot(out) == before
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError, match="killed"):
        bench_workflow.run_bench("minilm", "rotten-tomatoes", fresh, train_config=TrainConfig(steps=2),
                                 bench=options, show_progress=False)
    assert not fresh.exists()  # a failed bench with nothing to resume leaves no new folder
