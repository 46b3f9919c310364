"""Shared by the tests that drive the CLI on a tiny saved model: a 3-block BERT with MiniLM's tokenizer, a
small csv, the arguments of a two-step train run, and a hash of a folder (what 'unchanged' means)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest


def digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (or of the file): what 'unchanged' means here."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p.relative_to(path.parent)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 3-block BERT (hidden 32) saved with the bundled MiniLM's tokenizer files."""
    from tiny_models import tiny_bert

    from layerwise.models.resolve import resolve_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    tiny_bert(vocab_size=30522, layers=3).bert.save_pretrained(out)
    source = Path(resolve_model("minilm").path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, out / name)
    return out


@pytest.fixture(scope="module")
def small_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "small.csv"
    rows = [f"sentence {i} is {'good' if i % 2 else 'bad'},{i % 2}" for i in range(40)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


def train_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--model", str(model), "--task", "csv", "--data", str(data), "--policy", "all",
            "--steps", "2", "--batch-size", "4", "--out", str(out), *extra]
