"""Benchmark: the 30-block decoder (SmolLM2-135M) at convergence, each cell kept as data (issue 28).

Every cell is one (method, seed, learning rate) training run with early stopping on the validation split. A
finished cell writes ``<results>/<model>-<task>/<method>-s<seed>-lr<lr>.json`` (layerwise.bench.store: scores
per evaluation with the step, its counted training FLOPs and seconds, the step the validation split chose,
layers, ranks, trainable parameters, machine, git commit, date). The runner skips cells whose file exists, so
the same command resumes cell by cell; ``--commit`` commits each file as it lands.

Compute is counted in FLOPs (layerwise.bench.flops: each method's training step counted with torch's
FlopCounterMode at three lengths, fitted to c + aT + bT^2, summed over the cell's padded batch lengths; the
prefix cache's build is added once), because wall time on a shared machine is noise. Seconds are recorded too.
A freezing method (``freeze-auto``, ``freeze-card``) has steps of several depths: each step is counted at the
depth that trained it (read from the training log's freeze lines), and each cache fill's forward is added.

The plan, in stages (``--stage``):
- ``sweep``: uniform LoRA (``lora``), seed 0, at each of ``--lrs``; uniform's rate U is the best validation.
- ``main``: every method of ``--methods`` at U, seeds ``--seeds`` (needs the sweep finished).
- ``own``: every method but lora, seed 0 (``--own-seeds``), at 2U and 4U (``--own-factors``; its own rate is then
  the best of U, 2U, 4U on seed 0; more seeds at a rate confirm it).
- ``full``: full fine-tuning (``full``: every parameter trained, no adapter), seed 0, at each of ``--full-lrs``;
  recorded as sweep cells; the tables report the rate with the best validation score. A step of it is counted like
  any other (the backward reaches every weight), with no prefix.
- ``matched``: compute-matched runs. Every method but lora whose main cell (same seed) cost fewer FLOPs per step
  trains again at U with a step budget that spends uniform LoRA's mean counted FLOPs to its chosen step (more
  epochs for a cheaper method; the same evaluation interval and early stopping); its file is
  ``<method>-s<seed>-lr<U>-matched.json``. A method whose main cell's budget already covers those FLOPs needs
  no extra run.

Select cells with ``--cells`` (names or stems) or split the plan with ``--part i/n``; ``--list`` prints the
plan and which cells are done; ``--estimate`` times one training step and one evaluation batch of each method
on this core and prints the plan's total.

    nice -n 5 taskset -c 1 python benchmarks/deep.py --stage sweep --commit
    python benchmarks/deep.py --stage main --list
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "lora"
FULL = "full"  # full fine-tuning: its own rates (stage full), not uniform LoRA's


@dataclass(frozen=True)
class Cell:
    """One planned training run."""

    method: str
    seed: int
    lr: float | None  # None: uniform's rate is not known yet (the sweep is unfinished)
    stage: str
    steps: int | None = None  # stage matched: the step budget (None until the main cells it is matched to ran)
    budget_flops: float | None = None  # stage matched: uniform LoRA's mean FLOPs to its chosen step

    @property
    def name(self) -> str:
        from layerwise.bench.store import cell_name

        return cell_name(self.method, self.seed, self.lr) + ("-matched" if self.stage == "matched" else "")

    @property
    def ready(self) -> bool:
        """Whether the cell can run now (its rate, and for a matched cell its budget, are known)."""
        return self.lr is not None and (self.stage != "matched" or self.steps is not None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="sst2")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/glue/SST-2"))
    p.add_argument("--train-subset", type=int, default=2000)
    p.add_argument("--validation-fraction", type=float, default=0.1)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--evals-per-epoch", type=int, default=2)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--targets", default="q,v")
    p.add_argument("--eval-max-examples", type=int, default=None, help="score only the first this many dev "
                   "examples (smoke tests; the benchmark scores all)")
    p.add_argument("--dev-eval", default="best", choices=("best", "every"), help="score the dev set only at the "
                   "step the validation split chose (best: the reported number, at a fraction of the cost) or at "
                   "every evaluation")
    p.add_argument("--card-samples", type=int, default=256, help="training examples the Layer Card measures")
    p.add_argument("--lrs", default="1e-3,5e-4,2e-3,2e-4", help="uniform LoRA's sweep (stage sweep), run in this "
                   "order; a tie goes to the first")
    p.add_argument("--methods", default="lora,pareto")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--own-seeds", default="0", help="stage own: seeds of each selection's own rates (seed 0 "
                   "chooses the rate; more seeds confirm it)")
    p.add_argument("--own-factors", default="2,4", help="stage own: the rates tried, as multiples of uniform's")
    p.add_argument("--stage", default="sweep", help="comma list of sweep, main, own, matched")
    p.add_argument("--results", default=str(ROOT / "benchmarks/results"))
    p.add_argument("--work", default=str(ROOT / "runs/deep"), help="training folders (not committed)")
    p.add_argument("--cells", default=None, help="comma list of cell names to run (others skipped)")
    p.add_argument("--part", default=None, help="i/n: the i-th of n interleaved slices of the plan")
    p.add_argument("--list", action="store_true", help="print the plan and what is done, run nothing")
    p.add_argument("--estimate", action="store_true", help="time one step of each kind, print the plan's cost")
    p.add_argument("--commit", action="store_true", help="git add + commit each finished cell's file")
    p.add_argument("--full-lrs", default="2e-5,5e-5,1e-4",
                   help="stage full: full fine-tuning's rates, seed 0 (the validation split chooses among them)")
    p.add_argument("--flop-lengths", default="16,48,96", help="padded lengths the step FLOPs are counted at")
    return p.parse_args(argv)


# -- the plan -------------------------------------------------------------------------------------------
def uniform_rate(args: argparse.Namespace) -> float | None:
    """U: the sweep rate whose seed-0 uniform LoRA cell has the best chosen validation score (None until all ran)."""
    from layerwise.bench.store import cell_name, is_finished, read_result, result_path

    best = None
    for lr in _floats(args.lrs):
        path = result_path(args.results, args.model, args.task, cell_name(BASELINE, 0, lr))
        if not is_finished(path):
            return None
        r = read_result(path)
        value = ((r["chosen"] or {}).get("validation") or {}).get(r["main_metric"])
        sign = 1 if r["higher_is_better"] else -1
        if value is not None and (best is None or sign * value > sign * best[0]):
            best = (value, lr)
    return None if best is None else best[1]


def plan(args: argparse.Namespace) -> list[Cell]:
    stages = [s.strip() for s in args.stage.split(",")]
    unknown = set(stages) - {"sweep", "main", "own", "matched", "full"}
    if unknown:
        raise SystemExit(f"--stage: unknown {', '.join(sorted(unknown))}; allowed: sweep, main, own, matched, full")
    u = uniform_rate(args)
    cells: list[Cell] = []
    if "sweep" in stages:
        cells += [Cell(BASELINE, 0, lr, "sweep") for lr in _floats(args.lrs)]
    if "full" in stages:
        cells += [Cell(FULL, 0, lr, "sweep") for lr in _floats(args.full_lrs)]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if FULL in methods:
        raise SystemExit(f"--methods: {FULL} trains at its own rates, not uniform LoRA's: run it with --stage full "
                         "(rates --full-lrs)")
    if "main" in stages:
        cells += [Cell(m, s, u, "main") for s in _ints(args.seeds) for m in methods]
    if "own" in stages:
        cells += [Cell(m, s, None if u is None else f * u, "own") for s in _ints(args.own_seeds)
                  for m in methods if m != BASELINE for f in _floats(args.own_factors)]
    if "matched" in stages:
        for s in _ints(args.seeds):
            for m in methods:
                if m != BASELINE:
                    cell = matched_cell(args, m, s, u)
                    if cell is not None:
                        cells.append(cell)
    cells = list(dict.fromkeys(cells))
    seen, out = set(), []
    for c in cells:  # the same (method, seed, lr) planned by two stages runs once
        key = (c.method, c.seed, c.lr, c.stage == "matched")
        if c.lr is None or key not in seen:
            seen.add(key)
            out.append(c)
    if args.cells:
        wanted = {n.strip() for n in args.cells.split(",")}
        out = [c for c in out if c.name in wanted]
    if args.part:
        i, n = (int(x) for x in args.part.split("/"))
        out = [c for k, c in enumerate(out) if k % n == i - 1]
    return out


def matched_cell(args: argparse.Namespace, method: str, seed: int, u: float | None) -> Cell | None:
    """The compute-matched cell of ``method`` and ``seed``: a step budget spending uniform LoRA's mean FLOPs to its
    chosen step (over its finished cells at U) at the method's mean FLOPs per step in its main cell. Without
    ``steps`` while those cells are missing; None when the main cell's own budget already spends them."""
    from layerwise.bench.store import is_finished, read_result, result_path

    waiting = Cell(method, seed, u, "matched")
    if u is None:
        return waiting
    uniform = [result_path(args.results, args.model, args.task, cell_name_of(BASELINE, s, u))
               for s in _ints(args.seeds)]
    if not all(is_finished(p) for p in uniform):
        return waiting  # the budget is the mean over every seed of uniform LoRA: fixed once, not moving per cell
    flops = [(read_result(p).get("chosen") or {}).get("flops") for p in uniform]
    flops = [f for f in flops if f]
    main = result_path(args.results, args.model, args.task, cell_name_of(method, seed, u))
    if not flops or not is_finished(main):
        return waiting
    r = read_result(main)
    budget = sum(flops) / len(flops)
    steps = math.ceil(budget / (r["total_flops"] / r["steps"]))
    if steps <= r["config"]["train"]["steps"]:
        return None  # the main cell could already spend uniform's FLOPs: its curve answers "at equal compute"
    return replace(waiting, steps=steps, budget_flops=budget)


