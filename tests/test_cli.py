"""The `layerwise` command end to end (subprocesses: what a user types)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "LAYERWISE_PROGRESS": "0"}


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
    assert {p.name for p in out.iterdir()} == {"card.json", "card.md", "card.png"}
    again = layerwise(*args, check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    layerwise(*args, "--overwrite")
    few = layerwise("card", "--samples", "4", "--batch-size", "16", "--out", str(tmp_path / "x"), check=False)
    assert few.returncode == 2 and "--samples" in few.stderr
