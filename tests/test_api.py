"""The top-level API: its names are pinned, resolve lazily, are documented in docs/API.md, and the old module
paths still import for one release with a DeprecationWarning that names the new import."""

from __future__ import annotations

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
    "export_from_card", "export_from_run", "write_export",
    "LaLoRA", "LaLoRATrainerCallback", "PhaseTimingCallback", "FrozenPrefixCallback", "prepare_gradient_checkpointing",
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


def test_library_code_uses_no_old_path():
    """Every module of the package imports without a DeprecationWarning (pytest's filter makes one an error
    only when the warning is attributed to layerwise itself; this checks it directly)."""
    modules = sorted(".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for f in (ROOT / "layerwise").rglob("*.py")
                     if "_deprecated" not in f.parts and f.name != "__main__.py")
    code = ("import importlib, sys, warnings\n"
            "warnings.filterwarnings('error', 'layerwise.* is deprecated', DeprecationWarning)\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert len(modules) > 100 and out.stdout.strip() == "ok", out.stderr[-2000:]
