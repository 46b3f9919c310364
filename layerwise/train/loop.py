"""``train``: the explicit fine-tuning loop over a peft model, as named phases.

One optimizer step = ``grad_accum`` x (forward, backward) then one optimizer phase (clip, AdamW step, schedule
step, zero grads), timed by :class:`PhaseTimer`. After a step: evaluate if due (keeping the best adapter),
checkpoint if due, call the callbacks. A first Ctrl-C is deferred to the next step boundary, where the
checkpoint saved before re-raising is exact: ``resume=True`` then continues with the same weights,
optimizer, schedule, RNG and data order, so its final weights equal those of an uninterrupted run bit for bit.

Outputs in ``out_dir``: ``train_log.jsonl``, ``metrics.json``, ``adapter/`` (final), ``best/`` (best main
metric), ``checkpoint/`` (resumable) and ``plots.png``. With ``validation_examples`` the validation split
chooses ``best/`` and stops early, and the dev set is scored at every evaluation but only reported.
"""

from __future__ import annotations

import logging
import random
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from layerwise.runtime import distributed
from layerwise.data.examples import Example
from layerwise.data.tasks import TaskSpec
from layerwise.runtime.errors import ConfigError, DataError, ModelError
from layerwise.runtime.io import atomic_write_json
from layerwise.train.checkpoint import (SCHEMA_VERSION, load_checkpoint, save_adapter, save_checkpoint,
                                        trainable_parameters)
from layerwise.train.config import TrainConfig, flag_name
from layerwise.train.data_order import DataOrder
from layerwise.train.evaluate import EvalSet, prepare_eval, run_eval
from layerwise.train.hooks import (AfterOptimizerStep, BeforeOptimizerStep, OnEvaluate, OnStepEnd, OnTrainEnd,
                                   WeightsWriter)
from layerwise.train.interrupt import DeferredInterrupt
from layerwise.train.log import TrainLog, json_safe
from layerwise.train import parallel
from layerwise.train.phases import TRAIN_PHASES, PhaseTimer
from layerwise.train.state import TrainState

__all__ = ["TrainResult", "train", "LOG_NAME", "METRICS_NAME", "ADAPTER_DIR", "BEST_DIR", "PLOT_NAME",
           "FREEZE_PLOT_NAME"]

log = logging.getLogger(__name__)

LOG_NAME, METRICS_NAME, PLOT_NAME = "train_log.jsonl", "metrics.json", "plots.png"
FREEZE_PLOT_NAME = "freeze.png"
ADAPTER_DIR, BEST_DIR = "adapter", "best"
BEST_STATE_NAME = "best_state.safetensors"
"""``--dev-eval best``: the trainable weights of the best step so far, until the dev set is scored on them."""

# Config fields that shape the trajectory: a resumed run must use the values it was trained with.
_TRAJECTORY = ("lr", "weight_decay", "warmup_ratio", "scheduler", "batch_size", "grad_accum", "max_length",
               "seed", "max_grad_norm", "pad_to", "group_by_length", "freeze", "freeze_every", "freeze_percentile",
               "freeze_keep_top", "freeze_start", "freeze_end", "freeze_metric")


@dataclass
class TrainResult:
    """What a finished run produced (the same numbers are in ``metrics.json``)."""

    final_metrics: dict[str, float]
    """Dev metrics of the final weights."""
    best_metrics: dict[str, float] | None
    """Dev metrics of the best evaluation (by the task's main metric on the validation split when there is
    one, else on dev)."""
    best_step: int | None
    """Step of the best evaluation; its adapter is in ``out_dir/best``."""
    steps: int
    """Optimizer steps completed (fewer than ``config.steps`` after early stopping or a callback stop)."""
    train_seconds: float
    """Wall time of the training steps (evaluation and saving excluded), over all sessions of the run."""
    phase_totals: dict[str, float]
    """Seconds per phase ('forward', 'backward', 'optimizer') summed over all steps."""
    peak_memory: int
    """Largest per-step peak memory (CUDA allocated bytes, or process RSS on the CPU)."""
    trainable_params: int
    """Number of parameters trained (adapter and head)."""
    log_path: Path
    """The ``train_log.jsonl`` file."""
    adapter_dir: Path
    """The final adapter (loads with ``PeftModel.from_pretrained``)."""
    best_dir: Path | None = None
    """The best adapter, when an evaluation ran."""
    stopped_early: bool = False
    """True when early stopping ended the run."""
    best_validation: dict[str, float] | None = None
    """Validation metrics of the best evaluation (``None`` without a validation split)."""
    prefix_cache: dict | None = None
    """Whether the frozen-prefix cache was used, its size and build time, or why not (``PrefixCacheReport``)."""
    freeze: dict | None = None
    """The freezing schedule's record (``--freeze``): freeze step per block, trainable depth over time, time
    per epoch, cache fills, Kendall tau; None with ``--freeze off``."""


