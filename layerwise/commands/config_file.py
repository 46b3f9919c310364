"""``--config FILE.yaml|json``: any flag of a command can come from a file; a flag on the command line wins.

Keys are the flags' names without the dashes, with ``_`` or ``-`` (``train_seed`` or ``train-seed``).
Every run writes its fully resolved settings as ``config.yaml`` next to its outputs, and
``--config runs/x/config.yaml`` runs it again. A key the command does not have, a value of the wrong
type or a key of another subcommand is a one-line error naming the file, the key and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Mapping

from layerwise.commands.flags import setting_actions
from layerwise.runtime.errors import ConfigError

__all__ = ["read_config", "config_defaults"]


def read_config(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON file; errors name the file."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"--config {path}: not valid {'JSON' if file.suffix.lower() == '.json' else 'YAML'} "
                          f"({first})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a mapping of settings (key: value), got {type(data).__name__}")
    return data


def _aliases(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Old spellings (deprecated flags) -> their hidden action."""
    return {opt.lstrip("-").replace("-", "_"): a for a in parser._actions if a.help == argparse.SUPPRESS
            for opt in a.option_strings}


def _checked(path: str, key: str, value: Any, action: argparse.Action) -> Any:
    """``value`` if it fits ``action`` (type, choices), else a ConfigError naming the file and key."""
    def bad(allowed: str) -> ConfigError:
        return ConfigError(f"--config {path}: {key} must be {allowed}, got {value!r}")

    if isinstance(action, argparse.BooleanOptionalAction) or action.nargs == 0:
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
        value = ",".join(str(v) for v in value)  # seeds: [0, 1, 2] -> "0,1,2"
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

    data = read_config(path)
    actions, aliases = setting_actions(parser), _aliases(parser)
    out: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
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