def cell_name_of(method: str, seed: int, lr: float) -> str:
    from layerwise.bench.store import cell_name

    return cell_name(method, seed, lr)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# -- settings ---------------------------------------------------------------------------------------------
def data_source(args: argparse.Namespace):
    from layerwise.settings import DataSource

    return DataSource(args.task, args.data, max_length=args.max_length, train_subset=args.train_subset,
                      validation_fraction=args.validation_fraction)


def train_config(args: argparse.Namespace, n_train: int, lr: float):
    from layerwise.train import TrainConfig

    per_epoch = math.ceil(n_train / args.batch_size)
    return TrainConfig(steps=max(1, round(args.epochs * per_epoch)), lr=lr, batch_size=args.batch_size,
                       max_length=args.max_length, eval_every=max(1, per_epoch // args.evals_per_epoch),
                       early_stopping=args.patience, group_by_length=50, warmup_ratio=0.06,
                       eval_max_examples=args.eval_max_examples, dev_eval=args.dev_eval)


# -- one cell ---------------------------------------------------------------------------------------------
def run_cell(args: argparse.Namespace, cell: Cell, data, n_train: int) -> Path:
    """Train the cell (resuming its training folder), then write its result file."""
    from layerwise.bench.cells import cell_dir
    from layerwise.bench.store import result_path, write_result
    from layerwise.settings import AdapterChoice, BenchOptions, Calibration
    from layerwise.workflows.bench import run_bench

    # one training folder per configuration: the main stage's cells share their rate's, a matched cell's step
    # budget is its own (a folder holds one run's settings; check_resume refuses others)
    out = Path(args.work) / f"{args.model}-{args.task}" / (("full-" if cell.method == FULL else "") + f"lr{cell.lr:g}"
                                                          + (f"-steps{cell.steps}" if cell.steps else ""))
    config = train_config(args, n_train, cell.lr)
    if cell.steps:
        config = replace(config, steps=cell.steps)
    start = time.perf_counter()
    bench = run_bench(args.model, data, out, train_config=config,
                      bench=BenchOptions(methods=cell.method, train_seeds=(cell.seed,), inference_examples=0,
                                         **({"full_lr": cell.lr} if cell.method == FULL else {})),
                      adapter=AdapterChoice("lora", args.targets, args.rank),
                      calibration=Calibration(samples=args.card_samples, max_length=args.max_length), device="cpu",
                      show_progress=False)
    wall = time.perf_counter() - start
    folder = cell_dir(out, cell.method, cell.seed)
    record = make_record(args, cell, folder, config, bench["config"], wall)
    path = write_result(result_path(args.results, args.model, args.task, cell.name), record)
    if args.commit:
        _git_commit(path, f"results: {args.model}-{args.task} {cell.name} (best validation "
                          f"{_best(record)}, {record['total_flops']:.3g} FLOPs)")
    return path


def _best(record: dict) -> str:
    value = ((record["chosen"] or {}).get("validation") or {}).get(record["main_metric"])
    return "n/a" if value is None else f"{value:.4f}"


def step_cost(args: argparse.Namespace, folder: Path):
    """The counted FLOPs of one training step of this cell's adapter, or of full fine-tuning when the cell has no
    adapter (cached per layers in the work folder)."""
    selection = json.loads((folder / "selection.json").read_text())
    if selection["adapter"] is None:
        return layers_cost(args, None, 0)
    return layers_cost(args, selection["selection"]["layers"], selection["adapter"]["rank"])


def layers_cost(args: argparse.Namespace, layers: list[int] | None, rank: int):
    """The counted FLOPs of one LoRA step on ``layers`` (blocks below the lowest one are the prefix), or of one
    full fine-tuning step when ``layers`` is None, cached per layers in the work folder's ``step_flops.json``."""
    from layerwise.bench.flops import StepCost

    key = (f"{args.model}|{args.task}|full" if layers is None else
           f"{args.model}|{args.task}|{args.targets}|{rank}|{','.join(map(str, layers))}")
    cache_path = Path(args.work) / "step_flops.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    if key not in cache:
        cost = count_cost(args, layers, rank)
        cache[key] = cost.to_dict()
        from layerwise.runtime.io import atomic_write_json

        atomic_write_json(cache_path, cache)
    return StepCost(**cache[key])


_READY: dict = {}


def _prepared(args: argparse.Namespace):
    """The model and data, loaded once per process (a FLOP count adapts a copy of the model)."""
    import torch

    from layerwise.workflows.prepare import prepare

    if args.model not in _READY:
        _READY[args.model] = prepare(args.model, data_source(args), torch.device("cpu"))
    return _READY[args.model]


def count_cost(args: argparse.Namespace, layers: list[int] | None, rank: int, batch: int = 4):
    """Count a LoRA step on ``layers`` at batch ``batch`` and three lengths (FLOPs scale with the batch); with
    ``layers`` None, a full fine-tuning step (every weight's gradient, no prefix)."""
    import copy

    import torch

    from layerwise.adapters.bridge import apply_adapter
    from layerwise.bench.flops import count_step

    from layerwise.models.layers import find_layer_stack

    ready = _prepared(args)
    base = copy.deepcopy(ready.loaded.model)
    if layers is None:
        model = base
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        model = apply_adapter(base, find_layer_stack(base, ready.stack.path), list(layers), targets=args.targets,
                              rank=rank)
    model.train()
    vocab = ready.loaded.tokenizer.vocab_size
    gen = torch.Generator().manual_seed(0)

    def make_batch(b: int, t: int) -> dict:
        ids = torch.randint(10, vocab - 1, (b, t), generator=gen)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.zeros(b, dtype=torch.long)}

    lowest = 0 if layers is None else min(layers)
    # the flop counter names a module by its path from the outermost module called, under the root's class name
    suffixes = tuple(f"{ready.stack.path}.{i}" for i in range(lowest))
    names = [n for n, _ in model.named_modules() if n.endswith(suffixes)]
    prefix = [f"{type(model).__name__}.{n}" for n in names]
    return count_step(model, make_batch, batch, _ints(args.flop_lengths), prefix)