@dataclass
class _Run:
    """Everything one training session works with (internal)."""

    model: Any
    task: TaskSpec
    config: TrainConfig
    out_dir: Path
    params: list
    optimizer: Any
    scheduler: Any
    features: list[dict]
    lengths: list[int]
    info: dict
    collate: Any
    order: DataOrder
    evalset: EvalSet
    """The dev set, scored at every evaluation."""
    timer: PhaseTimer
    state: TrainState
    log: TrainLog
    callbacks: Sequence[Any] = ()
    weights_writer: WeightsWriter | None = None
    higher_is_better: bool = True
    device: Any = None
    mid_step: bool = False
    saved_step: int = -1
    engine: Any = None
    """What the training step calls: ``DistributedDataParallel(model)`` in a process group, else ``model``."""
    bar: Any = field(default=None, repr=False)
    reporter: Any = field(default=None, repr=False)
    prefix: Any = None
    """The frozen-prefix cache (``layerwise.train.prefix.cache.PrefixCache``), or None when off."""
    prefix_report: Any = None
    valset: EvalSet | None = None
    """The validation split that chooses the checkpoint, or None (the dev set chooses)."""
    precision: Any = None
    """Autocast and loss scaling of a 16-bit model (``layerwise.train.precision.Precision``)."""
    named: dict | None = None
    """Name -> parameter of every parameter trained at the start (checkpoints keep them all, frozen or not)."""
    freezer: Any = None
    """The freezing schedule (``layerwise.train.freezing.Freezer``), or None with ``--freeze off``."""


def train(model: Any, tokenizer: Any, task: TaskSpec, train_examples: Sequence[Example],
          dev_examples: Sequence[Example], config: TrainConfig, out_dir: str | Path, resume: bool = False,
          callbacks: Sequence[Any] = (), show_progress: bool = True,
          weights_writer: WeightsWriter | None = None,
          validation_examples: Sequence[Example] | None = None,
          freeze_importance: Sequence[float] | None = None) -> TrainResult:
    """Fine-tune the trainable parameters of ``model`` (a peft model) on ``train_examples`` for ``config.steps``.

    ``resume=True`` continues from ``out_dir/checkpoint`` at its exact step. ``callbacks`` implement any of
    the hooks in :mod:`layerwise.train.hooks` (step end, evaluation, around ``optimizer.step()``, checkpointed
    state, end of training). ``weights_writer`` writes the weights folders instead of peft's
    ``save_pretrained`` (La-LoRA's truncated adapter, full fine-tuning's whole model). ``validation_examples``
    (held out of train, e.g. by :func:`layerwise.data.holdout.hold_out_validation`) choose the best
    checkpoint and stop early; the dev set is then scored alongside and reported at the chosen step. A
    ``KeyboardInterrupt`` saves a checkpoint at the last completed step, then propagates. With
    ``config.freeze`` on, blocks freeze bottom-up during the run (:mod:`layerwise.train.freezing`);
    ``freeze_importance`` (the card's importance per block, by ``config.freeze_metric``) sets ``card``'s order
    and is compared with the observed order.
    """
    run = _setup(model, tokenizer, task, train_examples, dev_examples, config, Path(out_dir), resume, callbacks,
                 validation_examples, freeze_importance)
    run.weights_writer = weights_writer
    try:
        with DeferredInterrupt() as interrupt:
            _run_steps(run, interrupt, show_progress)
            _maybe_evaluate(run, force=True)
            _score_dev_at_best(run)
            _save(run)
    except KeyboardInterrupt:
        _save_on_interrupt(run)
        raise
    finally:
        run.log.close()
        if run.reporter is not None:
            run.reporter.close()  # after the final evaluation, which it reports too
    return _write_outputs(run)


