"""Command-line flags generated from the settings dataclasses (:mod:`layerwise.settings`).

A command declares its settings as :class:`Group` objects (a dataclass, the fields it exposes and its own
defaults); :func:`add_groups` turns every exposed field into a flag whose name, type, choices and help
come from the field, and :func:`build` turns the parsed namespace back into the dataclass. Two fields of
one command with the same flag (``--max-length`` of the data and of training) share one flag.
Old spellings stay as hidden aliases that print a deprecation message (:func:`add_deprecated`).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from layerwise.settings.fields import choices_of, cli_fields, dest, field_docs, flag_name, parser_of

__all__ = ["Group", "add_groups", "build", "add_deprecated", "setting_actions", "settings_of", "NOT_SETTINGS"]

NOT_SETTINGS = ("help", "config", "out", "overwrite", "resume", "list_policies", "list_metrics", "list_methods",
                "run", "command", "json", "no_plots", "debug")
"""Destinations that are actions or places, not settings: left out of ``config.yaml``."""


@dataclass(frozen=True)
class Group:
    """The settings dataclass ``cls`` as one command exposes it."""

    cls: type
    """A settings dataclass (see :mod:`layerwise.settings`)."""
    title: str
    """Heading of the flags in ``--help``."""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    """This command's defaults where they differ from the field's (e.g. ``train``'s ``--steps``)."""
    only: Sequence[str] | None = None
    """The fields exposed as flags (default: every field that is a flag)."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """Fields this command sets itself and does not expose."""

    def fields(self) -> list[dataclasses.Field]:
        """The exposed fields, in declaration order."""
        return [f for f in cli_fields(self.cls)
                if (self.only is None or f.name in self.only) and f.name not in self.fixed]

    def default(self, f: dataclasses.Field) -> Any:
        """This command's default of field ``f``."""
        if f.name in self.defaults:
            return self.defaults[f.name]
        if f.default is not dataclasses.MISSING:
            return f.default
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            return f.default_factory()  # type: ignore[misc]
        raise TypeError(f"{self.cls.__name__}.{f.name} has no default; give one in Group.defaults")


def _base_type(cls: type, f: dataclasses.Field) -> Any:
    """int, float, str, bool or a nested settings class from the field's annotation (``X | None`` -> X)."""
    hint = typing.get_type_hints(cls)[f.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return hint


def _help(group: Group, f: dataclasses.Field, default: Any) -> str:
    text = field_docs(group.cls).get(f.name, "")
    if default is not None and default is not False and default != ():
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        text += f" (default: {shown})"
    return text.replace("%", "%%")


def add_groups(parser: argparse.ArgumentParser, groups: Sequence[Group]) -> None:
    """Add a flag for every exposed field of every group (a flag already there is shared, not repeated).

    A field holding an optional nested settings dataclass (``AdapterChoice.adaptive``) becomes a switch
    (its flag, e.g. ``--adaptive-ranks``) followed by the nested class's own flags."""
    for group in groups:
        arg_group = parser.add_argument_group(group.title)
        for f in group.fields():
            name = flag_name(group.cls, f.name)
            if name in parser._option_string_actions:
                continue
            default = group.default(f)
            kind = _base_type(group.cls, f)
            kwargs: dict[str, Any] = {"dest": dest(group.cls, f.name), "default": default,
                                      "help": _help(group, f, default)}
            if dataclasses.is_dataclass(kind):
                arg_group.add_argument(name, dest=kwargs["dest"], action="store_true", help=kwargs["help"])
                add_groups(parser, [Group(kind, f"{name[2:]} (with {name})")])
                continue
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = str if parser_of(f) is not None else (kind if kind in (int, float) else str)
                if choices_of(f):
                    kwargs["choices"] = choices_of(f)
                if f.metadata.get("metavar"):
                    kwargs["metavar"] = f.metadata["metavar"]
            arg_group.add_argument(name, **kwargs)


def build(group: Group, args: argparse.Namespace, **overrides: Any) -> Any:
    """The settings object of ``group`` from parsed ``args`` (its checks raise errors naming the flags)."""
    values = {}
    for f in group.fields():
        value = getattr(args, dest(group.cls, f.name))
        kind = _base_type(group.cls, f)
        if dataclasses.is_dataclass(kind):  # a switch: the nested settings when on, else None
            value = build(Group(kind, ""), args) if value else None
        values[f.name] = value
    return group.cls(**{**values, **dict(group.fixed), **overrides})


class _Deprecated(argparse.Action):
    """Stores into the new flag's destination and says that the old spelling is deprecated."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", value: Any = None, **kwargs: Any):
        self.new, self.value = new, value
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"layerwise: {option_string} is deprecated and will be removed in the next release; "
              f"use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.value if self.nargs == 0 else values)


def add_deprecated(parser: argparse.ArgumentParser, old: str, new: str, value: Any = None) -> None:
    """Keep ``old`` working as a hidden alias of the flag ``new`` (same destination), with a deprecation
    message. ``value`` makes it a switch that stores that value."""
    target = parser._option_string_actions[new]
    kwargs: dict[str, Any] = {"nargs": 0} if value is not None or target.nargs == 0 else {"type": target.type}
    parser.add_argument(old, dest=target.dest, action=_Deprecated, new=new, value=value, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, **kwargs)


def setting_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The settings ``parser`` defines, by destination: its visible flags, without the places and actions of
    :data:`NOT_SETTINGS` (a hidden deprecated alias shares its flag's destination)."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        if action.dest not in NOT_SETTINGS and action.help != argparse.SUPPRESS and action.dest not in out:
            out[action.dest] = action
    return out


def settings_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Every setting of ``args`` that ``parser`` defines, by destination, JSON/YAML-ready (for config.yaml)."""
    values = {dest: getattr(args, dest, None) for dest in setting_actions(parser)}
    return {dest: list(v) if isinstance(v, tuple) else v for dest, v in values.items()}