def make_record(args: argparse.Namespace, cell: Cell, folder: Path, config, bench_config: dict, wall: float) -> dict:
    from layerwise.bench.store import choose_step, machine_info
    from layerwise.train.log import read_log

    metrics = json.loads((folder / "metrics.json").read_text())
    selection = json.loads((folder / "selection.json").read_text())
    log = read_log(folder / "train_log.jsonl")
    steps = sorted((r for r in log if "loss" in r and "shapes" in r), key=lambda r: r["step"])
    steps = list({r["step"]: r for r in steps}.values())  # a resumed run repeats no step, but be sure
    cost = step_cost(args, folder)
    prefix = metrics.get("prefix_cache") or {}
    if metrics.get("freeze"):
        step_flops, extra = freeze_flops(args, selection, metrics["freeze"], steps, log)
    else:
        cached = bool(prefix.get("used"))
        build = 0.0
        if cached:  # the prefix's forward once per training example (the eval sets' part is not training compute)
            build = sum(cost.prefix(n) for n in _train_lengths(args))
        step_flops = [sum(cost.step(int(t), int(b), cached) for b, t in r["shapes"]) for r in steps]
        extra = {0: (build, prefix.get("build_seconds", 0.0) if cached else 0.0)}
    running, flops, seconds = {}, 0.0, 0.0
    added = sorted(extra.items())
    for r, f in zip(steps, step_flops):
        while added and added[0][0] < r["step"]:  # work done after an earlier step (a cache fill) or before any
            flops, seconds = flops + added[0][1][0], seconds + added[0][1][1]
            added.pop(0)
        flops += f
        seconds += r.get("step_s", 0.0)
        running[r["step"]] = (flops, seconds)
    total_flops = flops + sum(f for _, (f, _) in added)  # a fill after the last step was still paid for
    evaluations, at_best = [], None
    for r in log:
        if "eval" not in r:
            continue
        if r.get("at_best"):  # --dev-eval best: the dev set scored once, on the chosen step's weights
            at_best = r
            continue
        flops, secs = running.get(r["step"], (None, None))
        evaluations.append({"step": r["step"], "flops": flops, "seconds": secs, "dev": r["eval"] or None,
                            "validation": r.get("validation")})
    main, higher = metrics["main_metric"], metrics.get("higher_is_better", True)
    best = choose_step(evaluations, main, higher)
    if best is not None and at_best is not None:
        if at_best["step"] != best["step"]:
            raise SystemExit(f"{folder}: the dev set was scored at step {at_best['step']}, the validation split "
                             f"chose step {best['step']}")
        best = {**best, "dev": at_best["eval"]}
    sel = selection["selection"]
    return {
        "model": args.model, "task": args.task, "cell": cell.name, "method": cell.method, "seed": cell.seed,
        "lr": cell.lr, "stage": cell.stage,
        "config": {"train": config.to_dict(), "bench": {k: bench_config.get(k) for k in
                                                         ("carving", "rank", "targets", "precision", "majority",
                                                          "model_params")},
                   "flop_fit": cost.to_dict(), "prefix_cache": prefix or None},
        "evaluations": evaluations,
        "chosen": None if best is None else {"step": best["step"], "by": "validation", "flops": best["flops"],
                                             "seconds": best["seconds"], "validation": best["validation"],
                                             "dev": best["dev"]},
        "main_metric": main, "higher_is_better": higher, "layers": sel.get("layers"),
        "ranks": None if selection["adapter"] is None else (
            selection["adapter"].get("ranks") or {str(i): selection["adapter"]["rank"] for i in sel.get("layers") or []}),
        "trainable_params": metrics["trainable_params"], "steps": metrics["steps"],
        "matched_to_flops": cell.budget_flops,
        "freeze": None if not metrics.get("freeze") else {k: metrics["freeze"].get(k) for k in (
            "mode", "freeze_step", "depth", "kendall_tau", "cache_fill_seconds", "epoch_seconds")},
        "total_flops": total_flops,
        "total_seconds": wall, "train_seconds": metrics.get("train_seconds"),
        "machine": machine_info(), "commit": _git_head(), "date": datetime.datetime.now(datetime.timezone.utc)
        .strftime("%Y-%m-%dT%H:%M:%SZ"), "unrecorded": [],
        "notes": ("dev: scored only at the chosen step (--dev-eval best). " if args.dev_eval == "best" else "")
                 + "FLOPs: counted training FLOPs (forward + backward, FlopCounterMode fit c+aT+bT^2 at batch 4, scaled "
                 "to each step's batch and padded length), the prefix cache's build added once; evaluation not "
                 "counted. seconds: summed step times (+ cache build) on a shared machine."
                 + (" freeze: each step counted at its trainable depth (the frozen blocks' forward served from the "
                    "cache, no backward below), each cache fill's forward of the newly frozen blocks added after "
                    "the step that froze them." if metrics.get("freeze") else ""),
    }


