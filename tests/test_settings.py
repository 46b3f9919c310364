"""Settings are written once: every flag, its help, its errors and `--config` keys come from one dataclass field.

Walks every subcommand's real parser (no model is loaded): each error a settings field can raise names a
flag that the subcommand has; every field has help; a config file sets any flag, the command line wins,
and bad keys or values are one-line errors naming the file and the key."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from pathlib import Path

import pytest

from layerwise.cli import _with_config, build_parser
from layerwise.commands import bench, card, export, inspect, run, stability, train
from layerwise.commands.flags import Group, build
from layerwise.runtime.errors import ConfigError, LayerwiseError
from layerwise.settings import AdapterChoice, AdaptiveRanks, Calibration, DataSource, SelectionChoice
from layerwise.settings.fields import cli_fields, field_docs, flag_name
from layerwise.train import TrainConfig

COMMANDS = {"card": card.GROUPS, "train": train.GROUPS, "run": run.GROUPS, "bench": bench.GROUPS,
            "stability": stability.GROUPS, "inspect": inspect.GROUPS, "export": export.GROUPS}
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
BAD_VALUES = (-1, 0, -10**9, 10**12, 1.5, -0.5, 2.0, math.nan, math.inf, -math.inf, "bogus", "", None, True)


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _errors(group: Group, f: dataclasses.Field) -> list[str]:
    """Every distinct ConfigError message that bad values of field ``f`` raise (other fields at defaults)."""
    base = {g.name: group.default(g) for g in cli_fields(group.cls)
            if g.name not in group.fixed and (group.only is None or g.name in group.only or g.default is
                                                dataclasses.MISSING)}
    base = {k: v for k, v in base.items() if not dataclasses.is_dataclass(v)}
    messages = set()
    for bad in BAD_VALUES:
        try:
            group.cls(**{**base, **dict(group.fixed), f.name: bad})
        except LayerwiseError as err:
            messages.add(str(err))
        except (TypeError, ValueError, AttributeError):
            pass  # not a value a flag can produce (argparse refuses it first)
    return sorted(messages)


@pytest.mark.parametrize("command", [c for c in COMMANDS if COMMANDS[c]])
def test_every_error_a_field_raises_names_a_flag_its_command_has(command: str) -> None:
    parser = subparsers()[command]
    flags = {o for a in parser._actions if a.help != argparse.SUPPRESS for o in a.option_strings}  # not old ones
    checked = 0
    for group in COMMANDS[command]:
        for f in group.fields():
            for message in _errors(group, f):
                named = FLAG.findall(message)
                assert named, f"{command}: {group.cls.__name__}.{f.name} error names no flag: {message}"
                missing = [n for n in named if n not in flags]
                assert not missing, f"{command}: {message!r} names {missing}, which `layerwise {command}` lacks"
                checked += 1
    assert checked >= 5


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_setting_refuses_a_value_that_is_not_finite(value: float) -> None:
    """`--lr inf` passed "> 0" and ran to the end, where the run's record could not be written as JSON."""
    seen = set()
    for groups in COMMANDS.values():
        for group in groups:
            for f in group.fields():
                kind = typing.get_type_hints(group.cls)[f.name]
                if float not in (kind, *typing.get_args(kind)) or (group.cls, f.name) in seen:
                    continue
                seen.add((group.cls, f.name))
                base = {g.name: group.default(g) for g in cli_fields(group.cls) if g.name not in group.fixed}
                base = {k: v for k, v in base.items() if not dataclasses.is_dataclass(v)}
                with pytest.raises(ConfigError) as err:
                    group.cls(**{**base, **dict(group.fixed), f.name: value})
                assert str(err.value) == f"{flag_name(group.cls, f.name)} must be a finite number, got {value!r}"
    assert len(seen) >= 10  # lr, weight_decay, warmup_ratio, max_grad_norm, alpha, dropout, gamma, share, ...


def test_the_train_seed_error_names_the_train_seed_flag() -> None:
    """The bug that started this: `run --train-seed -1` said "--seed must be >= 0"."""
    with pytest.raises(ConfigError, match="^--train-seed must be >= 0"):
        TrainConfig(steps=3, seed=-1)
    with pytest.raises(ConfigError, match="^--calibration-seed must be >= 0"):
        Calibration(seed=-1)
    assert flag_name(TrainConfig, "seed") == "--train-seed" and flag_name(Calibration, "seed") == "--calibration-seed"


@pytest.mark.parametrize("command", ["card", "train", "run", "bench", "stability"])
def test_every_setting_flag_has_help_from_its_field(command: str) -> None:
    parser = subparsers()[command]
    owner: set[str] = set()
    for group in COMMANDS[command]:
        docs = field_docs(group.cls)
        for f in group.fields():
            assert docs.get(f.name), f"{group.cls.__name__}.{f.name} has no docstring"
            flag = flag_name(group.cls, f.name)
            if flag in owner:
                continue  # a shared flag (--max-length of data and training): help from its first field
            owner.add(flag)
            action = parser._option_string_actions[flag]
            assert action.help and action.help.startswith(docs[f.name][:30].replace("%", "%%"))


