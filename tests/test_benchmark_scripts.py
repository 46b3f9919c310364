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
