"""One-off: the MiniLM-on-MRPC converged results of 2026-11-29 as result files (layerwise.bench.store).

The runs' own folders (metrics.json, train_log.jsonl) were not kept in the repository; the only record left is
the tables of docs/BENCHMARKS.md as committed on 2026-11-29 ("MiniLM on MRPC"). This script writes those
numbers, and only those, into the result format. What the tables do not hold is ``None`` and named in each
record's ``unrecorded``:
- per-seed scores of the bench (only mean and std over seeds 0, 1, 2 were published), so the bench rows are
  summary records (``seed`` None, ``seeds`` [0, 1, 2], ``summary`` with mean and std);
- evaluations per step, except uniform LoRA seed 0 at 2e-3 (the "does it plateau" table);
- FLOPs (not counted then), seconds (only the training time relative to uniform LoRA, seeds 0 and 1),
  machine details, ranks per layer (rank 8 on q,v everywhere), git commit (the runs' commit is unknown).

    python benchmarks/migrate_mrpc.py   # writes benchmarks/results/minilm-mrpc/*.json (refuses to overwrite)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SOURCE = "docs/BENCHMARKS.md, 'MiniLM on MRPC (2026-11-29)', as committed on 2026-11-29"
DATE = "2026-11-29"
CONFIG = {"train": {"epochs": 3, "steps": 312, "batch_size": 32, "eval_every": 52, "early_stopping": 3,
                    "group_by_length": 50, "warmup_ratio": 0.06, "max_length": 128},
          "bench": {"carving": {"validation_fraction": 0.1, "validation_examples": 367, "train_examples": 3301,
                                "dev_examples": 408}, "rank": 8, "targets": "q,v",
                    "majority": {"accuracy": 0.6838, "f1": 0.8122}, "card_examples": 256},
          "command": "benchmarks/converged.py --task mrpc --data ../shared/data/glue/MRPC --out runs/converged/mrpc "
                     "(seeds 0,1 part a, seed 2 part b, then --combine a,b)"}
MACHINE = {"host": None, "cpu": None, "cores": "seeds 0,1: one core alone; seed 2: the other core, shared",
           "torch": None, "gpu": None, "note": "this project's 2-core CPU machine"}

# (lr, validation accuracy at the chosen step, chosen step, steps run, dev accuracy there) -- the sweep table
SWEEP = {"lora": [(5e-4, 0.7275, 312, 312, 0.7402), (2e-3, 0.7548, 208, 312, 0.7990), (5e-3, 0.6757, 52, 208, 0.6838)],
         "full": [(3e-5, 0.7302, 260, 312, 0.7525), (1e-4, 0.7602, 208, 312, 0.7794)]}
# uniform LoRA seed 0 at 2e-3 per evaluation: (step, dev accuracy, validation accuracy) -- the plateau table
CURVE = [(52, 0.703, 0.689), (104, 0.723, 0.725), (156, 0.779, 0.719), (208, 0.799, 0.755), (260, 0.799, 0.733),
         (312, 0.797, 0.738)]
# the bench table: method, lr, layers, acc mean, acc std, f1 mean, f1 std, trainable params, time vs LoRA (%),
# mean step scored
BENCH = [
    ("full", 1e-4, [0, 1, 2, 3, 4, 5], 0.7941, 0.0195, 0.8539, 0.0118, 22713986, 152, 225),
    ("lora", 2e-3, [0, 1, 2, 3, 4, 5], 0.7712, 0.0326, 0.8473, 0.0160, 74498, 100, 208),
    ("actnorm-top3", 2e-3, [0, 2, 3], 0.7002, 0.0197, 0.8081, 0.0171, 37634, 94, 208),
    ("cka", 2e-3, [1, 4, 5], 0.7598, 0.0172, 0.8394, 0.0085, 37634, 86, 277),
    ("budget", 2e-3, [3, 4, 5], 0.7565, 0.0057, 0.8279, 0.0025, 37634, 57, 260),
    ("lalora", 2e-3, [0, 1, 2, 3, 4, 5], 0.7819, 0.0042, 0.8509, 0.0009, 74498, 117, 295),
    ("random3", 2e-3, {"0": [0, 3, 5], "1": [0, 1, 4], "2": [0, 4, 5]}, 0.7369, 0.0159, 0.8324, 0.0053, 37634, 110,
     277),
]


def _base(method: str, seed, lr: float, cell: str, stage: str) -> dict:
    return {"model": "minilm", "task": "mrpc", "cell": cell, "method": method, "seed": seed, "lr": lr,
            "stage": stage, "config": CONFIG, "main_metric": "accuracy", "higher_is_better": True,
            "machine": MACHINE, "commit": None, "date": DATE, "source": SOURCE}


def records() -> list[dict]:
    from layerwise.bench.store import cell_name

    out = []
    for method, rows in SWEEP.items():
        for lr, val, step, steps, dev in rows:
            r = _base(method, 0, lr, cell_name(method, 0, lr), "sweep")
            curve = method == "lora" and lr == 2e-3
            r.update({"evaluations": [{"step": s, "flops": None, "seconds": None, "dev": {"accuracy": d},
                                       "validation": {"accuracy": v}} for s, d, v in CURVE] if curve else [],
                      "chosen": {"step": step, "by": "validation", "flops": None, "seconds": None,
                                 "validation": {"accuracy": val}, "dev": {"accuracy": dev}},
                      "steps": steps, "layers": None if method == "full" else [0, 1, 2, 3, 4, 5],
                      "ranks": None, "trainable_params": 22713986 if method == "full" else 74498,
                      "total_flops": None, "total_seconds": None,
                      "unrecorded": ["ranks", "total_flops", "total_seconds", "commit"]
                      + ([] if curve else ["evaluations"])})
            if curve:
                r["notes"] = "dev and validation accuracy per evaluation published to 3 decimals"
            out.append(r)
    for method, lr, layers, acc, acc_sd, f1, f1_sd, params, time_pct, step in BENCH:
        r = _base(method, None, lr, f"{method}-seeds012-lr{lr:g}", "main")
        r.update({"seeds": [0, 1, 2], "evaluations": [],
                  "chosen": {"step": step, "by": "validation", "flops": None, "seconds": None, "validation": None,
                             "dev": {"accuracy": acc, "f1": f1}, "step_is_mean_over_seeds": True},
                  "summary": {"dev": {"accuracy": {"mean": acc, "std": acc_sd, "n": 3},
                                      "f1": {"mean": f1, "std": f1_sd, "n": 3}},
                              "time_vs_lora_pct": time_pct, "time_from_seeds": [0, 1]},
                  "steps": 312, "layers": layers, "ranks": None, "trainable_params": params,
                  "total_flops": None, "total_seconds": None,
                  "unrecorded": ["seed", "evaluations", "ranks", "total_flops", "total_seconds", "commit"],
                  "notes": "summary over seeds 0, 1, 2 (per-seed scores were not kept); chosen.dev holds the means"})
        out.append(r)
    return out


def main() -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    from layerwise.bench.store import result_path, write_result

    for r in records():
        write_result(result_path(ROOT / "benchmarks/results", r["model"], r["task"], r["cell"]), r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