def test_shared_concepts_have_one_flag_and_one_default() -> None:
    subs = subparsers()
    train_p, run_p = subs["train"], subs["run"]
    for flag in ("--lr", "--steps", "--batch-size", "--max-length", "--rank", "--targets", "--policy"):
        assert flag in train_p._option_string_actions and flag in run_p._option_string_actions
    for dest in ("lr", "steps"):
        assert train_p.get_default(dest) == run_p.get_default(dest)
    for name, sub in subs.items():  # the old, ambiguous spellings are gone from the help
        shown = {o for a in sub._actions if a.help != argparse.SUPPRESS for o in a.option_strings}
        assert not shown & {"--seed", "--seeds", "--new-tokens", "--regression"}, name
        if name == "bench":  # a list of k is --ks; --k is one k of the top-k policy
            assert "--ks" in shown and "--k" not in shown


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    return _with_config(parser, args, argv) if getattr(args, "config", None) else args


def test_config_file_sets_any_flag_and_the_command_line_wins(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 7\nlr: 0.001\ntrain-seed: 3\npolicy: top-k\nk: 2\nadaptive_ranks: true\ngamma: 4\n")
    args = _parse(["train", "--config", str(cfg), "--steps", "5"])
    assert (args.steps, args.lr, args.train_seed, args.policy, args.k) == (5, 0.001, 3, "top-k", 2)
    adapter = build(train.GROUPS[3], args)
    assert adapter.adaptive == AdaptiveRanks(gamma=4.0)
    json_cfg = tmp_path / "c.json"
    json_cfg.write_text('{"train_seeds": [0, 2], "ks": "1-3", "lr": 0.01}')
    args = _parse(["bench", "--config", str(json_cfg)])
    options = build(bench.GROUPS[2], args)
    assert options.train_seeds == (0, 2) and options.ks == (1, 2, 3) and args.lr == 0.01


@pytest.mark.parametrize("text, words", [
    ("bogus_key: 1\n", ["'bogus_key' is not a setting of `layerwise train`", "allowed:", "lr"]),
    ("steps: 1.5\n", ["steps must be a whole number, got 1.5"]),
    ("lr: fast\n", ["lr must be a finite number"]),
    ("scheduler: wavy\n", ["scheduler must be one of linear, cosine, constant"]),
    ("ablation_steps: 3\n", ["'ablation_steps' is not a setting of `layerwise train`", "`layerwise stability`"]),
    ("- 1\n- 2\n", ["expected a mapping"]),
    ("steps: [1\n", ["not valid YAML"]),
])
def test_bad_config_files_are_one_line_errors_naming_file_and_key(tmp_path: Path, text: str, words: list[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as info:
        _parse(["train", "--config", str(cfg)])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"--config {cfg}")
    for word in words:
        assert word in message


def test_old_spellings_still_work_with_a_deprecation_message(tmp_path: Path, capsys) -> None:
    args = _parse(["card", "--seed", "4", "--regression"])
    assert args.calibration_seed == 4 and args.kind == "regression"
    args = _parse(["bench", "--seeds", "0-1", "--k", "2", "--new-tokens", "8"])
    assert (args.train_seeds, args.ks, args.inference_new_tokens) == ("0-1", "2", 8)
    args = _parse(["stability", "--seeds", "0,1"])
    assert args.calibration_seeds == "0,1"
    err = capsys.readouterr().err
    for old, new in (("--seed", "--calibration-seed"), ("--regression", "--kind"), ("--seeds", "--train-seeds"),
                     ("--k", "--ks"), ("--new-tokens", "--inference-new-tokens")):
        assert f"{old} is deprecated" in err and new in err
    from layerwise.commands.common import legacy_ranks

    args = _parse(["train", "--ranks", "adaptive", "--r-max", "4"])
    legacy_ranks(args)
    assert build(train.GROUPS[3], args).adaptive == AdaptiveRanks(r_max=4)
    assert "--adaptive-ranks" in capsys.readouterr().err
    cfg = tmp_path / "old.yaml"
    cfg.write_text("seed: 2\nregression: true\n")
    args = _parse(["card", "--config", str(cfg)])
    assert args.calibration_seed == 2 and args.kind == "regression"


def test_settings_objects_check_themselves() -> None:
    with pytest.raises(ConfigError, match="^--policy must be one of"):
        SelectionChoice("nope")
    with pytest.raises(ConfigError, match="--adaptive-ranks .*--method lora"):
        AdapterChoice(method="dora", adaptive=AdaptiveRanks())
    with pytest.raises(ConfigError, match="^--kind must be one of"):
        DataSource(kind="images")
    assert SelectionChoice("top-k", k=2).options == {"k": 2}
    assert AdapterChoice(rank=4, adaptive=AdaptiveRanks(r_max=16)).r_max == 16
    assert AdapterChoice(ranks="3:16,4:8").ranks == {3: 16, 4: 8}


def test_shipped_example_configs_parse_for_their_command() -> None:
    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.yaml"))
    assert examples
    for path in examples:
        command = path.stem.split("-")[0]
        args = _parse([command, "--config", str(path)])
        for group in COMMANDS[command]:
            build(group, args)


def test_imports_go_commands_then_workflows_then_components() -> None:
    """The layering the file layout promises: only the CLI imports commands; only commands and workflows
    import workflows; a workflow module stays short."""
    import ast

    root = Path(__file__).parent.parent / "layerwise"
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
        if not (rel.startswith("commands/") or rel == "cli.py"):
            assert not any(m.startswith("layerwise.commands") for m in imported), rel
        if not (rel.startswith(("commands/", "workflows/")) or rel == "cli.py"):
            assert not any(m.startswith("layerwise.workflows") for m in imported), rel
        if rel.startswith("workflows/"):
            assert len(path.read_text().splitlines()) <= 300, rel