def _train_lengths(args: argparse.Namespace) -> list[int]:
    """The token count of each training example (what the prefix cache holds)."""
    from layerwise.data.collate import encode_examples

    ready = _prepared(args)
    feats = encode_examples(ready.task.train, ready.loaded.tokenizer, ready.task.task, args.max_length)
    return [len(f["input_ids"]) for f in feats]


def freeze_flops(args: argparse.Namespace, selection: dict, freeze: dict, steps: list[dict],
                 log: list[dict]) -> tuple[list[float], dict[int, tuple[float, float]]]:
    """Counted FLOPs of a freezing run (``--freeze``): each step's at the depth that trained it, and the cache
    fills. With the bottom ``j`` adapted blocks frozen, a step costs what a LoRA step on the blocks above costs
    with its prefix cached: the frozen blocks' forward is served from the cache and the backward stops above
    them. A fill moving the cache from block ``i`` to ``j`` runs blocks ``i..j-1`` forward once per training
    example. Returns the FLOPs of each step and ``{step: (fill FLOPs, fill seconds)}`` paid after that step."""
    blocks = sorted(selection["selection"]["layers"])
    rank = selection["adapter"]["rank"]
    rows = [r for r in log if "freeze" in r]
    if freeze.get("frozen") and not rows:
        raise SystemExit("a --freeze run without the train_log's freeze lines (written since 2026-12-05): its "
                         "steps' depths are unknown; rerun the cell")
    check_freeze_rows(freeze, rows)
    cached = bool(freeze.get("cache"))
    costs = {0: layers_cost(args, blocks, rank)}
    for r in rows:
        j = r["freeze"]["frozen"]
        if j < len(blocks) and j not in costs:
            costs[j] = layers_cost(args, blocks[j:], rank)
    lengths = _train_lengths(args) if cached and rows else []
    extra, before = {}, 0
    for r in rows:
        j = min(r["freeze"]["frozen"], len(blocks) - 1)
        fill = sum(costs[j].prefix(n) - costs[before].prefix(n) for n in lengths) if cached else 0.0
        extra[r["step"]] = (fill, r["freeze"].get("fill_s", 0.0))
        before = j
    out, k = [], 0
    for step in steps:
        while k < len(rows) and rows[k]["step"] < step["step"]:
            k += 1
        j = min(rows[k - 1]["freeze"]["frozen"], len(blocks) - 1) if k else 0  # all frozen (keep_top 0): the top
        out.append(sum(costs[j].step(int(t), int(b), cached and j > 0) for b, t in step["shapes"]))
    return out, extra


