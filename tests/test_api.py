"""The top-level API: its names are pinned, resolve lazily, are documented in docs/API.md, and the old module
paths still import for one release with a DeprecationWarning that names the new import."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import layerwise
from layerwise._deprecated import MOVED

ROOT = Path(__file__).resolve().parent.parent

# Changing this list is an API change: add a name here only with a line in docs/API.md (scripts/api_doc.py),
# and remove one only after a release in which it warned.
PUBLIC = [
    "__version__",
    "load_model", "resolve_model", "find_layer_stack", "LayerStack",
    "load_task", "sample_calibration", "make_batches",
    "profile_layers", "LayerCard", "IMPORTANCE", "register_importance",
    "select", "Selection", "POLICIES", "register_policy", "split_rank_budget",
    "apply_adapter", "build_peft_config", "METHODS", "suggest", "Suggestion", "ExportedSelection",
    "export_from_card", "export_from_run", "write_export", "load_adapter", "LoadedAdapter",
    "LaLoRA", "LaLoRATrainerCallback", "PhaseTimingCallback", "FreezeTrainerCallback", "FrozenPrefixCallback", "prepare_gradient_checkpointing",
    "LayerwiseError", "ConfigError", "DataError", "ModelError",
]

# Old packages whose shim hands out names (their submodules moved with them) and old modules that became
# packages: neither is one module aliased to another.
PACKAGE_SHIMS = {"layerwise.probe", "layerwise.adaptive"}
FORWARDED = {"layerwise.card": "LayerCard", "layerwise.selection": "select"}


def test_public_names_are_pinned():
    assert layerwise.__all__ == PUBLIC
    assert dir(layerwise) == sorted(PUBLIC)


def test_every_public_name_resolves_to_its_documented_object():
    for name in PUBLIC[1:]:
        value = getattr(layerwise, name)
        module, attr = layerwise._API[name]
        assert value is getattr(importlib.import_module(module), attr), name
        if callable(value):
            assert (inspect.getdoc(value) or "").strip(), f"{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        layerwise.nonexistent  # noqa: B018


def test_import_stays_cheap():
    code = ("import sys, layerwise; dir(layerwise); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_api_doc_is_current():
    spec = importlib.util.spec_from_file_location("api_doc", ROOT / "scripts" / "api_doc.py")
    api_doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api_doc)
    text = api_doc.render()
    assert (ROOT / "docs" / "API.md").read_text() == text, "docs/API.md is stale: run python scripts/api_doc.py"
    for name in PUBLIC[1:]:
        assert f"**`{name}" in text or f"**`class {name}" in text, name


def _reimport(monkeypatch: pytest.MonkeyPatch, old: str) -> tuple[object, list[warnings.WarningMessage]]:
    """Import ``old`` afresh (as a user's first import would), recording the warnings it gives."""
    for loaded in [m for m in sys.modules if m == old or m.startswith(old + ".")]:
        monkeypatch.delitem(sys.modules, loaded)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        __import__(old)  # as an import statement does (importlib.import_module adds a frame of its own)
    return sys.modules[old], caught


@pytest.mark.parametrize("old", sorted(set(MOVED) - PACKAGE_SHIMS - set(FORWARDED) - {"layerwise.probe.plan"}))
def test_old_module_path_warns_and_is_the_new_module(monkeypatch, old):
    module, caught = _reimport(monkeypatch, old)
    assert module is importlib.import_module(MOVED[old])
    messages = [str(w.message) for w in caught if w.category is DeprecationWarning]
    assert len(messages) == 1 and re.search(rf"{re.escape(old)} is deprecated.*{re.escape(MOVED[old])}", messages[0])
    assert caught[0].filename == __file__  # attributed to the importing line, not to layerwise


@pytest.mark.parametrize("old", sorted(PACKAGE_SHIMS))
def test_old_package_warns_and_hands_out_its_names(monkeypatch, old):
    module, caught = _reimport(monkeypatch, old)
    assert [MOVED[old] in str(w.message) for w in caught] == [True]
    new = importlib.import_module(MOVED[old])
    for name in new.__all__:
        assert getattr(module, name) is getattr(new, name)


def test_old_submodule_shown_in_the_readme_still_imports(monkeypatch):
    from layerwise.card.probe import plan

    _reimport(monkeypatch, "layerwise.probe")
    with pytest.warns(DeprecationWarning, match="layerwise.card.probe.plan"):
        __import__("layerwise.probe.plan")
    assert sys.modules["layerwise.probe.plan"] is plan


@pytest.mark.parametrize("package", sorted(FORWARDED))
def test_package_that_took_an_old_module_name_forwards_its_names(package):
    name = FORWARDED[package]
    with pytest.warns(DeprecationWarning, match=rf"{re.escape(package)}\.{name} is deprecated.*{MOVED[package]}"):
        value = getattr(importlib.import_module(package), name)
    assert value is getattr(layerwise, name)
    with pytest.raises(AttributeError):
        getattr(importlib.import_module(package), "not_a_name")


def _old_path_imports(path: Path) -> list[str]:
    """The imports in ``path`` that name an old module path (``layerwise.card`` and ``layerwise.selection`` are
    packages now: importing their sub-modules is fine, their old names are not)."""
    packages = {"layerwise.card", "layerwise.selection"}
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module in packages:  # an old name, or a sub-module
            folder = ROOT / node.module.replace(".", "/")
            submodules = {f.stem for f in folder.glob("*.py")} | {d.name for d in folder.iterdir() if d.is_dir()}
            found += [f"{path.name}:{node.lineno}: {node.module}.{a.name}" for a in node.names
                      if a.name not in submodules]
            continue
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "layerwise"]
        else:
            continue
        found += [f"{path.name}:{node.lineno}: {name}" for name in names
                  if any(name == old or name.startswith(old + ".") for old in MOVED if old not in packages)]
    return found


def test_library_code_uses_no_old_path(tmp_path):
    """No module of the package imports through an old path (a static scan: lazy imports in functions count)."""
    modules = [f for f in (ROOT / "layerwise").rglob("*.py") if "_deprecated" not in f.parts]
    assert len(modules) > 100
    assert [hit for f in modules for hit in _old_path_imports(f)] == []
    planted = tmp_path / "planted.py"  # the scan finds each kind of old path, and passes the new ones
    planted.write_text("from layerwise import distributed\nfrom layerwise.card import LayerCard, metrics\n"
                       "def f():\n    import layerwise.probe.plan\n    from layerwise.runtime import io\n")
    assert _old_path_imports(planted) == ["planted.py:1: layerwise.distributed", "planted.py:2: layerwise.card.LayerCard",
                                          "planted.py:4: layerwise.probe.plan"]
