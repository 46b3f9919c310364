"""Packaging: pyproject.toml declares compatible ranges whose lower bounds are the tested pins of
constraints.txt; gguf is an extra, and a GGUF model without it is a one-line error saying what to install."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from layerwise.runtime.errors import ModelError

REPO = Path(__file__).resolve().parents[1]


def pins() -> dict[str, Version]:
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            out[name.lower().replace("_", "-")] = Version(version)
    return out


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in [*project["dependencies"], *extras]]


def test_every_dependency_is_a_range_from_the_tested_pin_and_constraints_stay_exact() -> None:
    pinned = pins()
    for req in requirements():
        name = req.name.lower()
        assert name in pinned, f"{name} is not pinned in constraints.txt"
        lower = [s for s in req.specifier if s.operator == ">="]
        assert [Version(s.version) for s in lower] == [pinned[name]], f"{req}: lower bound is not the tested pin"
        assert any(s.operator == "<" for s in req.specifier), f"{req}: no upper bound"
        assert not any(s.operator == "==" for s in req.specifier), f"{req}: exact pin in pyproject"
        assert req.specifier.contains(pinned[name])
        newer = Version(f"{pinned[name].major}.{pinned[name].minor}.{pinned[name].micro + 1}")
        assert req.specifier.contains(newer), f"{req} refuses a patch release"


def test_core_imports_and_the_gguf_extra() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {Requirement(r).name.lower() for r in project["dependencies"]}
    assert "gguf" not in core and "pyyaml" in core and "psutil" in core and "torch" in core
    assert [Requirement(r).name for r in project["optional-dependencies"]["gguf"]] == ["gguf"]


def test_a_gguf_model_without_the_gguf_package_names_the_extra(tmp_path: Path, monkeypatch) -> None:
    import importlib.util

    from layerwise.models.resolve import convert_gguf

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match=r"pip install 'layerwise\[gguf\]'"):
        convert_gguf(tmp_path / "m.gguf", tmp_path / "cache")


@pytest.mark.slow
def test_the_wheel_holds_the_package_the_license_and_the_command(tmp_path: Path) -> None:
    """docs/INSTALL.md's `pip wheel --no-deps -w dist .`, into a temporary folder."""
    import subprocess
    import sys
    import zipfile

    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    wheels = list(tmp_path.glob("layerwise-*.whl"))
    assert len(wheels) == 1
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "layerwise/cli.py" in names and "layerwise/settings/defaults.py" in names
    assert any(n.endswith("LICENSE") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "layerwise = layerwise.cli:main" in zipfile.ZipFile(wheels[0]).read(entry).decode()
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
