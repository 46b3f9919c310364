"""Library hygiene: importing layerwise and using it leaves the user's process as it was (transformers
verbosity, matplotlib backend, warning filters, pyplot state), diagnostics go to loggers, a closed stdout pipe
ends ``layerwise`` without a traceback, and written files get the user's umask."""

from __future__ import annotations

import ast
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "LAYERWISE_PROGRESS": "0", "PYTHONPATH": str(REPO)}

# ---------------------------------------------------------------- no global side effects


@pytest.mark.slow
def test_loading_a_model_and_saving_a_card_leave_global_state_alone(tmp_path):
    # A fresh process whose "user" chose an svg backend, transformers INFO logs and an extra warning filter.
    script = textwrap.dedent(f"""
        import json, sys, warnings
        import matplotlib
        matplotlib.use("svg")
        import peft, torch, transformers  # they add warning filters of their own when imported
        transformers.logging.set_verbosity_info()
        warnings.filterwarnings("ignore", message="user's own filter")
        filters = list(warnings.filters)

        import layerwise.adapters.bridge, layerwise.card.render, layerwise.evaluate.report, layerwise.bench.render
        import layerwise.evaluate.stability_render
        from layerwise.data import Example, make_batches
        from layerwise.data.tasks import get_task
        from layerwise.models import load_model
        from layerwise.card.profiling import profile_layers

        lm = load_model("minilm", head="classification", num_labels=2)
        examples = [Example(f"sentence {{i}} is " + ("good" if i % 2 else "bad"), None, i % 2) for i in range(32)]
        batches = make_batches(examples, lm.tokenizer, get_task("sst2"), batch_size=16)
        card = profile_layers(lm.model, batches, "actnorm,gradnorm", name="minilm", show_progress=False)
        files = card.save({str(tmp_path)!r})
        print(json.dumps({{"verbosity": transformers.logging.get_verbosity(), "backend": matplotlib.get_backend(),
                          "filters": warnings.filters == filters, "pyplot": "matplotlib.pyplot" in sys.modules,
                          "png": files["png"].stat().st_size}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    assert state["verbosity"] == logging.INFO  # transformers' levels are the logging module's
    assert state["backend"] == "svg" and state["filters"] is True and state["pyplot"] is False
    assert state["png"] > 0 and (tmp_path / "card.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_library_module_sets_process_wide_state():
    """Static guard for the paths the test above does not run: no pyplot, no backend or verbosity switch,
    no global warning filter, no print outside the command layer."""
    offenders = []
    for path in sorted((REPO / "layerwise").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if any(n == "matplotlib.pyplot" or n == "pyplot" for n in names):
                    offenders.append(f"{rel}:{node.lineno}: imports pyplot")
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                scoped = rel == "layerwise/runtime/quiet.py"  # its context managers restore what they change (tested)
                if not scoped and name.endswith(("matplotlib.use", "set_verbosity_error", "set_verbosity_warning",
                                                 "disable_default_handler", "logging.basicConfig")):
                    offenders.append(f"{rel}:{node.lineno}: {name}")
                if name in ("warnings.filterwarnings", "warnings.simplefilter") and not _inside_catch(tree, node):
                    offenders.append(f"{rel}:{node.lineno}: {name} outside warnings.catch_warnings()")
                if name == "print" and not rel.startswith(("layerwise/commands/", "layerwise/cli.py")):
                    offenders.append(f"{rel}:{node.lineno}: print (use a module logger)")
    assert offenders == []


def _inside_catch(tree: ast.AST, call: ast.Call) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any("catch_warnings" in ast.unparse(i.context_expr) for i in node.items):
            if any(inner is call for inner in ast.walk(node)):
                return True
    return False


def test_wrapping_a_model_with_peft_raises_no_warning_and_keeps_the_filters():
    import peft

    from layerwise.adapters.bridge import apply_adapter
    from layerwise.models.layers import find_layer_stack
    from layerwise.runtime.quiet import GRADIENT_CHECKPOINTING_WARNING
    from tiny_models import tiny_bert

    # The pinned transformers/peft pair does warn when peft wraps a model (else the filter is dead code).
    with warnings.catch_warnings(record=True) as raw:
        warnings.simplefilter("always")
        model = tiny_bert()
        peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["query"]))
    assert any(GRADIENT_CHECKPOINTING_WARNING in str(w.message) and w.category is FutureWarning for w in raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        before = list(warnings.filters)
        model = tiny_bert()
        wrapped = apply_adapter(model, find_layer_stack(model), [1], method="lora", targets="q,v")
        assert warnings.filters == before
        with pytest.warns(FutureWarning, match="is_gradient_checkpointing"):
            _ = wrapped.base_model.model.is_gradient_checkpointing  # after the call it is not hidden


def test_loading_a_model_restores_transformers_verbosity(minilm):
    import transformers

    from layerwise.models import load_model

    before = transformers.logging.get_verbosity()
    try:
        for level in (logging.DEBUG, logging.WARNING):
            transformers.logging.set_verbosity(level)
            load_model("minilm", head="classification", num_labels=2)
            assert transformers.logging.get_verbosity() == level
    finally:
        transformers.logging.set_verbosity(before)


# ---------------------------------------------------------------- diagnostics are log records


def test_status_lines_are_log_records_not_prints(caplog, capsys):
    from layerwise.runtime.progress import status

    with caplog.at_level(logging.INFO, logger="layerwise"):
        with status("converting model.gguf"):
            pass
    assert [(r.name, r.levelno) for r in caplog.records] == [("layerwise.runtime.progress", logging.INFO)] * 2
    assert caplog.records[0].getMessage() == "converting model.gguf ..."
    assert caplog.records[1].getMessage().startswith("done in ") and caplog.records[1].getMessage().endswith("s")
    assert capsys.readouterr() == ("", "")


def test_first_ctrl_c_is_logged_as_a_warning(caplog, capsys):
    from layerwise.train.interrupt import DeferredInterrupt

    # a process started in the background by a non-interactive shell inherits an ignored SIGINT, which
    # DeferredInterrupt rightly keeps ignored: give this test Python's own Ctrl-C handler
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _first_ctrl_c(caplog, capsys, DeferredInterrupt)
    finally:
        signal.signal(signal.SIGINT, previous)


def _first_ctrl_c(caplog, capsys, DeferredInterrupt):
    with caplog.at_level(logging.WARNING, logger="layerwise"), DeferredInterrupt() as interrupt:
        os.kill(os.getpid(), signal.SIGINT)
    assert interrupt.requested
    assert [r.name for r in caplog.records] == ["layerwise.train.interrupt"]
    assert "saving a checkpoint" in caplog.records[0].getMessage() and capsys.readouterr().err == ""


def test_the_command_shows_log_records_on_stderr_and_then_removes_its_handler(monkeypatch, capsys):
    from layerwise import cli

    def run(args):
        logging.getLogger("layerwise.some.module").info("stage 1/2")
        logging.getLogger("layerwise.some.module").debug("not shown")
        print("result line")
        return 0

    monkeypatch.setattr("layerwise.commands.models.run", run)
    logger = logging.getLogger("layerwise")
    handlers, level = list(logger.handlers), logger.level
    assert cli.main(["models"]) == 0
    assert capsys.readouterr() == ("result line\n", "layerwise models: stage 1/2\n")
    assert (logger.handlers, logger.level) == (handlers, level)


def test_the_command_shows_the_librarys_warnings_as_one_line_and_others_as_python_does(monkeypatch, capsys):
    from layerwise import cli
    from layerwise.data.readers import DataWarning

    def run(args):
        warnings.warn("data.csv: 1 of 3 classes occur in only one row", DataWarning)
        warnings.warn("someone else's", UserWarning)
        return 0

    monkeypatch.setattr("layerwise.commands.models.run", run)
    with pytest.warns(UserWarning, match="someone else's") as passed_on:  # not the library's: handed on
        before = warnings.showwarning
        assert cli.main(["models"]) == 0
        assert warnings.showwarning is before
    assert capsys.readouterr().err == "layerwise models: warning: data.csv: 1 of 3 classes occur in only one row\n"
    assert [w.category for w in passed_on] == [UserWarning]


# ---------------------------------------------------------------- closed stdout


def test_models_json_into_head_exits_without_traceback():
    cmd = f"{sys.executable} -m layerwise models --json | head -1; echo rc=${{PIPESTATUS[0]}} >&2"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.stdout == "[\n"
    assert proc.stderr in ("rc=0\n", "rc=1\n")  # 1 when head left before the last write (the usual case)


def test_stdout_closed_before_any_output_exits_1_quietly():
    proc = subprocess.Popen([sys.executable, "-m", "layerwise", "models", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV)
    proc.stdout.close()  # the reader is gone before layerwise writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1 and err == ""


# ---------------------------------------------------------------- permissions


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_written_files_and_folders_get_the_users_umask(tmp_path, umask):
    from layerwise.runtime.io import atomic_write_json, atomic_write_text, atomic_write_with
    from layerwise.train.checkpoint import replace_dir

    previous = os.umask(umask)
    try:
        files = [atomic_write_text(tmp_path / "a.txt", "x"), atomic_write_json(tmp_path / "sub" / "b.json", {}),
                 atomic_write_with(tmp_path / "c.bin", lambda tmp: Path(tmp).write_bytes(b"\0"))]
        folder = replace_dir(tmp_path / "ckpt", lambda tmp: (tmp / "w").write_text("w"))
    finally:
        os.umask(previous)
    for f in [*files, folder / "w"]:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "c.bin", "ckpt", "sub"]  # no temporaries left
