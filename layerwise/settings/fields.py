"""How a settings dataclass field becomes a command-line flag, and back.

Every setting is written once, as a documented dataclass field. Its flag (``--name-with-dashes``, or the
name in the class's ``FLAGS`` table when a command needs a clearer one, e.g. ``TrainConfig.seed`` is
``--train-seed``), its help text (the field's docstring) and the flag named in its error messages all come
from that field, so they cannot disagree.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import textwrap
from functools import lru_cache
from typing import Any, Callable

__all__ = ["flag", "flag_name", "field_docs", "choices_of", "parser_of", "cli_fields", "dest", "at_least", "one_of",
           "finite_numbers"]


def flag_name(cls_or_obj: Any, field_name: str) -> str:
    """The command-line flag of a field: ``grad_accum`` -> ``--grad-accum``; ``FLAGS`` renames it."""
    cls = cls_or_obj if isinstance(cls_or_obj, type) else type(cls_or_obj)
    table: dict[str, str] = getattr(cls, "FLAGS", {}) or {}
    return "--" + table.get(field_name, field_name.replace("_", "-"))


def dest(cls: type, field_name: str) -> str:
    """The argparse destination of a field's flag (shared by every field with the same flag)."""
    return flag_name(cls, field_name)[2:].replace("-", "_")


def flag(default: Any = dataclasses.MISSING, *, choices: tuple[str, ...] | None = None,
         parse: Callable[[str], Any] | None = None, metavar: str | None = None, cli: bool = True,
         default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with what its flag needs beyond the type: the allowed ``choices``, a ``parse``
    function from the command-line string (for dicts and lists), a ``metavar``, or ``cli=False`` for a
    field that is not a flag (set from Python only)."""
    meta = {"choices": choices, "parse": parse, "metavar": metavar, "cli": cli}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed values of a field, or None."""
    return f.metadata.get("choices")


def parser_of(f: dataclasses.Field) -> Callable[[str], Any] | None:
    """The field's own parser of a command-line string, or None."""
    return f.metadata.get("parse")


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are command-line flags, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True) and f.init]


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Each field's docstring (the string literal right after its annotation), joined into one line.

    Read from the class's source with ``ast``; inherited classes are read too. Fields without a docstring
    are absent."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, after in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                    and isinstance(after.value.value, str)):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def at_least(obj: Any, name: str, low: float) -> None:
    """Raise ``ConfigError`` naming the field's flag unless ``obj.<name>`` is a number >= ``low``
    (a whole number when ``low`` is an int)."""
    from layerwise.runtime.errors import ConfigError

    value = getattr(obj, name)
    kinds = (int,) if isinstance(low, int) else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "a whole number" if isinstance(low, int) else "a number"
        raise ConfigError(f"{flag_name(obj, name)} must be {what}, got {value!r}")
    if not value >= low:  # also refuses NaN
        raise ConfigError(f"{flag_name(obj, name)} must be >= {low}, got {value!r}")


def finite_numbers(obj: Any) -> None:
    """Raise ``ConfigError`` naming the flag of the first field of the settings dataclass ``obj`` that holds a
    float which is not finite: ``--lr inf`` (or ``lr: .inf`` in a config file) would pass a "> 0" check and run
    to the end, where the value cannot even be written as JSON; NaN would be refused as "out of range" only by
    the checks that compare it."""
    from layerwise.runtime.errors import ConfigError

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{flag_name(obj, f.name)} must be a finite number, got {value!r}")


def one_of(obj: Any, name: str, allowed: tuple[str, ...]) -> None:
    """Raise ``ConfigError`` naming the field's flag unless ``obj.<name>`` is one of ``allowed``."""
    from layerwise.runtime.errors import ConfigError

    value = getattr(obj, name)
    if value not in allowed:
        raise ConfigError(f"{flag_name(obj, name)} must be one of {', '.join(allowed)}, got {value!r}")
