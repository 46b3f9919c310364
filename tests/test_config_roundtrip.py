"""Every command's written ``config.yaml`` loads back with ``--config`` and reproduces the run; config files
refuse duplicate keys and two spellings of one setting, naming both lines; ``lr: 1e-3`` is a number; TOML
files work; a repeatable flag on the command line replaces the file's list."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from layerwise.cli import build_parser, main
from layerwise.commands.config_file import parse_with_config
from layerwise.commands.flags import build, settings_of

TINY = ["--model", "minilm", "--task", "rotten-tomatoes", "--batch-size", "8", "--max-length", "32"]
COMMANDS = {  # every command that writes config.yaml, with tiny settings
    "card": [*TINY, "--samples", "16", "--metrics", "actnorm,cost"],
    "train": [*TINY, "--policy", "manual", "--layers", "4,5", "--steps", "2", "--eval-max-examples", "16"],
    "run": [*TINY, "--samples", "16", "--steps", "2", "--policy", "top-k", "--k", "2", "--eval-max-examples", "16"],
    "export": ["--card", "some/card.json", "--policy", "ratio", "--format", "json"],
    "bench": [*TINY, "--methods", "lora,actnorm-top{k}", "--ks", "2", "--train-seeds", "0,1", "--steps", "2"],
    "stability": [*TINY[:2], "--task", "sst2=../shared/data/glue/SST-2", "--calibration-seeds", "0,1",
                  "--samples", "16"],
}


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _settings(argv: list[str]) -> tuple[dict, list]:
    """config.yaml's mapping and the settings objects the command builds from ``argv``."""
    import importlib

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        args = parse_with_config(parser, args, argv)
    module = importlib.import_module(f"layerwise.commands.{args.command}")
    if args.command in ("train", "run"):
        from layerwise.commands.common import apply_default_policy

        apply_default_policy(args, card=args.command == "run" or bool(args.card))
    return settings_of(args.parser, args), [build(g, args) for g in module.GROUPS]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_written_config_loads_back_to_the_same_settings(command: str, tmp_path: Path) -> None:
    from layerwise.runtime.io import write_settings

    record, built = _settings([command, *COMMANDS[command]])
    write_settings(tmp_path, record)  # exactly as the command writes it
    again, rebuilt = _settings([command, "--config", str(tmp_path / "config.yaml")])
    assert again == record and rebuilt == built


def test_a_train_run_reruns_from_its_config_bitwise(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    first, second = tmp_path / "first", tmp_path / "second"
    code, _, err = _cli("train", *COMMANDS["train"], "--out", str(first))
    assert code == 0, err
    code, _, err = _cli("train", "--config", str(first / "config.yaml"), "--out", str(second))
    assert code == 0, err
    a, b = (load_file(str(d / "adapter" / "adapter_model.safetensors")) for d in (first, second))
    assert sorted(a) == sorted(b) and all(bool((a[k] == b[k]).all()) for k in a)
    assert (first / "config.yaml").read_text() == (second / "config.yaml").read_text()
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    assert m1["final"] == m2["final"]


def test_a_card_and_its_export_rerun_from_their_configs(tmp_path: Path) -> None:
    card = tmp_path / "card"
    assert _cli("card", *COMMANDS["card"], "--no-plots", "--out", str(card))[0] == 0
    again = tmp_path / "card2"
    assert _cli("card", "--config", str(card / "config.yaml"), "--no-plots", "--out", str(again))[0] == 0
    first, second = (json.loads((d / "card.json").read_text())["metrics"]["actnorm"]["values"] for d in (card, again))
    assert first == second
    e1, e2 = tmp_path / "e1", tmp_path / "e2"
    code, _, err = _cli("export", "--card", str(card), "--policy", "top-k", "--metric", "actnorm", "--k", "2",
                        "--out", str(e1))
    assert code == 0, err
    code, _, err = _cli("export", "--config", str(e1 / "config.yaml"), "--out", str(e2))
    assert code == 0, err
    assert (e1 / "adapter_config.json").read_text() == (e2 / "adapter_config.json").read_text()


def test_train_with_a_card_and_no_policy_uses_the_card(tmp_path: Path) -> None:
    from layerwise.commands.train import default_policy
    from layerwise.settings import defaults

    assert default_policy("runs/card") == defaults.CARD_POLICY != "all"
    assert default_policy(None) == defaults.POLICY_WITHOUT_CARD == "all"
    record, _ = _settings(["train", "--card", "x/card.json"])
    assert record["policy"] == defaults.CARD_POLICY and record["metric"] == defaults.CARD_METRIC
    record, _ = _settings(["train", "--card", "x/card.json", "--metric", "cka"])
    assert (record["policy"], record["metric"]) == (defaults.CARD_POLICY, "cka")  # --metric wins
    record, _ = _settings(["run"])
    assert (record["policy"], record["metric"]) == ("ratio", "actnorm") == (defaults.CARD_POLICY,
                                                                             defaults.CARD_METRIC)
    record, _ = _settings(["run", "--policy", "budget"])
    assert (record["policy"], record["metric"]) == ("budget", None)  # an explicit policy keeps its own metric
    record, _ = _settings(["train", "--card", "x/card.json", "--policy", "all"])
    assert record["policy"] == "all"


# --- what a config file may hold -----------------------------------------------------------------------------

def _config_error(tmp_path: Path, name: str, text: str, command: str = "train") -> str:
    path = tmp_path / name
    path.write_text(text)
    code, out, err = _cli(command, "--config", str(path), "--out", str(tmp_path / "never"))
    assert code == 2 and out == "" and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "never").exists()
    return err


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path: Path) -> None:
    err = _config_error(tmp_path, "c.yaml", "model: minilm\nlr: 0.001\nsteps: 3\nlr: 0.5\n")
    assert "'lr' is given twice (lines 2 and 4)" in err
    err = _config_error(tmp_path, "c.json", '{\n  "lr": 0.001,\n  "steps": 3,\n  "lr": 0.5\n}\n')
    assert "'lr' is given twice (lines 2 and 4)" in err
    err = _config_error(tmp_path, "c.toml", "lr = 0.001\nlr = 0.5\n")
    assert "not valid TOML" in err and "c.toml" in err