def _setup(model: Any, tokenizer: Any, task: TaskSpec, train_examples: Sequence[Example],
           dev_examples: Sequence[Example], config: TrainConfig, out_dir: Path, resume: bool,
           callbacks: Sequence[Any], validation_examples: Sequence[Example] | None = None,
           freeze_importance: Sequence[float] | None = None) -> _Run:
    from layerwise.data.collate import Collator, encode_examples, warn_truncation
    from layerwise.data.task_metrics import get_metric
    from layerwise.train.precision import Precision
    from layerwise.train.schedule import make_scheduler

    if config.dev_eval == "best" and validation_examples is None:
        raise ConfigError(f"{flag_name('dev_eval')} best scores the dev set on the step a validation split chose; "
                          f"this run has none: give --validation-fraction (e.g. 0.1) or use {flag_name('dev_eval')} "
                          "every")
    named = trainable_parameters(model)
    params = list(named.values())
    if not params:
        raise ModelError("the model has no trainable parameters; wrap it with peft (LoRA) before training")
    precision = Precision.for_model(model, params)  # 16-bit base: float32 master weights, autocast
    callbacks = (*callbacks, *precision.stateful())  # float16's loss scale is checkpointed
    if config.gradient_checkpointing:
        from layerwise.train.prefix.recompute import prepare_gradient_checkpointing

        prepare_gradient_checkpointing(model)  # the adapted blocks only; the frozen prefix stays out of autograd
    warn_truncation(train_examples, tokenizer, task, config.max_length)
    features = encode_examples(train_examples, tokenizer, task, config.max_length)
    if not features:
        raise DataError(f"task {task.name!r} has no training examples")
    out_dir.mkdir(parents=True, exist_ok=True)
    _check_disk_space(out_dir, params)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config.steps, config.warmup_ratio, config.scheduler)
    evalset = prepare_eval(dev_examples, task, tokenizer, config.batch_size, config.max_length,
                           config.eval_max_examples)
    valset = None if validation_examples is None else prepare_eval(
        validation_examples, task, tokenizer, config.batch_size, config.max_length, config.eval_max_examples)
    device, lengths = params[0].device, [len(f["input_ids"]) for f in features]
    cached_sets = _eval_sets(valset, evalset) if config.dev_eval == "every" else [valset]  # dev: scored once
    prefix, prefix_report = _prefix_cache(model, features, cached_sets, config, out_dir)
    # What a checkpoint records besides the config: resuming on other training data would not be exact.
    info = {**config.to_dict(), "train_examples": len(features), "train_tokens": sum(lengths),
            "validation_examples": len(validation_examples) if validation_examples is not None else 0,
            **parallel.run_info()}
    parallel.check_data_size(len(features), config.batch_size)
    freezer = None
    if config.freeze != "off":
        freezer = _make_freezer(model, config, features, optimizer, freeze_importance, prefix)
        callbacks = (*callbacks, freezer)  # its state is checkpointed
    # Last, so nothing between here and the first step consumes random numbers.
    state = (_resume_state(out_dir, model, optimizer, scheduler, info, callbacks, named) if resume
             else _fresh_state(config.seed))
    if freezer is not None and freezer.state.frozen and freezer.cache is not None:
        prefix = freezer.cache  # resumed after some blocks froze: the rebuilt cache
        state.train_seconds += freezer.fill_seconds - freezer.saved_fill_seconds
    model.train()
    return _Run(model=model, task=task, config=config, out_dir=out_dir, params=params, optimizer=optimizer,
                scheduler=scheduler, features=features, lengths=lengths, info=info,
                collate=Collator(tokenizer, task, config.pad_to),
                order=DataOrder(config.seed, len(features), parallel.global_batch_size(config.batch_size),
                                lengths, config.group_by_length),
                evalset=evalset,
                timer=PhaseTimer(device), state=state,
                log=parallel.open_log(out_dir / LOG_NAME, keep_through=state.step if resume else None),
                callbacks=tuple(callbacks), higher_is_better=get_metric(task.main_metric).higher_is_better,
                device=device, saved_step=state.step if resume else -1, engine=parallel.wrap_model(model),
                prefix=prefix, prefix_report=prefix_report, valset=valset, precision=precision, named=named,
                freezer=freezer)


