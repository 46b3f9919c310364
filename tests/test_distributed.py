"""Data-parallel runs: the process-group helpers, and 2 CPU processes (gloo) giving the single-process results.

- helpers: no-ops in one process; sharding covers every index once; in 2 processes the reductions, gathers,
  rank-0-only work (and its errors) and the exact merge of centred moments;
- ``torchrun --nproc_per_node 2 -m layerwise run`` (card, two trainings, report) and ``accelerate launch
  -m layerwise card`` give the card one process makes on the same calibration batches: values within 1e-5,
  same ranks, same bootstrap stability; files are written once and rank 1 prints nothing;
- training (``torch.multiprocessing`` spawn, gloo): 2 processes x batch b follow the loss curve of 1 process x
  batch 2b, interrupt + resume across 2 ranks ends on the uninterrupted weights bit for bit, the ranks hold
  identical weights, and only rank 0 creates or writes files (audit hooks);
- La-LoRA's ranks never diverge across ranks (skipped while ``layerwise.train.lalora`` is not importable).

Every multi-process test runs its processes on whatever cores this test process may use.
"""

from __future__ import annotations

import copy
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from layerwise.runtime import distributed
from layerwise.runtime.errors import ConfigError
from numerics import assert_tensors_within_fp32_spread, assert_within_fp32_spread

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

CARD_ARGS = ("--samples", "40", "--batch-size", "8", "--max-length", "64", "--seed", "0")
"""5 calibration batches: 3 on rank 0 and 2 on rank 1 (an uneven split)."""


# --- helpers shared by the tests and the spawned workers ------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _join(rank: int, world: int, port: int) -> None:
    """What a launcher does for a worker: the environment, then the group."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), LAYERWISE_PROGRESS="0")
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu")


def _spawn(fn: Any, *args: Any, nprocs: int = 2, timeout: float = 240.0) -> None:
    """Run ``fn(rank, world, port, *args)`` in ``nprocs`` fresh processes; fail (and stop them) on a timeout."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=(nprocs, _free_port(), *args), nprocs=nprocs, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"{fn.__name__} did not finish in {timeout:.0f} s")