def test_two_spellings_of_one_setting_are_refused_naming_both_lines(tmp_path: Path) -> None:
    err = _config_error(tmp_path, "c.yaml", "batch-size: 8\nsteps: 3\nbatch_size: 4\n")
    assert "'batch-size' (line 1) and 'batch_size' (line 3) set the same setting" in err
    err = _config_error(tmp_path, "c.json", '{"batch_size": 8,\n "batch-size": 4}')
    assert "'batch_size' (line 1) and 'batch-size' (line 2)" in err
    err = _config_error(tmp_path, "c.yaml", "calibration_seed: 1\nseed: 2\n", command="card")
    assert "'calibration_seed' (line 1) and 'seed' (line 2)" in err


def test_exponent_floats_in_yaml_and_toml_files(tmp_path: Path) -> None:
    for name, text in (("a.yaml", "lr: 1e-3\nweight_decay: 5E-2\n"), ("b.toml", "lr = 1e-3\nweight-decay = 5e-2\n"),
                       ("c.json", '{"lr": 1e-3, "weight_decay": 5e-2}')):
        path = tmp_path / name
        path.write_text(text)
        record, _ = _settings(["train", "--config", str(path)])
        assert record["lr"] == 1e-3 and record["weight_decay"] == 5e-2, name
    # a quoted value stays a string; a word that only starts like a number too
    from layerwise.commands.config_file import read_config

    (tmp_path / "s.yaml").write_text("data: '1e-3'\ntask: 1e-3x\nsteps: 10\n")
    assert read_config(tmp_path / "s.yaml") == {"data": "1e-3", "task": "1e-3x", "steps": 10}


def test_command_line_list_replaces_the_files_list(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("task: [sst2, mrpc]\n")
    record, _ = _settings(["stability", "--config", str(path)])
    assert record["task"] == ["sst2", "mrpc"]
    record, _ = _settings(["stability", "--config", str(path), "--task", "cola"])
    assert record["task"] == ["cola"]


def test_the_example_config_loads_and_follows_the_measured_defaults() -> None:
    from layerwise.selection.policies import POLICIES
    from layerwise.settings import defaults

    example = Path(__file__).resolve().parents[1] / "examples" / "run-sst2.yaml"
    record, _ = _settings(["run", "--config", str(example)])
    assert record["lr"] == defaults.LR == 2e-3
    assert record["metric"] == defaults.RANKING_METRIC == POLICIES["top-k"].default_metric == "cka"
    assert POLICIES["threshold"].default_metric == defaults.RANKING_METRIC
    from layerwise.commands.run import DEFAULT_POLICY

    assert DEFAULT_POLICY == defaults.CARD_POLICY
