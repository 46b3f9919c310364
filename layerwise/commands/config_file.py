"""``--config FILE.yaml|json|toml``: any flag of a command can come from a file; a flag on the command line wins.

Keys are the flags' names without the dashes, with ``_`` or ``-`` (``train_seed`` or ``train-seed``).
Every run writes its fully resolved settings as ``config.yaml`` next to its outputs, and
``--config runs/x/config.yaml`` runs it again. A key the command does not have, a value of the wrong
type or a key of another subcommand is a one-line error naming the file, the key and what is allowed.
A key given twice, or two spellings of one setting (``batch-size`` and ``batch_size``, or an old name and
its new one), is refused naming both lines. YAML numbers in exponent form without a dot (``lr: 1e-3``,
which YAML 1.1 reads as a string) are numbers. A repeatable flag given on the command line (``--task``)
replaces the file's list; it is not appended to it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from layerwise.commands.flags import setting_actions
from layerwise.runtime.errors import ConfigError

__all__ = ["read_config", "read_config_lines", "config_defaults", "parse_with_config", "FORMATS"]

FORMATS = {".yaml": "YAML", ".yml": "YAML", ".json": "JSON", ".toml": "TOML"}
"""Config file suffixes and their format; any other suffix is read as YAML."""

_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
"""``1e-3``, ``5E4``, ``2.5e-3``: floats in YAML 1.2 and JSON that YAML 1.1 (PyYAML) reads as strings."""


def _yaml_loader() -> type:
    """PyYAML's safe loader that also reads ``1e-3`` as a float."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
    return Loader


def read_config(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML, JSON or TOML file; errors name the file (a key given twice names both lines)."""
    return read_config_lines(path)[0]


def read_config_lines(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The mapping in a YAML, JSON or TOML file and the line of each top-level key; a key given twice is a
    ConfigError naming both lines."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    kind = FORMATS.get(file.suffix.lower(), "YAML")
    try:
        text = file.read_text(encoding="utf-8")
        if kind == "JSON":
            data, lines = _read_json(path, text)
        elif kind == "TOML":
            import tomllib

            data, lines = tomllib.loads(text), _text_lines(text, r"^\s*[\"']?{key}[\"']?\s*=")
        else:
            data, lines = _read_yaml(path, text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--config {path}: not valid {kind} ({first})") from err
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    return data, lines


def _duplicate(path: str | Path, key: str, first: int, second: int) -> ConfigError:
    return ConfigError(f"--config {path}: {key!r} is given twice (lines {first} and {second}); keep one")


def _read_yaml(path: str | Path, text: str) -> tuple[Any, dict[str, int]]:
    import yaml

    loader = _yaml_loader()
    node = yaml.compose(text, Loader=loader)
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in lines:
                raise _duplicate(path, key, lines[key], line)
            lines[key] = line
    return yaml.load(text, Loader=loader), lines


def _text_lines(text: str, pattern: str, keys: Any = None) -> dict[str, int]:
    """The first line of each key found by ``pattern`` (``{key}`` stands for the key) in ``text``."""
    out: dict[str, int] = {}
    for key in keys if keys is not None else re.findall(r"^\s*[\"']?([A-Za-z0-9_-]+)[\"']?\s*[=:]", text, re.M):
        found = re.search(pattern.format(key=re.escape(key)), text, re.M)
        if found and key not in out:
            out[key] = text.count("\n", 0, found.start()) + 1
    return out


def _read_json(path: str | Path, text: str) -> tuple[Any, dict[str, int]]:
    pairs_seen: list[list[tuple[str, Any]]] = []

    def keep(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        pairs_seen.append(pairs)
        return dict(pairs)

    data = json.loads(text, object_pairs_hook=keep)
    top = pairs_seen[-1] if pairs_seen and isinstance(data, dict) else []
    positions = [text.count("\n", 0, m.start()) + 1 for m in re.finditer(r'"((?:[^"\\]|\\.)*)"\s*:', text)]
    names = [json.loads(f'"{m.group(1)}"') for m in re.finditer(r'"((?:[^"\\]|\\.)*)"\s*:', text)]
    lines: dict[str, int] = {}
    seen: set[str] = set()
    for key, _ in top:
        if key in seen:
            where = [line for name, line in zip(names, positions) if name == key]
            raise _duplicate(path, key, where[0] if where else 0, where[1] if len(where) > 1 else 0)
        seen.add(key)
        where = [line for name, line in zip(names, positions) if name == key]
        lines[key] = where[0] if where else 0
    return data, lines


def _aliases(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Old spellings (deprecated flags) -> their hidden action."""
    return {opt.lstrip("-").replace("-", "_"): a for a in parser._actions if a.help == argparse.SUPPRESS
            for opt in a.option_strings}


def _checked(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    """``value`` if it fits ``action`` (type, choices), else a ConfigError naming the file and key."""
    def bad(allowed: str) -> ConfigError:
        return ConfigError(f"--config {path}: {key} must be {allowed}, got {value!r}")

    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
        if value is None and action.default is None:  # an unset optional switch (``exclude_first: null``)
            return None
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) for v in items):
            raise bad("a list of strings")
        return items
    if value is None:
        return None
    if action.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("a whole number")
    elif action.type is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a finite number")
        value = float(value)
    elif isinstance(value, list) and all(isinstance(v, (int, str)) for v in value):
        if isinstance(action.default, (tuple, list)):  # seeds: [0, 1, 2] as the default's own form
            return tuple(value)
        value = ",".join(str(v) for v in value)  # targets: [q, v] -> "q,v"
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    elif not isinstance(value, str):
        raise bad("a string")
    if action.choices is not None and value not in action.choices:
        raise bad(f"one of {', '.join(map(str, action.choices))}")
    return value


