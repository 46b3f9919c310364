"""The benchmark scripts run: every one parses its flags, and the La-LoRA benchmark runs end to end on a few
steps of real SST-2 with MiniLM and writes the figures the README quotes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if p.name != "lockstep_args.py")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_script_parses_its_flags(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_adaptive_rank_benchmark_end_to_end(glue_dir, tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, str(REPO / "benchmarks" / "adaptive_rank.py"), "--data", str(glue_dir / "SST-2"),
           "--steps", "3", "--max-length", "32", "--eval-max-examples", "16", "--timing-steps", "1",
           "--threads", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    runs = summary["runs"]
    assert set(runs) == {"adaptive", "fixed", "uniform"}
    ranks = summary["final_ranks"]
    assert len(ranks) == 6 and all(1 <= r <= 8 for r in ranks)
    assert runs["fixed"]["rank"] == 8
    assert runs["uniform"]["rank"] == max(1, round(sum(ranks) / len(ranks)))
    assert runs["uniform"]["lora_params"] == runs["uniform"]["rank"] * 6 * 2 * (384 + 384)
    for run in runs.values():
        assert run["train_s"] > 0 and run["median_step_s"] > 0 and run["late_median_step_s"] > 0
        assert 0.0 <= run["score"] <= 1.0
    assert summary["allocation_ms"] > 0 and set(summary["timed_step_ms"]) == {"adaptive", "fixed"}
    assert "training in lockstep" in done.stdout and "adaptive - uniform" in done.stdout


def test_prefix_cache_benchmark_end_to_end(glue_dir, tmp_path):
    """The script runs on today's API (a tiny subset, 2 epochs): every cached run used its cache and scored
    as the same selection without it."""
    out = tmp_path / "bench"
    cmd = [sys.executable, str(REPO / "benchmarks" / "prefix_cache.py"), "--data", str(glue_dir / "SST-2"),
           "--train-examples", "32", "--epochs", "2", "--batch-size", "16", "--dev-examples", "16",
           "--max-length", "32", "--threads", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("half", "top2"):
        cached, plain = (json.loads((out / f"{name}-{kind}" / "metrics.json").read_text())
                         for kind in ("cache", "nocache"))
        assert cached["prefix_cache"]["used"] and not plain["prefix_cache"]["used"]
        assert cached["final"]["accuracy"] == plain["final"]["accuracy"]
    assert "with / without cache" in done.stdout


def test_converged_benchmark_sweeps_on_validation_then_benches_in_parts(glue_dir, tmp_path):
    """benchmarks/converged.py on a sliver of MRPC: the sweep picks each rate by the validation split; two
    parts (one seed each) combine into one bench whose scores are dev at the validation split's best step."""
    out = tmp_path / "conv"
    base = [sys.executable, str(REPO / "benchmarks" / "converged.py"), "--task", "mrpc", "--data",
            str(glue_dir / "MRPC"), "--out", str(out), "--train-subset", "160", "--validation-fraction", "0.2",
            "--epochs", "1", "--evals-per-epoch", "2", "--batch-size", "32", "--max-length", "48",
            "--lora-lrs", "1e-4,5e-3", "--full-lrs", "1e-5", "--methods", "lora,full,random2"]
    for extra in (["--seeds", "0", "--part", "a"], ["--seeds", "1", "--part", "b"],
                  ["--seeds", "0,1", "--combine", "a,b"]):
        done = subprocess.run(base + extra, capture_output=True, text=True, timeout=900, cwd=REPO,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
    sweep = json.loads((out / "sweep.json").read_text())
    lora = sweep["lora"]
    assert sweep["lora_lr"] == float(max(lora, key=lambda lr: lora[lr]["validation"]))
    assert sweep["full_lr"] == 1e-5
    bench = json.loads((out / "bench" / "bench.json").read_text())
    assert {(c["method"], c["seed"]) for c in bench["cells"]} == {
        (m, s) for m in ("lora", "full", "random2") for s in (0, 1)}
    assert not (out / "bench-b").exists() or not any((out / "bench-b").glob("cells/*/seed*/metrics.json"))
    for cell in bench["cells"]:
        folder = out / "bench" / "cells" / cell["method"] / f"seed{cell['seed']}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["selected_on"] == "validation" and metrics["validation_examples"] == 32
        evals = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()
                 if '"eval"' in line]
        val = [e["validation"]["accuracy"] for e in evals]
        chosen = evals[val.index(max(val))]
        assert cell["score"] == chosen["eval"]["accuracy"] and metrics["best_step"] == chosen["step"]
    # the random control draws other layers for another seed
    layers = {c["seed"]: tuple(c["layers"]) for c in bench["cells"] if c["method"] == "random2"}
    assert all(len(v) == 2 for v in layers.values())
    md = (out / "converged.md").read_text()
    assert "majority-class baseline on dev (always class 1" in md and "Learning-rate sweep" in md
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_freeze_lockstep_benchmark_end_to_end(glue_dir, tmp_path):
    """benchmarks/freeze_lockstep.py on a sliver of MRPC: uniform, freeze-auto (two variants) and freeze-card
    side by side on an epoch budget with early stopping; the card's schedule froze blocks, the summary holds the
    ratios, the variant with the better validation score is chosen, and --combine rebuilds the summary."""
    out = tmp_path / "bench"
    cmd = [sys.executable, str(REPO / "benchmarks" / "freeze_lockstep.py"), "--data", str(glue_dir / "MRPC"),
           "--train-subset", "48", "--epochs", "2", "--evals-per-epoch", "1", "--patience", "3",
           "--freeze-every", "2", "--samples", "16", "--max-length", "32", "--out", str(out),
           "--methods", "uniform,freeze-auto,freeze-auto+every=1+percentile=90,freeze-card"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == ["uniform", "freeze-auto", "freeze-auto+every=1+percentile=90", "freeze-card"]
    assert summary["methods"]["uniform"]["time_ratio_mean"] == 1.0
    runs = summary["runs"]["0"]
    assert runs["uniform"]["steps"] == 6  # 43 training examples, batch 16: 3 steps an epoch, 2 epochs
    assert runs["freeze-auto"]["freeze"]["every"] == 2 and runs["freeze-auto+every=1+percentile=90"]["freeze"][
        "every"] == 1
    variants = ["freeze-auto", "freeze-auto+every=1+percentile=90"]
    best = max(variants, key=lambda m: summary["methods"][m]["validation_mean"])  # first wins a tie
    assert summary["chosen"]["freeze-auto"] == best
    card = runs["freeze-card"]["freeze"]
    assert card["mode"] == "card" and card["frozen"] == 5 and card["card_schedule"]
    assert "time ratio" in done.stdout
    combined = tmp_path / "combined.json"

    def combine(*parts: Path) -> dict:
        """freeze_lockstep.py --combine of ``parts``: the combined summary."""
        done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "freeze_lockstep.py"), "--combine",
                               ",".join(map(str, parts)), "--out", str(combined)], capture_output=True, text=True,
                              timeout=120, cwd=REPO)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(combined.read_text())

    assert combine(out / "summary.json")["methods"] == summary["methods"]
    # a second seed's part that ran fewer methods: the combined summary keeps the methods both parts ran
    part = {"runs": {"1": {m: r for m, r in runs.items() if m != "freeze-auto"}},
            "methods": {m: r for m, r in summary["methods"].items() if m != "freeze-auto"}}
    (tmp_path / "part1.json").write_text(json.dumps(part))
    both = combine(out / "summary.json", tmp_path / "part1.json")
    assert both["seeds"] == ["0", "1"] and "freeze-auto" not in both["methods"]
    assert both["chosen"]["freeze-auto"] == "freeze-auto+every=1+percentile=90"
    # a second process for the same seed (other variants, its own uniform run): each run's time ratio is against
    # the uniform LoRA it ran beside; the uniform run of the first part is kept
    u = runs["uniform"]["train_seconds"]
    later = {"runs": {"0": {"uniform": {**runs["uniform"], "train_seconds": 2 * u},
                            "freeze-card+start=0.1": {**runs["freeze-card"], "train_seconds": u}}},
             "methods": {"uniform": {}, "freeze-card+start=0.1": {}}}
    (tmp_path / "later.json").write_text(json.dumps(later))
    merged = combine(out / "summary.json", tmp_path / "later.json")
    assert merged["methods"]["freeze-card+start=0.1"]["time_ratio_per_seed"] == [0.5]
    assert merged["methods"]["uniform"]["train_seconds_mean"] == u
    assert merged["methods"]["freeze-card"]["time_ratio_per_seed"] == summary["methods"]["freeze-card"][
        "time_ratio_per_seed"]
    bad = subprocess.run(cmd[:-1] + ["uniform,freeze-auto+often=2"], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert bad.returncode != 0 and "often" in bad.stderr and "every" in bad.stderr