def _make_freezer(model: Any, config: TrainConfig, features: list, optimizer: Any,
                  importance: Sequence[float] | None, prefix: Any) -> Any:
    """The freezing schedule of ``--freeze``; refuses what it does not support, in one line."""
    from layerwise.train.freezing import Freezer

    steps_per_epoch = len(features) / (config.batch_size * config.grad_accum)
    return Freezer(model, config, features, optimizer, importance, cache=prefix,
                   use_cache=config.prefix_cache != "off" and not config.prefix_dropout,
                   steps_per_epoch=steps_per_epoch)


def _eval_sets(valset: EvalSet | None, evalset: EvalSet) -> list[EvalSet]:
    """The sets every evaluation scores, in the order their batches sit in the prefix cache."""
    return [evalset] if valset is None else [valset, evalset]


def _prefix_cache(model: Any, features: list, eval_sets: Sequence[EvalSet], config: TrainConfig,
                  out_dir: Path) -> tuple:
    """The frozen-prefix cache and its report (see ``layerwise.train.prefix.cache``); quiets the prefix's
    dropout when the cache is used, as its cached output assumes."""
    from layerwise.train.prefix.cache import prepare_prefix_cache

    def announce(line: str) -> None:
        if distributed.is_main():
            log.info(line)

    every = config.eval_every
    evaluations = (config.steps // every + (config.steps % every > 0)) if every else 1
    # one evaluation computes the dev set's prefix once anyway: caching it would only add the storing
    dev = [b for e in eval_sets for b in e.loss_batches] if evaluations > 1 else []
    prefix, report = prepare_prefix_cache(model, features, dev, config, out_dir, announce)
    if prefix is not None:
        from layerwise.models.layers import find_layer_stack
        from layerwise.train.prefix.frozen import quiet_frozen_prefix

        quiet_frozen_prefix(model, find_layer_stack(model), [prefix.skipper.layer])
    return prefix, report


def _fresh_state(seed: int) -> TrainState:
    """Seed torch (all devices), python and numpy for a new run: dropout masks follow ``--seed``."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return TrainState()


def _check_disk_space(out_dir: Path, params: Sequence[Any]) -> None:
    """Refuse to start when ``--out``'s disk cannot hold the files a run writes: a checkpoint (the trainable
    weights and AdamW's two moments, in float32) written beside the previous one before it is replaced, and the
    best and final weights; doubled as a margin for the log, plots and the serializers' own buffers."""
    import shutil

    weights = sum(p.numel() for p in params) * 4
    need = 2 * (2 * 3 * weights + 2 * weights) + 2**20  # bytes; shape ()
    free = shutil.disk_usage(out_dir).free
    if free < need:
        raise ConfigError(f"--out {out_dir}: its disk has {free / 2**20:.1f} MiB free, and this run's checkpoints "
                          f"and weights need about {need / 2**20:.1f} MiB; free some space or choose another --out")


def _resume_state(out_dir: Path, model: Any, optimizer: Any, scheduler: Any, info: dict,
                  callbacks: Sequence[Any] = (), named: dict | None = None) -> TrainState:
    """Load the checkpoint; refuse a config or data set that would change the trajectory."""
    state, saved = load_checkpoint(out_dir, model, optimizer, scheduler, callbacks, named)
    parallel.check_world_size(saved, info, out_dir)
    for name in _TRAJECTORY:
        if name in saved and saved[name] != info[name]:
            raise ConfigError(f"--resume: {flag_name(name)} is {info[name]!r} but the checkpoint in {out_dir} "
                              f"was trained with {saved[name]!r}; use the same value or start a new run")
    data = [(saved.get(k), info[k]) for k in ("train_examples", "train_tokens", "validation_examples")]
    if any(old is not None and old != new for old, new in data):
        raise ConfigError(f"--resume: the training data differ from the checkpoint's in {out_dir} "
                          f"({data[0][1]} examples of {data[1][1]} tokens now, {data[0][0]} of {data[1][0]} then); "
                          f"{', with ' + str(data[2][0]) + ' validation examples then' if data[2][0] != data[2][1] else ''}); "
                          "resume with the same --data, --max-length, --train-subset and --validation-fraction")
    if saved.get("steps") != info["steps"]:
        warnings.warn(f"--steps changed from {saved.get('steps')} to {info['steps']} on resume: the learning-rate "
                      "schedule changes, so the result will differ from an uninterrupted run", stacklevel=4)
    log.info("--resume: continuing from step %d of %d (checkpoint in %s)", state.step, info["steps"],
             out_dir / "checkpoint")
    return state


def _run_steps(run: _Run, interrupt: DeferredInterrupt, show_progress: bool) -> None:
    """Optimizer steps until ``config.steps``, early stopping or a callback's stop."""
    from tqdm.auto import tqdm

    from layerwise.runtime.progress import enabled

    state = run.state
    from layerwise.train.reporting import TrainingReporter

    run.bar = tqdm(total=run.config.steps, initial=state.step, desc="train", unit="step", leave=False,
                   dynamic_ncols=True, disable=not (show_progress and enabled()))
    # without a bar (no terminal: nohup, Slurm, a log file), a line every --logging-steps; on rank 0 only
    lines = show_progress and run.bar.disable and distributed.is_main()
    run.reporter = TrainingReporter(run.config.steps, state.step, run.config.logging_steps, lines,
                                    run.config.report_to if distributed.is_main() else None, run.out_dir)
    try:
        while state.step < run.config.steps and not (state.should_stop or state.stopped_early):
            _train_step(run)
            _after_step(run, interrupt)
    finally:
        run.bar.close()


def _train_step(run: _Run) -> None:
    """One optimizer step as named phases; logs its record and updates the state."""
    cfg, timer, state = run.config, run.timer, run.state
    run.mid_step = True
    timer.begin_step(state.step + 1)
    lr = run.optimizer.param_groups[0]["lr"]  # the rate this step uses
    total = None
    shapes = []  # (sequences, padded length) of each micro-batch: what a step's counted FLOPs depend on
    for k in range(cfg.grad_accum):
        batch, hidden = _micro_batch(run, state.step * cfg.grad_accum + k)
        shapes.append([int(n) for n in batch["input_ids"].shape[:2]])
        with parallel.accumulation(run.engine, last=k == cfg.grad_accum - 1):  # DDP: one all-reduce per step
            with timer.phase("forward"), run.precision.autocast(), \
                    run.prefix.feeding(hidden) if hidden is not None else nullcontext():
                loss = run.engine(**batch).loss
                if cfg.grad_accum > 1:  # the step's gradient is the mean over its micro-batches
                    loss = loss / cfg.grad_accum
            with timer.phase("backward"):
                run.precision.backward(loss)
        total = loss.detach() if total is None else total + loss.detach()
    with timer.phase("optimizer"):
        _optimizer_step(run)
    loss_value = float(parallel.mean_over_ranks(total))  # the step's only host-device sync
    record = timer.end_step()
    _record_step(run, record, loss_value)
    run.mid_step = False
    run.log.write({"step": record["step"], "loss": loss_value, "lr": lr, **record, "shapes": shapes})
    if run.reporter is not None:
        run.reporter.step(record["step"], loss_value, lr)
    if loss_value != loss_value or abs(loss_value) == float("inf"):
        raise ConfigError(f"the training loss is {loss_value} at step {state.step}: training diverged; "
                          f"lower --lr (now {cfg.lr}) or check the data")


def _micro_batch(run: _Run, n: int) -> tuple[dict, torch.Tensor | None]:
    """The padded batch of global micro-step ``n`` on the model's device, and its cached prefix output
    (None without the prefix cache)."""
    idx = run.order(n)  # the global micro-batch (all ranks)
    run.state.tokens_seen += sum(run.lengths[i] for i in idx)
    idx = parallel.local_part(idx, run.config.batch_size)
    batch = run.collate([run.features[i] for i in idx])
    hidden = None if run.prefix is None else run.prefix.train_hidden(idx, batch["input_ids"].shape[1], run.device)
    return {k: v.to(run.device, non_blocking=True) for k, v in batch.items()}, hidden


def _optimizer_step(run: _Run) -> None:
    run.precision.unscale(run.optimizer)  # float16: clip and log the true gradients
    if run.freezer is not None:  # AutoFreeze's signal: the blocks' final, unclipped gradient norms
        run.freezer.accumulate()
    if run.config.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(run.params, run.config.max_grad_norm)
    for callback in run.callbacks:  # e.g. La-LoRA keeps the pruned slices of its factors
        if isinstance(callback, BeforeOptimizerStep):
            callback.before_optimizer_step(run.optimizer)
    run.precision.step(run.optimizer)
    for callback in run.callbacks:  # e.g. La-LoRA restores them and reallocates ranks
        if isinstance(callback, AfterOptimizerStep):
            callback.after_optimizer_step(run.state.step + 1)
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)


