"""The floors of docs/ARCHITECTURE.md hold: import-linter's contract in pyproject.toml passes, it covers every
package, and the registry reads it tolerates are lazy (importing the settings imports no floor above them)."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
    import importlinter  # noqa: F401  CI installs the test extra, which holds import-linter
else:
    pytest.importorskip("importlinter", reason="import-linter is in the test extra: "
                                               "pip install -c constraints.txt -e '.[test]'")


def _contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = config["contracts"]
    return contract


def test_imports_flow_down_the_floors():
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "1 kept, 0 broken" in proc.stdout


def test_every_package_and_module_is_on_a_floor():
    """A new sub-package or top-level module is checked only once it is named in a layer."""
    named = {part.strip() for layer in _contract()["layers"] for part in layer.replace(":", "|").split("|")}
    package = ROOT / "layerwise"
    present = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    present |= {p.stem for p in package.glob("*.py") if p.name != "__init__.py"}
    assert present - {"_deprecated"} == named


def test_the_tolerated_upward_imports_are_lazy():
    """Each ignored import is a registry read inside a check: importing the settings loads no higher floor."""
    ignored = _contract()["ignore_imports"]
    assert all(line.startswith("layerwise.settings.") for line in ignored)
    code = ("import sys, layerwise.settings; "
            "print(sorted(m for m in sys.modules if m.startswith(('layerwise.card', 'layerwise.selection', "
            "'layerwise.adapters', 'layerwise.train'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