def _launch(launcher: list[str], command: list[str], timeout: float = 240.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAYERWISE_PROGRESS": "0"}
    for name in distributed.ENV_VARS:
        env.pop(name, None)
    proc = subprocess.run([*launcher, "-m", "layerwise", *command], capture_output=True, text=True,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


# --- one process: the helpers do nothing --------------------------------------------------------------------


def test_helpers_are_no_ops_in_one_process():
    assert not distributed.is_initialized() and distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.is_main()
    t = torch.arange(3.0)
    assert distributed.all_reduce_sum(t) is t and t.tolist() == [0.0, 1.0, 2.0]
    assert distributed.all_reduce_max(t) is t
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object("x") == "x"
    assert distributed.run_on_main(lambda a, b=0: a + b, 2, b=3) == 5
    assert distributed.any_rank(True) and not distributed.any_rank(False)
    assert distributed.main_only(lambda: "written")() == "written"
    distributed.barrier()
    assert distributed.shard(list("abc")) == list("abc")
    assert not distributed.init_from_env("cpu")  # no launcher: nothing to join


@pytest.mark.parametrize("contiguous", [False, True])
def test_shards_cover_every_index_once(contiguous):
    for world in range(1, 5):
        for n in range(0, 11):
            parts = [distributed.shard_indices(n, contiguous, r, world) for r in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
            items = [f"b{i}" for i in range(n)]
            assert distributed.unshard([[items[i] for i in p] for p in parts], contiguous) == items
    assert distributed.shard_indices(7, False, 1, 3) == [1, 4]
    assert distributed.shard_indices(7, True, 0, 3) == [0, 1, 2]


def test_launcher_environment(monkeypatch):
    for name in distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched() and distributed.env_rank() == 0
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # accelerate launch without a multi-process mode
    assert not distributed.launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.launched() and distributed.env_rank() == 1 and distributed.local_rank() == 1
    assert distributed.device_for_rank(torch.device("cuda")) == torch.device("cuda", 1)
    assert distributed.device_for_rank(torch.device("cuda", 0)) == torch.device("cuda", 0)
    assert distributed.device_for_rank(torch.device("cpu")) == torch.device("cpu")


def test_training_parallelism_is_a_no_op_in_one_process(tmp_path):
    from layerwise.train import parallel
    from layerwise.train.log import TrainLog

    model = torch.nn.Linear(2, 2)
    assert parallel.wrap_model(model) is model
    assert parallel.global_batch_size(8) == 8 and parallel.local_part([3, 1, 2], 8) == [3, 1, 2]
    assert parallel.run_info() == {} and parallel.rank_rng_file(0) == "rng.safetensors"
    value = torch.tensor(1.5)
    assert parallel.mean_over_ranks(value) is value
    assert isinstance(parallel.open_log(tmp_path / "log.jsonl", None), TrainLog)
    parallel.check_world_size({}, {}, tmp_path)
    with pytest.raises(ConfigError, match="2 process"):
        parallel.check_world_size({"world_size": 2}, {}, tmp_path)


# --- 2 processes: helpers and the exact moment merge ---------------------------------------------------------


def _moment_rows(seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """7 batches of paired rows (y, x) of uneven sizes; large offsets make naive raw sums cancel."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in (5, 9, 3, 7, 4, 6, 8):
        x = torch.randn(n, 6, generator=g) + 300.0
        y = x[:, :4] * 2 + torch.randn(n, 4, generator=g) - 50.0
        out.append((y, x))
    return out


def _helpers_worker(rank: int, world: int, port: int, out: Path) -> None:
    from layerwise.card.probe.reduce import _reduce_moments_list_
    from layerwise.card.probe.stats import CrossSums, GramSums

    _join(rank, world, port)
    found: dict[str, Any] = {
        "sum": distributed.all_reduce_sum(torch.tensor([rank + 1.0, 10.0])).tolist(),
        "max": distributed.all_reduce_max(torch.tensor([float(rank)])).tolist(),
        "any": [distributed.any_rank(rank == 1), distributed.any_rank(False)],
        "gather": distributed.all_gather_objects(f"r{rank}"),
        "bcast": distributed.broadcast_object(f"from {rank}"),
        "on_main": distributed.run_on_main(lambda: f"ran on {distributed.rank()}"),
        "main_only": distributed.main_only(lambda: "wrote")(),
    }
    try:
        distributed.run_on_main(_fail)
    except Exception as err:  # noqa: BLE001 - recorded for the parent to check
        found["error"] = f"{type(err).__name__}: {err}"
    gram, cross = GramSums(6), CrossSums()
    for y, x in distributed.shard(_moment_rows()):
        gram.add(x)
        cross.add(y, x)
    _reduce_moments_list_([gram, cross], hidden=6)
    found.update(n=gram.n, gram=gram.centred(), mean=gram.mean(), cross=cross.centred(), my=cross.my)
    torch.save(found, out / f"rank{rank}.pt")


def _fail() -> None:
    raise ValueError("bad value on rank 0")


@pytest.mark.distributed
def test_helpers_and_moment_merge_in_two_processes(tmp_path):
    _spawn(_helpers_worker, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert r0["sum"] == r1["sum"] == [3.0, 20.0] and r0["max"] == r1["max"] == [1.0]
    assert r0["any"] == r1["any"] == [True, False]
    assert r0["gather"] == r1["gather"] == ["r0", "r1"] and r0["bcast"] == r1["bcast"] == "from 0"
    assert r0["on_main"] == r1["on_main"] == "ran on 0"
    assert (r0["main_only"], r1["main_only"]) == ("wrote", None)
    assert r0["error"] == "ValueError: bad value on rank 0"
    assert r1["error"].startswith("RankError: rank 0 failed in _fail: ValueError: bad value on rank 0")

    from layerwise.card.probe.stats import CrossSums, GramSums

    rows, gram, cross = _moment_rows(), GramSums(6), CrossSums()  # one process, every batch
    for y, x in rows:
        gram.add(x)
        cross.add(y, x)
    gram.totals(), cross.totals()
    x = torch.cat([r[1] for r in rows]).double()
    y = torch.cat([r[0] for r in rows]).double()
    xc, yc = x - x.mean(0), y - y.mean(0)  # float64 truth (batch means are float32: 1e-7 relative)
    for r in (r0, r1):
        assert r["n"] == gram.n == len(x)
        torch.testing.assert_close(r["mean"], gram.mean(), rtol=1e-12, atol=0)
        torch.testing.assert_close(r["my"], cross.my, rtol=1e-12, atol=0)
        # float32 groups merged in another order: as close to the float64 truth as one process's float32 sums
        for name, got, one, truth in (("gram", r["gram"], gram.centred(), xc.T @ xc),
                                      ("cross", r["cross"], cross.centred(), yc.T @ xc),
                                      ("mean", r["mean"], gram.mean(), x.mean(0))):
            assert_within_fp32_spread(got, one, truth, name)
    assert torch.equal(r0["gram"], r1["gram"]) and torch.equal(r0["cross"], r1["cross"])


# --- the Layer Card --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def single_card(tmp_path_factory):
    """The card one process makes from the 5 calibration batches of CARD_ARGS."""
    from layerwise.settings import Calibration as CalibrationSpec
    from layerwise.workflows.card import make_card

    card, _ = make_card("minilm", "rotten-tomatoes", tmp_path_factory.mktemp("one") / "card",
                        calibration=CalibrationSpec(40, 0, 8, 64), plots=False, show_progress=False)
    return card


def _assert_same_card(one: Any, two: Any) -> None:
    """``two`` (2 processes) measured the same as ``one`` (1 process) for every metric ``two`` has."""
    assert set(two.metric_names) <= set(one.metric_names)
    for name in two.metric_names:
        a, b = one.metrics[name], two.metrics[name]
        # float32 statistics summed in another order (other thread counts, another split): ~1e-5 apart
        # (None: undefined at that block, e.g. CKA of the constant [CLS] input of block 0, in both)
        assert [v is None for v in b["values"]] == [v is None for v in a["values"]], name
        defined = [(x, y) for x, y in zip(a["values"], b["values"]) if x is not None]
        assert [y for _, y in defined] == pytest.approx([x for x, _ in defined], rel=1e-4, abs=1e-12), name
        assert a["ranks"] == b["ranks"], name
        sa, sb = a["stability"] or {}, b["stability"] or {}  # the same (n_batches, L) per-batch matrix, same seed
        assert sa.keys() == sb.keys(), name
        for key, value in sa.items():
            same = value == sb[key] if isinstance(value, (str, bool)) else sb[key] == pytest.approx(value, abs=1e-6)
            assert same, (name, key)
    for key in ("batches", "examples", "tokens"):
        assert one.probe[key] == two.probe[key], key
    assert two.probe["world_size"] == 2 and len(two.probe["peak_memory_per_rank"]) == 2
    assert two.probe["seconds"] == max(two.probe["seconds_per_rank"])


@pytest.mark.distributed
@pytest.mark.slow
def test_torchrun_layerwise_run_card_equals_the_single_process_card(single_card, tmp_path):
    """The whole CLI job under torchrun: its card is the single-process card, both trainings and the report
    are written once (by rank 0), and rank 1 prints nothing."""
    from layerwise.card.layer_card import LayerCard

    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", str(_free_port())]
    out = tmp_path / "two"
    proc = _launch(launcher, ["run", *CARD_ARGS, "--steps", "2", "--eval-max-examples", "16", "--out", str(out)])
    _assert_same_card(single_card, LayerCard.load(out / "card" / "card.json"))
    assert sorted(os.listdir(out / "card")) == ["card.json", "card.md", "card.png"]
    assert sorted(p.name for p in out.iterdir()) == ["card", "config.yaml", "report.json", "report.md", "report.png",
                                                     "selected", "uniform"]
    for label in ("selected", "uniform"):
        assert sorted(p.name for p in (out / label).iterdir()) == [
            "adapter", "best", "checkpoint", "metrics.json", "plots.png", "selection.json", "train_log.jsonl"]
        assert len(_losses(out / label)) == 2
        state = json.loads((out / label / "checkpoint" / "state.json").read_text())
        assert state["config"]["world_size"] == 2 and state["config"]["batch_size"] == 8
    assert proc.stdout.count("# layerwise run: minilm on rotten-tomatoes") == 1  # rank 0 prints, rank 1 is quiet


@pytest.mark.distributed
@pytest.mark.slow
def test_accelerate_launch_card_equals_the_single_process_card(single_card, tmp_path):
    from layerwise.card.layer_card import LayerCard

    # On a machine without GPUs accelerate runs one process unless asked for its torchrun launcher
    # (--multi_gpu); with 2+ GPUs --num_processes 2 alone picks it.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(_free_port())]
    metrics = "actnorm,cka,act_energy"  # forward-only metrics keep this launch short
    _launch(launcher, ["card", *CARD_ARGS, "--metrics", metrics, "--no-plots", "--out", str(tmp_path / "acc")])
    card = LayerCard.load(tmp_path / "acc" / "card.json")
    assert card.metric_names == metrics.split(",") and not card.probe["backward"]
    _assert_same_card(single_card, card)


def test_more_processes_than_calibration_batches_is_an_error(monkeypatch):
    from layerwise.card import profiling

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    with pytest.raises(ConfigError, match="2 calibration batch.*3 processes"):
        profiling._probe_all_ranks(None, None, [{}, {}], {"out_norm"}, None, None, 1 << 30, False)


# --- training -----------------------------------------------------------------------------------------------------

STEPS, PER_RANK_BATCH, GRAD_ACCUM, R_MAX = 6, 4, 2, 4


def _lalora_class() -> Any:
    """``layerwise.train.lalora.LaLoRA`` where the La-LoRA package is importable, else None."""
    try:
        from layerwise.train.lalora import LaLoRA
    except ImportError:
        return None
    return LaLoRA


class _RankRecorder:
    """Callback: after every step, every rank's La-LoRA ranks and budget (a collective: all ranks call it)."""

    def __init__(self, lalora: Any) -> None:
        self.lalora = lalora
        self.seen: list = []

    def on_step_end(self, state: Any) -> None:
        self.seen.append(distributed.all_gather_objects((list(self.lalora.ranks), float(self.lalora.budget))))


_BASE: dict[str, Any] = {}


def _train_run(out: Path, batch_size: int, callbacks: tuple = (), resume: bool = False,
               adaptive: str | None = None, layers: tuple[int, ...] = tuple(range(6)),
               prefix_cache: str = "off", float64: bool = False,
               freeze: str = "off") -> tuple[dict[str, torch.Tensor], list]:
    """MiniLM + LoRA (q, v of every block) with every dropout off (dropout masks are per rank: with them the
    curves agree in distribution only); ``adaptive`` (``norm``/``fisher``) adds La-LoRA at r_max 4; ``float64``
    runs the model in float64 (the reference fp32's spread is measured against). Returns the trained weights
    and, with La-LoRA, every rank's (ranks, budget) after each step."""
    from layerwise.adapters.bridge import apply_adapter
    from layerwise.data import load_task
    from layerwise.models.layers import find_layer_stack
    from layerwise.models import load_model
    from layerwise.train import TrainConfig, train
    from layerwise.train.checkpoint import trainable_parameters

    loaded = _BASE.get("minilm") or _BASE.setdefault("minilm", load_model("minilm", head="classification",
                                                                         num_labels=2))
    loaded = copy.copy(loaded)
    loaded.model = copy.deepcopy(loaded.model)  # a fresh model per run, loaded once per process
    if float64:
        loaded.model = loaded.model.double()
    for module in loaded.model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    data = load_task("rotten-tomatoes")
    rng = random.Random(0)
    train_ex, dev_ex = rng.sample(data.train, 96), rng.sample(data.dev, 16)
    torch.manual_seed(0)
    stack = find_layer_stack(loaded.model)
    model = apply_adapter(loaded.model, stack, list(layers), method="lora", targets="q,v", rank=R_MAX,
                          dropout=0.0)
    recorder = None
    if adaptive:
        recorder = _RankRecorder(_lalora_class()(model, stack, r_max=R_MAX, contribution=adaptive))
        callbacks = (recorder.lalora, recorder, *callbacks)
    cfg = TrainConfig(steps=STEPS, lr=5e-3, batch_size=batch_size, grad_accum=GRAD_ACCUM, max_length=32,
                      eval_every=3, eval_max_examples=16, warmup_ratio=0.25, seed=0, prefix_cache=prefix_cache,
                      freeze=freeze, freeze_every=1, freeze_percentile=100.0)
    train(model, loaded.tokenizer, data.task, train_ex, dev_ex, cfg, out, resume=resume, callbacks=callbacks,
          show_progress=False)
    weights = {k: p.detach().clone() for k, p in trainable_parameters(model).items()}
    return weights, (recorder.seen if recorder else [])


class _InterruptAt:
    """Ctrl-C at the end of step ``step`` (on every rank, as a launcher forwards it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state: Any) -> None:
        if state.step == self.step:
            raise KeyboardInterrupt


def _record_writes(root: Path, log: list) -> None:
    """Record every file this process creates, writes, renames or removes under ``root`` (audit events)."""
    prefix = str(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND

    def hook(event: str, args: tuple) -> None:
        try:
            if event == "open" and isinstance(args[0], (str, os.PathLike)):
                mode, flags = args[1], args[2] or 0
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(flags & write_flags)
                if writing and str(args[0]).startswith(prefix):
                    log.append((event, str(args[0])))
            elif event == "os.rename" and str(args[1]).startswith(prefix):
                log.append((event, str(args[1])))  # the file renamed into place
            elif event in ("os.remove", "os.rmdir", "shutil.rmtree", "tempfile.mkstemp",
                           "tempfile.mkdtemp") and str(args[0]).startswith(prefix):
                log.append((event, str(args[0])))
        except Exception:  # noqa: BLE001 - an audit hook must never raise
            pass

    sys.addaudithook(hook)


def _train_worker(rank: int, world: int, port: int, root: Path) -> None:
    """Per rank: an uninterrupted run, an interrupted + resumed run, and (when importable) a La-LoRA run."""
    _join(rank, world, port)
    writes: list = []
    _record_writes(root / "runs", writes)
    full, _ = _train_run(root / "runs" / "full", PER_RANK_BATCH)
    try:
        _train_run(root / "runs" / "resumed", PER_RANK_BATCH, callbacks=(_InterruptAt(3),))
        raise AssertionError("the interrupt did not propagate")
    except KeyboardInterrupt:
        pass
    resumed, _ = _train_run(root / "runs" / "resumed", PER_RANK_BATCH, resume=True)
    found = {"full": full, "resumed": resumed}
    if _lalora_class() is not None:
        found["lalora"], found["lalora_seen"] = _train_run(root / "runs" / "lalora", PER_RANK_BATCH,
                                                           adaptive="fisher")
    found["cached"], _ = _train_run(root / "runs" / "cached", PER_RANK_BATCH, layers=(4, 5), prefix_cache="disk")
    found["frozen"], _ = _train_run(root / "runs" / "frozen", PER_RANK_BATCH, freeze="auto")
    found["writes"] = list(writes)  # rank 1 writes nothing, the shared prefix cache included
    torch.save(found, root / f"rank{rank}.pt")


def _losses(run_dir: Path) -> list[float]:
    from layerwise.train.log import read_log, step_lines

    return [r["loss"] for r in step_lines(read_log(run_dir / "train_log.jsonl"))]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, dict, dict]:
    """Both ranks' results of :func:`_train_worker` (2 processes, per-rank batch 4) and its folder."""
    root = tmp_path_factory.mktemp("ddp")
    _spawn(_train_worker, root)
    r0, r1 = (torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(2))
    return root, r0, r1


@pytest.mark.distributed
@pytest.mark.slow
def test_two_process_training_matches_one_process_with_the_global_batch(two_ranks, tmp_path):
    root, r0, r1 = two_ranks
    single, _ = _train_run(tmp_path / "single", 2 * PER_RANK_BATCH)
    exact, _ = _train_run(tmp_path / "f64", 2 * PER_RANK_BATCH, float64=True)
    two_losses, one_losses = _losses(root / "runs" / "full"), _losses(tmp_path / "single")
    assert len(two_losses) == len(one_losses) == STEPS
    # DDP's averaged gradient is the global batch's: two processes are as close to the float64 run as one
    # process in fp32 is (their batches of 4 round differently from one batch of 8)
    assert_within_fp32_spread(two_losses, one_losses, _losses(tmp_path / "f64"), "losses")
    assert_tensors_within_fp32_spread(r0["full"], single, exact)
    for name in single:
        assert torch.equal(r0["full"][name], r1["full"][name]), name  # the ranks never diverge

    metrics = json.loads((root / "runs" / "full" / "metrics.json").read_text())
    single_metrics = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert metrics["tokens_seen"] == single_metrics["tokens_seen"]  # the same global batches
    assert metrics["config"]["batch_size"] == PER_RANK_BATCH
    exact_metrics = json.loads((tmp_path / "f64" / "metrics.json").read_text())
    for key, value in exact_metrics["final"].items():
        assert_within_fp32_spread(metrics["final"][key], single_metrics["final"][key], value, key)


@pytest.mark.distributed
@pytest.mark.slow
def test_two_ranks_share_one_prefix_cache_built_by_rank_0(two_ranks, tmp_path):
    """Under torchrun rank 0 builds the disk cache and both ranks map it; training then equals one process
    with the global batch and no cache (the cached prefix is the same computation)."""
    root, r0, r1 = two_ranks
    single, _ = _train_run(tmp_path / "single", 2 * PER_RANK_BATCH, layers=(4, 5))
    exact, _ = _train_run(tmp_path / "f64", 2 * PER_RANK_BATCH, layers=(4, 5), float64=True)
    cached = root / "runs" / "cached"
    report = json.loads((cached / "metrics.json").read_text())["prefix_cache"]
    assert report["used"] and report["mode"] == "disk" and report["layer"] == 4 and not report["reused"]
    assert len(list((cached / "prefix_cache").glob("train-block4-*.bin"))) == 1  # one file for both ranks
    assert_within_fp32_spread(_losses(cached), _losses(tmp_path / "single"), _losses(tmp_path / "f64"), "losses")
    assert_tensors_within_fp32_spread(r0["cached"], single, exact)
    for name in single:
        assert torch.equal(r0["cached"][name], r1["cached"][name]), name


@pytest.mark.distributed
@pytest.mark.slow
def test_interrupt_and_resume_across_two_ranks_is_exact(two_ranks):
    root, r0, r1 = two_ranks
    for name, weight in r0["full"].items():
        assert torch.equal(r0["resumed"][name], weight), name
        assert torch.equal(r1["resumed"][name], weight), name
    assert _losses(root / "runs" / "resumed") == _losses(root / "runs" / "full")
    checkpoint = root / "runs" / "resumed" / "checkpoint"
    assert (checkpoint / "rng.safetensors").is_file() and (checkpoint / "rng_rank1.safetensors").is_file()
    assert json.loads((checkpoint / "state.json").read_text())["config"]["world_size"] == 2


@pytest.mark.distributed
@pytest.mark.slow
def test_only_rank_0_writes_files(two_ranks):
    _, r0, r1 = two_ranks
    assert r1["writes"] == [], r1["writes"][:5]
    written = {Path(p).name for _, p in r0["writes"]}
    assert {"train_log.jsonl", "metrics.json", "plots.png", "adapter", "best", "checkpoint"} <= written, written


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.skipif(_lalora_class() is None, reason="layerwise.train.lalora (La-LoRA) is not importable yet: the "
                    "cross-rank rank-vector check runs once it is")
def test_adaptive_ranks_never_diverge_across_ranks(two_ranks):
    root, r0, r1 = two_ranks
    seen = r0["lalora_seen"]
    assert len(seen) == STEPS and seen == r1["lalora_seen"]
    for ranks_and_budgets in seen:  # all-gathered after every step: every rank holds the same ranks and budget
        assert ranks_and_budgets[0] == ranks_and_budgets[1]
    assert any(ranks != seen[0][0][0] for (ranks, _), _ in seen), "the ranks never moved: nothing was tested"
    for name, weight in r0["lalora"].items():
        assert torch.equal(weight, r1["lalora"][name]), name
    history = json.loads((root / "runs" / "lalora" / "rank_history.json").read_text())
    assert history["ranks"][-1] == seen[-1][0][0]


@pytest.mark.distributed
@pytest.mark.slow
def test_freezing_under_torchrun_freezes_the_same_blocks_on_every_rank(two_ranks):
    """``--freeze auto`` in two processes: rank 0's decision holds for both (the norms are averaged, the decision
    broadcast), DDP is rebuilt without the frozen adapters (else its reducer waits for their gradients), and the
    ranks' weights stay identical."""
    root, r0, r1 = two_ranks
    for name in r0["frozen"]:
        assert torch.equal(r0["frozen"][name], r1["frozen"][name]), name
    report = json.loads((root / "runs" / "frozen" / "metrics.json").read_text())["freeze"]
    frozen = [int(b) for b, step in report["freeze_step"].items() if step is not None]
    assert frozen and frozen == list(range(len(frozen)))  # a bottom prefix froze
    assert report["frozen"] == len(frozen) and report["depth"][-1][1] == 6 - len(frozen)