def check_freeze_rows(freeze: dict, rows: list[dict]) -> None:
    """Refuse a training log whose freeze lines disagree with metrics.json's ``freeze_step`` (the authoritative
    record: a line lost to an interrupt during a cache fill would count later steps at the wrong depth)."""
    steps = [s for s in (freeze.get("freeze_step") or {}).values() if s is not None]
    expected = {s: sum(1 for t in steps if t <= s) for s in sorted(set(steps))}
    logged = {r["step"]: r["freeze"]["frozen"] for r in rows}
    if logged != expected:
        raise SystemExit(f"the training log's freeze lines {logged} disagree with metrics.json's freeze steps "
                         f"{expected} (frozen blocks after each step): rerun the cell")


def _git_head() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _git_commit(path: Path, message: str) -> None:
    subprocess.run(["git", "add", str(path)], cwd=ROOT, check=True)
    subprocess.run(["git", "commit", "-q", "-m", message, "--", str(path)], cwd=ROOT, check=True)


# -- estimate -----------------------------------------------------------------------------------------------
def estimate(args: argparse.Namespace, cells: list[Cell], data, n_train: int) -> None:
    """Time one training step and one evaluation batch of each method here; print the plan's upper bound."""
    import torch

    from layerwise.adapters.bridge import apply_adapter
    from layerwise.workflows.prepare import prepare

    config = train_config(args, n_train, 1e-3)
    evals = math.ceil(config.steps / config.eval_every)
    ready = prepare(args.model, data, torch.device("cpu"))
    n_eval = len(ready.task.dev) + len(ready.task.validation or [])
    from layerwise.data.collate import encode_examples

    feats = encode_examples(ready.task.train[:256], ready.loaded.tokenizer, ready.task.task, args.max_length)
    length = round(sum(len(f["input_ids"]) for f in feats) / len(feats) * 1.15)  # padding within a batch
    ids = torch.randint(10, 1000, (args.batch_size, length))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": torch.zeros(args.batch_size, dtype=torch.long)}
    todo = [c for c in cells if not _done(args, c)]
    full_s = None
    if any(c.method == FULL for c in todo):  # full fine-tuning's step (every weight's gradient, AdamW on all)
        import copy

        full = copy.deepcopy(ready.loaded.model)
        for p in full.parameters():
            p.requires_grad_(True)
        full_s = _step_seconds(full, batch, torch.optim.AdamW(full.parameters(), lr=1e-5))
        del full
    model = apply_adapter(ready.loaded.model, ready.stack, list(range(len(ready.stack))), targets=args.targets,
                          rank=args.rank)
    step_s = _step_seconds(model, batch, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]))
    with torch.no_grad():
        start = time.perf_counter()
        model(**batch)
        fwd_s = time.perf_counter() - start
    eval_s = fwd_s * math.ceil(n_eval / args.batch_size)
    cell_s = config.steps * step_s + evals * eval_s
    full_cell_s = None if full_s is None else config.steps * full_s + evals * eval_s
    print(f"one uniform step ({args.batch_size} x {length} tokens): {step_s:.1f} s; one evaluation of "
          f"{n_eval} examples: {eval_s:.0f} s; a cell's budget: {config.steps} steps, {evals} evaluations")
    if full_s is not None:
        print(f"one full fine-tuning step: {full_s:.1f} s; upper bound per full cell: {full_cell_s / 3600:.2f} h")
    total = sum(full_cell_s if c.method == FULL else cell_s for c in todo)
    print(f"upper bound per uniform cell (no early stop, selections cost less): {cell_s / 3600:.2f} h; "
          f"{len(todo)} cells to run: at most {total / 3600:.1f} h on this core")