def _record_step(run: _Run, record: dict, loss: float) -> None:
    state = run.state
    state.step, state.loss = record["step"], loss
    state.train_seconds += record["step_s"]
    state.peak_memory = max(state.peak_memory, record["peak_memory"])
    for name in TRAIN_PHASES:
        state.phase_totals[name] = state.phase_totals.get(name, 0.0) + record[f"{name}_s"]
    if not run.bar.disable:
        run.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        run.bar.update(1)


def _after_step(run: _Run, interrupt: DeferredInterrupt) -> None:
    """Freezing check, evaluation and checkpoint if due, callbacks, then a deferred Ctrl-C (at this exact
    boundary)."""
    _maybe_freeze(run)
    _maybe_evaluate(run)
    _maybe_save(run)
    for callback in run.callbacks:
        if isinstance(callback, OnStepEnd):
            callback.on_step_end(run.state)
    if distributed.any_rank(interrupt.requested):  # every rank stops at the same step boundary
        raise KeyboardInterrupt


def _maybe_freeze(run: _Run) -> None:
    """The freezing check of this step when due; a cache fill's time counts as training time."""
    freezer, state = run.freezer, run.state
    if freezer is None:
        return
    before = freezer.fill_seconds
    if freezer.due(state.step) and freezer.check(state.step):
        frozen = freezer.state.frozen
        run.log.write({"step": state.step, "freeze": {"frozen": frozen, "trainable": len(freezer.blocks) - frozen,
                                                      "fill_s": freezer.fill_seconds - before}})
        if freezer.cache is not None:
            run.prefix = freezer.cache
        if distributed.world_size() > 1:  # DDP reduces the gradients of the parameters that required them when
            run.engine = None             # it was built: a new wrapper leaves the frozen adapters out
            run.engine = parallel.wrap_model(run.model)
    state.train_seconds += freezer.fill_seconds - before
    freezer.end_of_step(state.step, state.train_seconds)


