"""The bench: every method on the same data, steps and seeds, in one table (Act-LoRA Tables 4-7).

Modules, one concept each: :mod:`.methods` (the registry of what a cell trains), :mod:`.cells` (the folder
layout, resume checks and training the cells), :mod:`.aggregate` (mean and spread over seeds, ratios to
uniform LoRA), :mod:`.inference` (each method's inference cost), :mod:`.render` (bench.md, bench_*.png), :mod:`.store` (one
result file per finished benchmark cell, the converged benchmarks' data) and :mod:`.flops` (counted training-step
FLOPs, the compute measure of a shared machine).
The job itself is :func:`layerwise.workflows.bench.run_bench`.
"""

from __future__ import annotations

from layerwise.bench.aggregate import aggregate, collect_cell, relative_to, summarize
from layerwise.bench.methods import (BASELINE, BENCH_METHODS, BenchMethod, BenchSettings, CellJob, build_cell,
                                     find_method, register_bench_method, resolve_methods)

__all__ = ["BASELINE", "BENCH_METHODS", "BenchMethod", "BenchSettings", "CellJob", "build_cell", "find_method",
           "register_bench_method", "resolve_methods", "aggregate", "collect_cell", "relative_to", "summarize"]
