"""The `layerwise` command end to end (subprocesses: what a user types)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the subprocesses import this checkout's layerwise, whatever the caller's PYTHONPATH
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "LAYERWISE_PROGRESS": "0",
       "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


def layerwise(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"layerwise {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_help_imports_nothing_heavy() -> None:
    # What keeps --help instant (no wall-clock limit here: it would flake on a loaded machine)
    code = ("import sys, layerwise.cli as c; c.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert out.stdout.strip() == "[]", out.stderr
    proc = layerwise("--help")
    for cmd in ("models", "inspect", "card"):
        assert cmd in proc.stdout


def test_models_lists_aliases() -> None:
    rows = json.loads(layerwise("models", "--json").stdout)
    by = {r["alias"]: r for r in rows}
    assert by["minilm"]["layers"] == 6 and by["minilm"]["installed"]
    assert by["smollm2-135m"]["layers"] == 30


def test_bad_input_is_a_clear_error_without_traceback() -> None:
    proc = layerwise("inspect", "--model", "bogus", check=False)
    assert proc.returncode == 2 and "unknown model 'bogus'" in proc.stderr and "Traceback" not in proc.stderr
    proc = layerwise("card", "--metrics", "nope", "--out", "/tmp/never", check=False)
    assert proc.returncode == 2 and "--metrics" in proc.stderr and "actnorm" in proc.stderr


@pytest.mark.slow
def test_inspect_default_model_and_data() -> None:
    report = json.loads(layerwise("inspect", "--json").stdout)
    assert report["model"]["name"] == "minilm" and report["layers"]["count"] == 6
    assert report["data"]["task"] == "rotten-tomatoes"
    assert report["data"]["train"] + report["data"]["dev"] == 8530


@pytest.mark.slow
def test_card_command_writes_files_and_refuses_overwrite(tmp_path: Path, glue_dir: Path) -> None:
    out = tmp_path / "card"
    args = ("card", "--model", "minilm", "--task", "sst2", "--data", str(glue_dir / "SST-2"), "--samples", "32",
            "--metrics", "actnorm,cka,gradnorm,cost", "--out", str(out))
    proc = layerwise(*args)
    assert "Layer Card for minilm: 6 layers" in proc.stdout
    assert {p.name for p in out.iterdir()} == {"card.json", "card.md", "card.png", "config.yaml"}
    again = layerwise(*args, check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    layerwise(*args, "--overwrite")
    few = layerwise("card", "--samples", "4", "--batch-size", "16", "--out", str(tmp_path / "x"), check=False)
    assert few.returncode == 2 and "--samples" in few.stderr
    # the resolved settings reproduce the card (and flags given on the command line win)
    import yaml

    settings = yaml.safe_load((out / "config.yaml").read_text())
    assert settings["samples"] == 32 and settings["calibration_seed"] == 0 and settings["task"] == "sst2"
    layerwise("card", "--config", str(out / "config.yaml"), "--out", str(tmp_path / "again"), "--no-plots")
    first, second = (json.loads((d / "card.json").read_text()) for d in (out, tmp_path / "again"))
    assert second["metrics"]["actnorm"]["values"] == first["metrics"]["actnorm"]["values"]
    assert sorted(second["metrics"]) == sorted(first["metrics"])


# --- train, run and stability end to end (MiniLM, the bundled Rotten Tomatoes, a few tiny steps) ----------------

HIDDEN = 384  # MiniLM
LORA_QV = 2 * 8 * (HIDDEN + HIDDEN)  # rank 8 on query and value of one block
HEAD = HIDDEN * 2 + 2  # the 2-label classifier, trained with the adapter
BLOCK_FLOPS = 2 * (4 * HIDDEN * HIDDEN + 2 * HIDDEN * 1536)  # q, k, v, o, intermediate, output; per token
TINY = ("--model", "minilm", "--task", "rotten-tomatoes", "--batch-size", "8", "--max-length", "32")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.slow
def test_train_command_trains_the_chosen_layers(tmp_path: Path) -> None:
    out = tmp_path / "train"
    proc = layerwise("train", *TINY, "--policy", "manual", "--layers", "4,5", "--steps", "3",
                     "--eval-max-examples", "16", "--out", str(out))
    assert "trained 3 steps" in proc.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["trainable_params"] == 2 * LORA_QV + HEAD == 25346
    assert (metrics["final"]["accuracy"] * 16).is_integer() and 0 <= metrics["final"]["f1"] <= 1
    log = [r for r in read_jsonl(out / "train_log.jsonl") if "step" in r and "loss" in r]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert metrics["train_seconds"] == pytest.approx(sum(r["step_s"] for r in log), rel=1e-6)
    from safetensors.torch import load_file

    tensors = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    lora = {k: v for k, v in tensors.items() if "lora_" in k}
    assert sorted({k.split(".encoder.layer.")[1].split(".")[0] for k in lora}) == ["4", "5"] and len(lora) == 8
    assert all(v.shape in {(8, HIDDEN), (HIDDEN, 8)} for v in lora.values())
    assert all(float(v.abs().sum()) > 0 for k, v in lora.items() if "lora_B" in k)  # B starts at 0: it trained
    assert sum(v.numel() for v in tensors.values()) == metrics["trainable_params"]
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(f"bert.encoder.layer.{i}.attention.self.{m}"
                                                      for i in (4, 5) for m in ("query", "value"))


@pytest.mark.slow
def test_run_command_selects_by_its_card_and_reports_against_uniform(tmp_path: Path) -> None:
    out = tmp_path / "run"
    layerwise("run", *TINY, "--samples", "16", "--steps", "2", "--eval-max-examples", "16", "--policy", "top-k",
              "--metric", "gradnorm", "--k", "2", "--metrics", "gradnorm,actnorm,cost", "--out", str(out))
    card = json.loads((out / "card" / "card.json").read_text())
    values = card["metrics"]["gradnorm"]["values"]
    top2 = sorted(sorted(range(6), key=lambda i: -values[i])[:2])
    report = json.loads((out / "report.json").read_text())
    selected, uniform = report["runs"]
    assert selected["layers"] == top2 and uniform["layers"] == list(range(6))
    assert selected["trainable_params"] == 2 * LORA_QV + HEAD and uniform["trainable_params"] == 6 * LORA_QV + HEAD
    # adapters' own FLOPs (6 per multiply-add and rank: forward + backward) plus the forward of every block from
    # the lowest adapted one up
    flops = 2 * 2 * 6 * 8 * (HIDDEN + HIDDEN) + (6 - top2[0]) * BLOCK_FLOPS
    assert selected["selection"]["cost"] == {"params": 2 * LORA_QV, "flops": flops}
    for run, folder in ((selected, "selected"), (uniform, "uniform")):
        metrics = json.loads((out / folder / "metrics.json").read_text())
        assert run["score"] == metrics["final"]["accuracy"] and metrics["steps"] == 2
        assert run["train_seconds"] == pytest.approx(metrics["train_seconds"])
    assert selected["vs_uniform"]["score"] == pytest.approx(selected["score"] / uniform["score"])
    assert selected["vs_uniform"]["trainable_params"] == pytest.approx((2 * LORA_QV + HEAD) / (6 * LORA_QV + HEAD))
    assert "uniform LoRA" in (out / "report.md").read_text()


@pytest.mark.slow
def test_stability_command_compares_the_seeds_cards(tmp_path: Path) -> None:
    from scipy.stats import kendalltau

    out = tmp_path / "stability"
    layerwise("stability", *TINY, "--calibration-seeds", "0,1", "--samples", "16", "--metrics", "actnorm,gradnorm",
              "--out", str(out))
    result = json.loads((out / "stability.json").read_text())
    cards = [json.loads((out / "cards" / f"rotten-tomatoes-seed{s}" / "card.json").read_text()) for s in (0, 1)]
    for metric in ("actnorm", "gradnorm"):
        a, b = (c["metrics"][metric]["values"] for c in cards)
        assert a != b  # two calibration samples
        row = result["tasks"]["rotten-tomatoes"]["metrics"][metric]
        assert row["pairs"] == 1 and row["kendall_tau_mean"] == pytest.approx(kendalltau(a, b)[0])
        for k in range(1, 7):
            top_a = set(sorted(range(6), key=lambda i: -a[i])[:k])
            top_b = set(sorted(range(6), key=lambda i: -b[i])[:k])
            assert row["top_k_jaccard"][str(k)] == pytest.approx(len(top_a & top_b) / len(top_a | top_b)), k
        mean = result["mean_importance"][metric]["rotten-tomatoes"]
        assert mean == pytest.approx([(x + y) / 2 for x, y in zip(a, b)])
    assert (out / "stability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
