"""What the lockstep benchmarks share: their common flags and the OpenMP setting lockstep needs."""

from __future__ import annotations

import argparse
import os


def lockstep_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with --model --task --data --steps --lr --batch-size --threads --out (MiniLM on SST-2 defaults)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="minilm")
    p.add_argument("--task", default="sst2")
    p.add_argument("--data", default="../shared/data/glue/SST-2")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="keep the runs here (default: a temporary folder)")
    return p


def short_openmp_spin() -> None:
    """In lockstep the run that waits keeps an OpenMP team whose workers spin (GNU OpenMP's default, 300,000
    turns) on the cores the other run needs: that made every lockstep step about 30% slower. A short spin
    keeps the wake-ups inside a step quick. Call before torch is imported (it loads libgomp)."""
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")
