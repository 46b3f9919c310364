"""Benchmark: the whitening of one block's residual signal, Cholesky (``resnorm``) against the symmetric inverse
square root (``coupling``), on a (d, d) second moment of 4000 random tokens. Median of 7 after a warm-up::

    python benchmarks/whitening.py --dims 384,576 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def seconds(fn, repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dims", default="384,576", help="hidden sizes (MiniLM 384, SmolLM2-135M 576)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    for d in (int(x) for x in args.dims.split(",")):
        x = torch.randn(4000, d, dtype=torch.float64)
        m, g = x.T @ x / 4000, torch.randn(d, d, dtype=torch.float64)  # (d, d) each

        def cholesky() -> torch.Tensor:
            c = torch.linalg.cholesky(m)
            return torch.linalg.solve_triangular(c, g.T, upper=False).T  # G C^{-T}

        def symmetric() -> torch.Tensor:
            eig, vec = torch.linalg.eigh(m)
            return g @ ((vec * eig.rsqrt()) @ vec.T)  # G M^{-1/2}

        a, b = seconds(cholesky), seconds(symmetric)
        print(f"d={d}: cholesky {a * 1e3:.1f} ms, symmetric root {b * 1e3:.1f} ms, ratio {b / a:.1f}")


if __name__ == "__main__":
    main()
