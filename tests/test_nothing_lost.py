"""Nothing lost, nothing silently changed (issue 29): an output that is its own input, a second process on the
same ``--out``, a resume with changed settings, flags a command would ignore, impossible ranks, merged csv rows,
file permissions. Each case drives the real command (``layerwise.cli.main`` in-process: the same code path as
the console script without 15 s of imports per case; one subprocess where the process boundary matters) on a
3-block random BERT and 40-row csv files, and checks the exit status, exactly one error line naming the flag or
file, no traceback, that the user's files are unchanged (sha256) and that nothing was left behind."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_fixtures import digest, small_csv, tiny_model, train_args  # noqa: F401 (fixtures)
from test_cli import ENV

from layerwise.cli import main


def listing(folder: Path) -> list[str]:
    """Every entry under ``folder`` (hidden ones included): what 'nothing left behind' is checked against."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """Exactly one 'layerwise <cmd>: error:' line and no traceback."""
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model, small_csv) -> Path:
    """A finished 2-step train run (module-wide; tests copy it before touching it)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert main(train_args(tiny_model, small_csv, out, "--save-every", "1")) == 0
    return out


@pytest.fixture(scope="module")
def weights_card(tmp_path_factory, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("cards") / "card"
    assert main(["card", "--model", str(tiny_model), "--metrics", "weights", "--no-plots", "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------- an output is never an input


def test_export_from_run_into_the_run_itself_is_refused_and_the_run_kept(tmp_path, capsys, finished_run) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = digest(run)
    for out in (run, tmp_path, run / "adapter"):  # the run, a folder holding it, a folder inside it
        code, _, err = cli(capsys, "export", "--from-run", run, "--out", out, "--overwrite")
        line = error_line(err)
        assert code == 2 and f"--out {out}" in line and f"--from-run {run}" in line, line
        assert digest(run) == before
    assert not (run / "adapter" / "adapter_config.json").read_text() == ""  # still the trained adapter
    assert listing(tmp_path) == listing(tmp_path)  # (sanity) and nothing new beside the run:
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_export_card_into_the_card_folder_is_refused(tmp_path, capsys, weights_card) -> None:
    card = tmp_path / "card"
    shutil.copytree(weights_card, card)
    before = digest(card)
    for given in (card, card / "card.json"):
        code, _, err = cli(capsys, "export", "--card", given, "--policy", "top-k", "--k", "1", "--out", card,
                           "--overwrite")
        line = error_line(err)
        assert code == 2 and f"--out {card}" in line and f"--card {given}" in line, line
    assert digest(card) == before and sorted(p.name for p in tmp_path.iterdir()) == ["card"]


def test_a_symbolic_link_to_the_input_is_the_input(tmp_path, capsys, finished_run) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (tmp_path / "alias").symlink_to(run)
    before = digest(run)
    code, _, err = cli(capsys, "export", "--from-run", run, "--out", tmp_path / "alias", "--overwrite")
    assert code == 2 and "--from-run" in error_line(err) and digest(run) == before


def test_train_data_config_and_model_inside_out_are_refused(tmp_path, capsys, tiny_model, small_csv) -> None:
    folder = tmp_path / "work"
    folder.mkdir()
    data = folder / "small.csv"
    shutil.copy(small_csv, data)
    config = folder / "settings.yaml"
    config.write_text("steps: 2\n")
    (folder / "config.yaml").write_text("steps: 2\n")  # looks like a layerwise folder: --overwrite could take it
    before = digest(folder)
    for args, flag in ((train_args(tiny_model, data, folder, "--overwrite"), "--data"),
                       (train_args(tiny_model, small_csv, folder, "--overwrite", "--config", config), "--config"),
                       (train_args(tiny_model, small_csv, tiny_model, "--overwrite"), "--model"),
                       (train_args(tiny_model, small_csv, tiny_model / "out"), "--model")):
        code, _, err = cli(capsys, *args)
        line = error_line(err)
        assert code == 2 and flag in line and "--out" in line, line
    assert digest(folder) == before and not (tiny_model / "out").exists()


def test_stability_task_data_inside_out_is_refused(tmp_path, capsys, tiny_model, small_csv) -> None:
    before = digest(small_csv)
    code, _, err = cli(capsys, "stability", "--model", tiny_model, "--task", f"csv={small_csv}",
                       "--calibration-seeds", "0,1", "--out", small_csv.parent)
    assert code == 2 and "--task csv=" in error_line(err) and digest(small_csv) == before


# ---------------------------------------------------------------- one process per --out


def test_a_second_process_on_the_same_out_is_refused_naming_the_holder(tmp_path, capsys, weights_card) -> None:
    from layerwise.runtime.out_lock import hold_out_lock, lock_path

    out = tmp_path / "export"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom layerwise.runtime.out_lock import "
                               "hold_out_lock\nwith hold_out_lock(sys.argv[1]):\n print('held', flush=True)\n "
                               "time.sleep(60)", str(out)], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        code, _, err = cli(capsys, "export", "--card", weights_card, "--policy", "top-k", "--k", "1", "--metric", "snr", "--out", out)
        line = error_line(err)
        assert code == 2 and f"--out {out} is in use by another layerwise process (pid {holder.pid})" in line, line
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the killed holder's lock: the next command runs, and leaves no lock file behind
    code, _, err = cli(capsys, "export", "--card", weights_card, "--policy", "top-k", "--k", "1", "--metric", "snr", "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    with hold_out_lock(tmp_path / "a" / "b" / "c"):  # parents made for the lock file go again
        assert lock_path(tmp_path / "a" / "b" / "c").exists()
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- permissions


def test_safetensors_follow_the_umask_like_every_other_file(tmp_path, finished_run) -> None:
    files = [p for p in finished_run.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix == ".safetensors"]
    assert weights and any(p.parent.name == "checkpoint" for p in weights)
    modes = {oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert modes == {oct(0o666 & ~_umask())}, {str(p.relative_to(finished_run)): oct(p.stat().st_mode) for p in files}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------- flags a command would ignore


@pytest.mark.parametrize("extra, flag", [(("--k", "2"), "--k"), (("--policy", "top-k"), "--policy"),
                                         (("--rank", "4"), "--rank"), (("--method", "dora"), "--method"),
                                         (("--targets", "attn"), "--targets"), (("--card", "CARD"), "--card")])
def test_export_from_run_refuses_the_selection_flags_it_would_ignore(tmp_path, capsys, finished_run, weights_card,
                                                                      extra, flag) -> None:
    before = digest(finished_run)
    extra = tuple(str(weights_card) if e == "CARD" else e for e in extra)
    code, _, err = cli(capsys, "export", "--from-run", finished_run, *extra, "--out", tmp_path / "export")
    line = error_line(err)
    assert code == 2 and f"error: {flag} " in line and "would be ignored" in line and "--from-run" in line, line
    assert digest(finished_run) == before and not (tmp_path / "export").exists()


@pytest.mark.parametrize("extra, flag", [(("--k", "3"), "--k"), (("--share", "0.5"), "--share"),
                                         (("--k", "3", "--share", "0.5"), "--k, --share")])
def test_train_policy_all_refuses_the_options_it_would_ignore(tmp_path, capsys, tiny_model, small_csv,
                                                               extra, flag) -> None:
    code, _, err = cli(capsys, *train_args(tiny_model, small_csv, tmp_path / "out", *extra))
    line = error_line(err)
    assert code == 2 and f"error: {flag}: not an option of policy 'all'" in line, line
    assert listing(tmp_path) == []


# ---------------------------------------------------------------- --resume keeps what changes the weights


def test_every_training_setting_is_sorted_into_must_match_or_may_change() -> None:
    import dataclasses

    from layerwise.train.resume_settings import MAY_CHANGE, MUST_MATCH, RESUME_CLASSES

    assert set(MUST_MATCH) == set(MAY_CHANGE) == set(RESUME_CLASSES)
    for cls in RESUME_CLASSES:
        names = [f.name for f in dataclasses.fields(cls)]
        must, may = MUST_MATCH[cls], MAY_CHANGE[cls]
        assert not set(must) & set(may), (cls, set(must) & set(may))
        assert sorted(must + may) == sorted(names), (cls.__name__, set(names) ^ set(must + may))
    # the settings a train run is built from: every one of their classes is sorted
    from layerwise.commands import run, train

    for groups in (train.GROUPS, run.GROUPS):
        for group in groups:
            if group.cls.__name__ not in ("ProbeSettings",):  # the card's; a resumed run reuses its card
                assert group.cls in RESUME_CLASSES, group.cls


@pytest.mark.parametrize("extra, flag", [(("--dropout", "0.1"), "--dropout"), (("--alpha", "32"), "--alpha"),
                                         (("--dtype", "bfloat16"), "--dtype"), (("--rank", "4"), "--rank"),
                                         (("--prefix-cache-dtype", "bfloat16"), "--prefix-cache-dtype"),
                                         (("--lr", "0.01"), "--lr"), (("--targets", "attn"), "--targets")])
def test_resume_refuses_a_changed_setting_that_changes_the_weights(tmp_path, capsys, tiny_model, small_csv,
                                                                   finished_run, extra, flag) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = digest(run)
    code, _, err = cli(capsys, *train_args(tiny_model, small_csv, run, "--save-every", "1", "--resume", *extra))
    line = error_line(err)
    assert code == 2 and f"--resume: {flag} is " in line and f"the run in {run} was trained with" in line, line
    assert digest(run) == before  # config.yaml still says what the run was trained with
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_resume_accepts_a_setting_that_does_not_change_the_weights(tmp_path, capsys, tiny_model, small_csv,
                                                                   finished_run) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (tmp_path / "link.csv").symlink_to(small_csv)  # the same data spelled another way is the same setting
    code, _, err = cli(capsys, *train_args(tiny_model, tmp_path / "link.csv", run, "--save-every", "2",
                                           "--eval-every", "1", "--resume"))
    assert code == 0, err
    assert "continuing from step 2 of 2" in err


# ---------------------------------------------------------------- impossible ranks


@pytest.mark.parametrize("extra, expected", [
    (("--rank", "33"), "--rank 33 asks more than layer 0 can hold: its encoder.layer.0.attention.self.query is "
                       "32x32, so a low-rank update there has rank at most 32"),
    (("--policy", "top-k", "--k", "2", "--metric", "snr", "--rank-budget", "100000"),
     "--rank-budget 100000 gives layer"),
    (("--policy", "manual", "--layers", "1,2", "--ranks", "1:4,2:40"), "--ranks 2:40 asks more than layer 2"),
])
def test_export_refuses_a_rank_above_the_layers_width(tmp_path, capsys, weights_card, extra, expected) -> None:
    before = digest(weights_card)
    code, _, err = cli(capsys, "export", "--card", weights_card, *extra, "--out", tmp_path / "export")
    line = error_line(err)
    assert code == 2 and expected in line, line
    assert "at most 32" in line and digest(weights_card) == before and listing(tmp_path) == []
    ok = cli(capsys, "export", "--card", weights_card, "--rank", "32", "--out", tmp_path / "export")
    assert ok[0] == 0, ok[2]  # the limit itself is allowed


def test_train_refuses_a_rank_above_the_layers_width(tmp_path, capsys, tiny_model, small_csv, weights_card) -> None:
    code, _, err = cli(capsys, *train_args(tiny_model, small_csv, tmp_path / "out", "--rank", "1000"))
    line = error_line(err)
    assert code == 2 and "--rank 1000 asks more than layer 0 can hold" in line and "at most 32" in line, line
    assert listing(tmp_path) == []
    code, _, err = cli(capsys, *train_args(tiny_model, small_csv, tmp_path / "out", "--targets", "attn",
                                           "--policy", "top-k", "--k", "2", "--metric", "snr",
                                           "--card", weights_card, "--rank-budget", "100000"))
    line = error_line(err)
    assert code == 2 and "--rank-budget 100000 gives layer" in line and "at most 32" in line, line
    assert listing(tmp_path) == []


# ---------------------------------------------------------------- rows merged by a quote


def test_two_rows_merged_by_an_unterminated_quote_are_named(tmp_path, capsys, tiny_model) -> None:
    rows = [f"sentence {i} is {'good' if i % 2 else 'bad'},{i % 2}" for i in range(40)]
    rows[5] = '"' + rows[5]  # opened on line 7 (the header is line 1), closed at the end of line 8's text
    rows[6] = rows[6].replace(",", '",')
    data = tmp_path / "merged.csv"
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    before = digest(data)
    code, out, err = cli(capsys, "inspect", "--model", tiny_model, "--task", "csv", "--data", data)
    assert code == 0, err
    warned = [line for line in err.splitlines() if "warning:" in line and f"{data}:7:" in line]
    assert len(warned) == 1 and "runs to line 8" in warned[0] and "two rows" in warned[0], err
    assert digest(data) == before
    # a quoted text over two lines that does not hold a row on each line is no warning
    rows = [f"sentence {i},{i % 2}" for i in range(40)]
    rows[5] = '"a text\nover two lines",1'
    data.write_text("text,label\n" + "\n".join(rows) + "\n")
    code, out, err = cli(capsys, "inspect", "--model", tiny_model, "--task", "csv", "--data", data)
    assert code == 0 and "warning:" not in err, err


# ---------------------------------------------------------------- the card's stated limits


def test_a_card_from_too_few_batches_has_no_stability_and_says_so(tmp_path, capsys, tiny_model, small_csv) -> None:
    from layerwise.card.stability import MIN_STABILITY_BATCHES, bootstrap_stability

    out = tmp_path / "card"
    code, _, err = cli(capsys, "card", "--model", tiny_model, "--task", "csv", "--data", small_csv, "--samples", "8",
                       "--batch-size", "4", "--metrics", "actnorm", "--no-plots", "--out", out)
    assert code == 0, err
    warned = [line for line in err.splitlines() if "warning:" in line and "stability is undefined" in line]
    assert len(warned) == 1 and "2 calibration batches" in warned[0] and "--samples" in warned[0], err
    stab = json.loads((out / "card.json").read_text())["metrics"]["actnorm"]["stability"]
    assert stab["kendall_tau_mean"] is None and stab["n_batches"] == 2 and "at least 4" in stab["note"]
    assert "n/a (2 batches; needs 4)" in (out / "card.md").read_text()
    # two batches that agree gave "1.00 ± 0.00" before; from the documented minimum on, it is measured
    agree = [[1.0, 2.0, 3.0], [1.1, 2.1, 3.1]]
    assert bootstrap_stability(agree)["kendall_tau_mean"] is None
    assert bootstrap_stability(agree * 2)["kendall_tau_mean"] == 1.0 and MIN_STABILITY_BATCHES == 4


# ---------------------------------------------------------------- the Python API checks its arguments up front


@pytest.fixture()
def api_case(monkeypatch):
    """A 3-block BERT, four labelled batches, and a probe that must not run (every case is refused first)."""
    import torch
    from tiny_models import tiny_bert

    import layerwise.card.profiling as profiling

    model = tiny_bert(layers=3)
    batches = [{"input_ids": torch.randint(0, 100, (4, 8)), "attention_mask": torch.ones(4, 8, dtype=torch.long),
                "labels": torch.tensor([0, 1, 0, 1])} for _ in range(4)]

    def no_probe(*args, **kwargs):
        raise AssertionError("the probe ran before the arguments were checked")

    monkeypatch.setattr(profiling, "profile_layers", no_probe)
    return model, batches


@pytest.mark.parametrize("case, expected", [
    ("model='minilm'", "suggest: model= must be a loaded torch model"),
    ("batches=None", "suggest: batches= must be an iterable of dicts"),
    ("k='2'", "suggest: k= must be an int, got '2'"),
    ("k=0", "k= must be >= 1, got 0"),
    ("metric='resnrom'", "suggest: metric='resnrom' is not a metric; known: actnorm"),
    ("metrics='actnorm', metric='gradnorm'", "metric='gradnorm' is not among the metrics measured (actnorm)"),
    ("share=0.5", "share=: not an option of policy 'top-k'"),
    ("labels=5", "suggest: batches= batch 0 has label 5, outside 0..1 of the model's 2 labels"),
    ("model=Sequential", "pass layers_path= with the dotted path"),
    ("rank=100", "at most 32"),
])
def test_suggest_refuses_misuse_in_parameter_names_before_the_probe(api_case, case, expected) -> None:
    import torch

    import layerwise
    from layerwise.runtime.errors import LayerwiseError

    model, batches = api_case
    kwargs: dict = {"k": 2}
    for part in case.split(", "):
        key, _, value = part.partition("=")
        kwargs[key] = eval(value, {"Sequential": torch.nn.Sequential(torch.nn.Linear(2, 2))})
    if "labels" in kwargs:
        bad = kwargs.pop("labels")
        batches = [dict(b, labels=torch.tensor([0, bad, 0, 1])) for b in batches]
    model = kwargs.pop("model", model)
    batches = kwargs.pop("batches", batches)
    with pytest.raises(LayerwiseError) as err:
        layerwise.suggest(model, batches, **kwargs)
    assert expected in str(err.value) and "--" not in str(err.value), str(err.value)


def test_suggest_signature_names_every_option_with_a_type() -> None:
    import inspect

    import layerwise
    from layerwise.selection.policies import POLICIES

    params = inspect.signature(layerwise.suggest).parameters
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert all(p.annotation is not inspect.Parameter.empty and "Any" != p.annotation for p in params.values())
    options = {o for pol in POLICIES.values() for o in pol.options if o != "costs"}
    assert options <= set(params), options - set(params)