def _maybe_evaluate(run: _Run, force: bool = False) -> None:
    """Evaluate when ``--eval-every`` divides the step (or ``force``), once per step."""
    state, every = run.state, run.config.eval_every
    if state.last_eval_step == state.step or not (force or (every and state.step % every == 0)):
        return
    validation, offset = None, 0
    reporter = run.reporter
    if run.valset is not None:
        started = reporter.evaluating(state.step, len(run.valset.references), "validation") if reporter else 0.0
        validation = distributed.run_on_main(run_eval, run.model, run.valset, run.config.gen_max_new_tokens,
                                             prefix=run.prefix)
        offset = len(run.valset.loss_batches)  # the dev set's batches follow the validation's in the cache
        if reporter is not None:
            reporter.evaluated(state.step, validation, started, "validation")
    metrics = None
    if run.valset is None or run.config.dev_eval == "every":
        started = reporter.evaluating(state.step, len(run.evalset.references)) if reporter else 0.0
        metrics = distributed.run_on_main(run_eval, run.model, run.evalset, run.config.gen_max_new_tokens,
                                          prefix=run.prefix, prefix_offset=offset)
        if reporter is not None:
            reporter.evaluated(state.step, metrics, started)
    state.last_metrics, state.last_eval_step = metrics, state.step
    run.log.write_eval(state.step, metrics if metrics is not None else {}, validation)
    _update_best(run, metrics, validation)
    for callback in run.callbacks:
        if isinstance(callback, OnEvaluate):
            callback.on_evaluate(state, metrics if metrics is not None else validation)