def _step_seconds(model, batch: dict, optimizer) -> float:
    """Seconds of one training step (forward, backward, optimizer step) after a warm-up step."""
    model.train()
    for _ in range(2):  # the first is the warm-up
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def _done(args: argparse.Namespace, cell: Cell) -> bool:
    from layerwise.bench.store import is_finished, result_path

    return cell.lr is not None and is_finished(result_path(args.results, args.model, args.task, cell.name))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cells = plan(args)
    if args.list:
        for c in cells:
            state = "done" if _done(args, c) else ("waits for the sweep" if c.lr is None else
                                                   "waits for its main cell and every seed of uniform's" if not c.ready else
                                                   f"to run ({c.steps} steps)" if c.steps else "to run")
            print(f"{c.stage:5s} {c.name if c.lr is not None else c.method + '-s' + str(c.seed) + '-lr?'}: {state}")
        return 0
    data = data_source(args)
    n_train = len(data.load().train)
    if args.estimate:
        estimate(args, cells, data, n_train)
        return 0
    tried: set[str] = set()
    while True:  # planned again after each cell: the sweep's end fixes uniform's rate for the later stages
        todo = [c for c in plan(args) if c.ready and not _done(args, c) and c.name not in tried]
        if not todo:
            break
        c = todo[0]
        tried.add(c.name)
        print(f"run  {c.name} ({datetime.datetime.now(datetime.timezone.utc):%H:%M}Z)", flush=True)
        path = run_cell(args, c, data, n_train)
        print(f"wrote {path}", flush=True)
    for c in plan(args):
        if c.lr is None:
            print(f"skip {c.method} seed {c.seed}: uniform's rate is not known until the sweep finished", flush=True)
        elif not c.ready:
            print(f"skip {c.name}: its budget waits for its main cell and uniform's", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