def config_defaults(path: str, parser: argparse.ArgumentParser, command: str,
                    others: Mapping[str, argparse.ArgumentParser]) -> dict[str, Any]:
    """The file's settings as defaults of ``parser`` (the subcommand ``command``), checked key by key."""
    import sys

    data, lines = read_config_lines(path)
    actions, aliases = setting_actions(parser), _aliases(parser)
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # destination -> the key that set it
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        dest = aliases[key].dest if key not in actions and key in aliases else key
        if dest in spelled:
            raise ConfigError(f"--config {path}: {spelled[dest]!r} (line {lines.get(spelled[dest], '?')}) and "
                              f"{raw_key!r} (line {lines.get(str(raw_key), '?')}) set the same setting; keep one")
        spelled[dest] = str(raw_key)
        if key not in actions and key in aliases:
            old = aliases[key]
            print(f"layerwise: --config {path}: {raw_key} is deprecated; use "
                  f"{actions[old.dest].option_strings[0].lstrip('-')}", file=sys.stderr)
            key = old.dest
            if getattr(old, "value", None) is not None:  # a switch such as regression: true -> kind: regression
                if not isinstance(value, bool):
                    raise ConfigError(f"--config {path}: {raw_key} must be true or false, got {value!r}")
                if value:
                    out[key] = old.value
                continue
        if key not in actions:
            owners = [name for name, p in others.items() if name != command and key in setting_actions(p)]
            where = f"; it is a setting of `layerwise {', '.join(owners)}`" if owners else ""
            raise ConfigError(f"--config {path}: {raw_key!r} is not a setting of `layerwise {command}`{where}; "
                              f"allowed: {', '.join(sorted(actions))}")
        out[key] = _checked(path, str(raw_key), value, actions[key])
    return out


def parse_with_config(parser: argparse.ArgumentParser, args: argparse.Namespace,
                      argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv`` again with the ``--config`` file's settings as the subcommand's defaults: a flag given on
    the command line wins, and a repeatable flag given there (``--task``) replaces the file's list instead of
    being appended to it."""
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    command = subparsers[args.command]
    values = config_defaults(args.config, command, args.command, subparsers)
    actions = setting_actions(command)
    lists = {k: v for k, v in values.items() if isinstance(actions.get(k), argparse._AppendAction)}
    command.set_defaults(**{k: v for k, v in values.items() if k not in lists}, **{k: None for k in lists})
    parsed = parser.parse_args(argv)
    for key, value in lists.items():
        if getattr(parsed, key, None) is None:
            setattr(parsed, key, list(value))
    return parsed