def _score_dev_at_best(run: _Run) -> None:
    """``--dev-eval best``: score the dev set once, on the weights of the step the validation split chose (kept
    in :data:`BEST_STATE_NAME` since that step, deleted once scored). Logged as an evaluation line of that step
    with ``"at_best": true`` and no validation metrics."""
    state, path = run.state, run.out_dir / BEST_STATE_NAME
    if run.valset is None or state.best_step is None or state.best_metrics is not None:
        return  # every evaluation scored the dev set (or nothing was evaluated)
    if not path.exists():
        log.warning("the weights of step %d (chosen on the validation split) were not kept: the dev set is not "
                    "scored", state.best_step)
        return
    from safetensors.torch import load_file

    distributed.barrier()  # the main rank wrote the file
    best = load_file(str(path), device=str(run.device))
    current = {name: p.detach().clone() for name, p in run.named.items()}
    reporter = run.reporter
    started = reporter.evaluating(state.best_step, len(run.evalset.references)) if reporter else 0.0
    try:
        _copy_into(run.named, best)
        # a full forward: the prefix cache holds no dev rows here, and a freezing run's cached rows carry the
        # frozen adapters of the end of the run, not of the chosen step
        metrics = distributed.run_on_main(run_eval, run.model, run.evalset, run.config.gen_max_new_tokens)
    finally:
        _copy_into(run.named, current)
    if reporter is not None:
        reporter.evaluated(state.best_step, metrics, started)
    state.best_metrics = metrics
    run.log.write({"step": state.best_step, "eval": metrics, "at_best": True})
    distributed.barrier()
    if distributed.is_main():
        path.unlink(missing_ok=True)


def _copy_into(named: dict[str, Any], values: dict[str, Any]) -> None:
    """Copy ``values`` (name -> tensor) into the trainable parameters ``named``, which they must all cover."""
    missing = set(named) - set(values)
    if missing:
        raise ModelError(f"{BEST_STATE_NAME} lacks {len(missing)} trainable tensor(s), e.g. {sorted(missing)[0]}")
    with torch.no_grad():
        for name, param in named.items():
            param.copy_(values[name])


def _keep_best_state(run: _Run) -> None:
    """Write the trainable parameters to :data:`BEST_STATE_NAME` (atomically, the main rank)."""
    if not distributed.is_main():
        return
    from safetensors.torch import save_file

    from layerwise.runtime.io import atomic_write_with

    tensors = {name: p.detach().to("cpu").contiguous() for name, p in run.named.items()}
    atomic_write_with(run.out_dir / BEST_STATE_NAME, lambda tmp: save_file(tensors, tmp))


def _update_best(run: _Run, metrics: dict[str, float] | None, validation: dict[str, float] | None = None) -> None:
    """Keep the best adapter by the main metric (of the validation split when there is one, else of dev);
    count evaluations without progress (early stopping). ``metrics`` is ``None`` when the dev set was not
    scored (``--dev-eval best``): the trainable weights are then kept too, to score it at the end."""
    state, value = run.state, (validation if validation is not None else metrics)[run.task.main_metric]
    best = state.best_metric
    if best is None or (value > best if run.higher_is_better else value < best):
        state.best_metric, state.best_step, state.best_metrics, state.bad_evals = value, state.step, metrics, 0
        state.best_validation = validation
        _save_adapter(run, run.out_dir / BEST_DIR)
        if metrics is None:
            _keep_best_state(run)
        return
    state.bad_evals += 1
    if run.config.early_stopping and state.bad_evals >= run.config.early_stopping:
        state.stopped_early = True


def _maybe_save(run: _Run) -> None:
    every = run.config.save_every
    if every and run.state.step % every == 0:
        _save(run)


def _save(run: _Run) -> None:
    """Checkpoint the current step (once per step)."""
    if run.saved_step == run.state.step:
        return
    save_checkpoint(run.out_dir, run.model, run.optimizer, run.scheduler, run.state, run.info, run.callbacks,
                    run.named)
    run.saved_step = run.state.step


def _save_on_interrupt(run: _Run) -> None:
    """At a step boundary the checkpoint is exact; inside a step (a second Ctrl-C) the last one is kept."""
    if run.mid_step:
        log.warning("interrupted inside step %d; the last checkpoint (step %d) is kept", run.state.step + 1,
                    max(run.saved_step, 0))
        return
    _save(run)
    log.warning("interrupted; checkpoint of step %d saved in %s (continue with --resume)", run.state.step,
                run.out_dir / "checkpoint")


def _save_adapter(run: _Run, path: Path) -> Path:
    """The weights folder: written by ``weights_writer`` when there is one (La-LoRA writes its truncated
    adapter, full fine-tuning the whole model), else by peft's ``save_pretrained``."""
    if run.weights_writer is not None:
        if distributed.is_main():
            run.weights_writer.save_adapter(run.model, path)
        return path
    return save_adapter(run.model, path)


def _write_outputs(run: _Run) -> TrainResult:
    """Final adapter, ``metrics.json`` and ``plots.png``; the result."""
    from layerwise.train.plots import plot_training

    state, out = run.state, run.out_dir
    adapter_dir = _save_adapter(run, out / ADAPTER_DIR)
    trainable = sum(p.numel() for p in run.params)
    if distributed.is_main():
        atomic_write_json(out / METRICS_NAME, json_safe(_metrics(run, trainable)))
        plot_training(out / LOG_NAME, out / PLOT_NAME, run.task.main_metric)
        if run.freezer is not None:
            from layerwise.train.plots import plot_freezing

            plot_freezing(run.freezer.report(state.step), state.step, out / FREEZE_PLOT_NAME)
        for callback in run.callbacks:  # e.g. La-LoRA's rank_history.json and ranks.png
            if isinstance(callback, OnTrainEnd):
                callback.on_train_end(state, out)
    distributed.barrier()  # the outputs exist for every rank when train() returns
    best_dir = out / BEST_DIR if state.best_step is not None else None
    return TrainResult(final_metrics=dict(state.last_metrics or {}), best_metrics=state.best_metrics,
                       best_step=state.best_step, best_validation=state.best_validation, steps=state.step,
                       train_seconds=state.train_seconds,
                       phase_totals=dict(state.phase_totals), peak_memory=state.peak_memory,
                       trainable_params=trainable, log_path=out / LOG_NAME, adapter_dir=adapter_dir,
                       best_dir=best_dir, stopped_early=state.stopped_early,
                       prefix_cache=run.prefix_report.to_dict() if run.prefix_report is not None else None,
                       freeze=run.freezer.report(state.step) if run.freezer is not None else None)


def _metrics(run: _Run, trainable: int) -> dict:
    state = run.state
    steps = max(1, state.step)
    return {
        "schema_version": SCHEMA_VERSION,
        "task": run.task.name,
        "main_metric": run.task.main_metric,
        "higher_is_better": run.higher_is_better,
        "final": state.last_metrics,
        "best": state.best_metrics,
        "best_step": state.best_step,
        "selected_on": "validation" if run.valset is not None else "dev",
        "best_validation": state.best_validation,
        "validation_examples": run.info.get("validation_examples", 0),
        "steps": state.step,
        "stopped_early": state.stopped_early,
        "train_seconds": state.train_seconds,
        "phase_totals": {f"{k}_s": v for k, v in state.phase_totals.items()},
        "phase_means": {f"{k}_s": v / steps for k, v in state.phase_totals.items()},
        "peak_memory": state.peak_memory,
        "memory_kind": "cuda_allocated" if run.timer.cuda else "cpu_rss",
        "trainable_params": trainable,
        "tokens_seen": state.tokens_seen,
        "config": run.config.to_dict(),
        "prefix_cache": run.prefix_report.to_dict() if run.prefix_report is not None else None,
        "freeze": run.freezer.report(state.step) if run.freezer is not None else None,
    }
