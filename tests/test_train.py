"""Training engine: the loop's outputs, exact resume (also after Ctrl-C), checkpoints, evaluation per task kind,
schedule, data order, config errors, phase timing and the HF Trainer callback."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file

from layerwise.data import Collator, encode_examples, load_task
from layerwise.runtime.errors import ConfigError
from layerwise.train import PhaseTimer, PhaseTimingCallback, TrainConfig, TrainResult, evaluate, train
from layerwise.train.checkpoint import find_checkpoint
from layerwise.train.config import flag_name
from layerwise.train.data_order import DataOrder, batch_indices, batches_per_epoch
from layerwise.train.log import read_log, step_lines
from layerwise.train.schedule import lr_lambda, make_scheduler, warmup_steps

from tiny_models import tiny_bert as shared_tiny_bert

# peft touches transformers' deprecated `is_gradient_checkpointing`: third-party noise, not ours.
pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
              pytest.mark.usefixtures("one_thread")]

PHASES = ("forward", "backward", "optimizer")


@pytest.fixture(scope="module")
def rt():
    """A few hundred rotten-tomatoes sentences. The file is sorted by label, so draw a seeded sample."""
    data = load_task("rotten-tomatoes")
    rng = random.Random(0)
    return data.task, rng.sample(data.train, 192), rng.sample(data.dev, 64)


def tiny_bert(vocab_size: int, num_labels: int = 2, seed: int = 0) -> transformers.PreTrainedModel:
    return shared_tiny_bert(vocab_size, num_labels=num_labels, seed=seed)


def tiny_peft(vocab_size: int, num_labels: int = 2, seed: int = 0) -> peft.PeftModel:
    """A tiny BERT with LoRA on query/value; dropout stays on (0.1) so resume must restore the RNG."""
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.1,
                           target_modules=["query", "value"])
    return peft.get_peft_model(tiny_bert(vocab_size, num_labels, seed), lora)


def config(**overrides) -> TrainConfig:
    base = dict(steps=8, lr=5e-3, batch_size=8, max_length=48, eval_every=3, warmup_ratio=0.25)
    return TrainConfig(**{**base, **overrides})


def run(tok, rt, out: Path, cfg: TrainConfig, **kwargs) -> TrainResult:
    task, train_ex, dev_ex = rt
    return train(tiny_peft(tok.vocab_size), tok, task, train_ex, dev_ex, cfg, out, show_progress=False, **kwargs)


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


def assert_same_adapter(a: Path, b: Path) -> None:
    ta, tb = adapter_tensors(a), adapter_tensors(b)
    assert ta.keys() == tb.keys() and ta
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name


class StopAt:
    """Callback: ask the loop to stop after step ``step`` (a normal end, resumable)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state) -> None:
        state.should_stop = state.should_stop or state.step == self.step


class InterruptAt:
    """Callback: Ctrl-C at step ``step``, raised directly or sent as a real SIGINT to this process."""

    def __init__(self, step: int, signal_: bool = False) -> None:
        self.step, self.signal = step, signal_

    def on_step_end(self, state) -> None:
        if state.step == self.step:
            if self.signal:
                os.kill(os.getpid(), signal.SIGINT)  # deferred by the loop to this step's boundary
            else:
                raise KeyboardInterrupt


# --- the loop -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tokenizer, rt, tmp_path_factory) -> TrainResult:
    """An uninterrupted 8-step run that resumed runs must match bit for bit."""
    return run(tokenizer, rt, tmp_path_factory.mktemp("reference"), config())


def test_short_run_lowers_loss_and_writes_every_output(tokenizer, rt, tmp_path):
    task, train_ex, dev_ex = rt
    model = tiny_peft(tokenizer.vocab_size)
    cfg = config(steps=40, lr=3e-2, eval_every=10, warmup_ratio=0.1)
    result = train(model, tokenizer, task, train_ex[:16], dev_ex, cfg, tmp_path, show_progress=False)

    lines = read_log(result.log_path)
    steps = step_lines(lines)
    assert [r["step"] for r in steps] == list(range(1, 41))
    for r in steps:
        assert all(r[f"{p}_s"] > 0 for p in PHASES) and r["step_s"] >= sum(r[f"{p}_s"] for p in PHASES)
        assert all(r[f"mem_after_{p}"] > 0 for p in PHASES) and r["peak_memory"] > 0 and r["lr"] > 0
    losses = [r["loss"] for r in steps]
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8 - 0.05, losses  # 16 examples: it starts to memorise
    assert [r["step"] for r in lines if "eval" in r] == [10, 20, 30, 40]

    for name in ("adapter", "best", "checkpoint", "metrics.json", "train_log.jsonl", "plots.png"):
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "plots.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["schema_version"] == 1 and metrics["steps"] == 40 == result.steps
    assert set(metrics["final"]) == {"accuracy", "f1", "loss"} and metrics["final"] == result.final_metrics
    assert metrics["best"][task.main_metric] >= metrics["final"][task.main_metric]
    assert metrics["best_step"] in (10, 20, 30, 40) and metrics["trainable_params"] == result.trainable_params
    assert result.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert set(metrics["phase_totals"]) == {f"{p}_s" for p in PHASES}
    assert metrics["phase_means"]["forward_s"] == pytest.approx(metrics["phase_totals"]["forward_s"] / 40)
    assert metrics["tokens_seen"] > 40 * 8 * 3 and metrics["peak_memory"] > 0 and metrics["train_seconds"] > 0

    # The adapter folder is a plain peft adapter: it reproduces the trained model's logits.
    batch = Collator(tokenizer, task)(encode_examples(dev_ex[:16], tokenizer, task, 48))
    loaded = peft.PeftModel.from_pretrained(tiny_bert(tokenizer.vocab_size), str(result.adapter_dir)).eval()
    with torch.no_grad():
        expected, got = model.eval()(**batch).logits, loaded(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_after_a_stop_is_bit_identical(tokenizer, rt, reference, tmp_path, grad_accum):
    cfg = config(grad_accum=grad_accum)
    full = reference if grad_accum == 1 else run(tokenizer, rt, tmp_path / "full", cfg)
    first = run(tokenizer, rt, tmp_path / "resumed", cfg, callbacks=[StopAt(4)])
    assert first.steps == 4
    # A new model, as a new process would build it (its own random init is overwritten by the checkpoint).
    resumed = run(tokenizer, rt, tmp_path / "resumed", cfg, resume=True)
    assert resumed.steps == 8
    assert_same_adapter(full.adapter_dir, resumed.adapter_dir)
    lines = read_log(resumed.log_path)
    assert [r["step"] for r in step_lines(lines)] == list(range(1, 9))
    full_losses = [r["loss"] for r in step_lines(read_log(full.log_path))]
    assert [r["loss"] for r in step_lines(lines)] == full_losses
    assert resumed.final_metrics == full.final_metrics


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler for the test, whatever the test process was started with (a background job
    of a non-interactive shell starts with SIGINT ignored)."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


def test_an_ignored_sigint_stays_ignored():
    from layerwise.train.interrupt import DeferredInterrupt

    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with DeferredInterrupt():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("how", ["raise", "sigint"])
def test_interrupt_saves_a_checkpoint_that_resumes_identically(tokenizer, rt, reference, tmp_path, how,
                                                               default_sigint):
    with pytest.raises(KeyboardInterrupt):
        run(tokenizer, rt, tmp_path, config(), callbacks=[InterruptAt(3, signal_=how == "sigint")])
    state = json.loads((find_checkpoint(tmp_path) / "state.json").read_text())
    assert state["state"]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the loop's handler is gone
    resumed = run(tokenizer, rt, tmp_path, config(), resume=True)
    assert_same_adapter(reference.adapter_dir, resumed.adapter_dir)
    assert [r["step"] for r in step_lines(read_log(resumed.log_path))] == list(range(1, 9))


def test_checkpoint_files_load_with_weights_only(reference):
    folder = find_checkpoint(reference.log_path.parent)
    assert folder is not None and folder.name == "checkpoint"
    optimizer = torch.load(folder / "optimizer.pt", weights_only=True)
    scheduler = torch.load(folder / "scheduler.pt", weights_only=True)
    assert optimizer["state"] and all("exp_avg" in s for s in optimizer["state"].values())
    assert scheduler["last_epoch"] == 8
    trainable = load_file(str(folder / "trainable.safetensors"))
    assert any("lora_A" in k for k in trainable) and any("classifier" in k for k in trainable)
    assert load_file(str(folder / "rng.safetensors"))["torch_cpu"].dtype == torch.uint8
    meta = json.loads((folder / "state.json").read_text())
    assert meta["state"]["step"] == 8 and meta["config"]["steps"] == 8
    assert sorted(trainable) == sorted(meta["trainable"])
    assert len(meta["numpy_rng"]["keys"]) == 624 and len(meta["python_rng"][1]) == 625


def test_resume_refuses_a_changed_trajectory_or_a_missing_checkpoint(tokenizer, rt, reference, tmp_path):
    with pytest.raises(ConfigError, match="--resume: no checkpoint"):
        run(tokenizer, rt, tmp_path, config(), resume=True)
    with pytest.raises(ConfigError, match="--batch-size is 4 but the checkpoint"):
        run(tokenizer, rt, reference.log_path.parent, config(batch_size=4), resume=True)
    task, train_ex, dev_ex = rt
    with pytest.raises(ConfigError, match="the training data differ"):
        train(tiny_peft(tokenizer.vocab_size), tokenizer, task, train_ex[:50], dev_ex, config(),
              reference.log_path.parent, resume=True, show_progress=False)


def test_resume_may_extend_the_run_with_a_warning(tokenizer, rt, reference, tmp_path):
    shutil.copytree(reference.log_path.parent, tmp_path, dirs_exist_ok=True)
    with pytest.warns(UserWarning, match="--steps changed from 8 to 10"):
        longer = run(tokenizer, rt, tmp_path, config(steps=10), resume=True)
    assert longer.steps == 10 and [r["step"] for r in step_lines(read_log(longer.log_path))] == list(range(1, 11))


def test_early_stopping_ends_the_run_when_the_metric_stalls(tokenizer, rt, tmp_path):
    # A vanishing learning rate leaves predictions unchanged: the first evaluation stays the best.
    result = run(tokenizer, rt, tmp_path, config(steps=20, lr=1e-12, eval_every=1, early_stopping=2))
    assert result.stopped_early and result.steps == 3 and result.best_step == 1
    assert (tmp_path / "best" / "adapter_model.safetensors").exists()


def test_a_tiny_causal_lm_trains_and_is_scored_by_exact_match(gsm8k_dir, tmp_path):
    from layerwise.models import resolve_model
    from layerwise.models.loading import load_tokenizer

    tok = load_tokenizer(resolve_model("smollm2-135m"))
    data = load_task("gsm8k", gsm8k_dir)
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    model = peft.get_peft_model(llama, peft.LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["q_proj", "v_proj"]))
    metrics = evaluate(model, data.dev[:4], data.task, tok, batch_size=2, max_length=256, gen_max_new_tokens=8)
    assert set(metrics) == {"exact_match", "loss"} and 0.0 <= metrics["exact_match"] <= 1.0
    assert math.log(len(tok)) * 0.8 < metrics["loss"] < math.log(len(tok)) * 1.2  # random model: ~uniform
    cfg = TrainConfig(steps=2, batch_size=2, max_length=256, gen_max_new_tokens=8, eval_max_examples=2)
    result = train(model, tok, data.task, data.train[:4], data.dev[:4], cfg, tmp_path, show_progress=False)
    assert result.steps == 2 and 0.0 <= result.final_metrics["exact_match"] <= 1.0


# --- evaluation ---------------------------------------------------------------------------------------------


def test_classification_evaluation_is_argmax_accuracy_and_restores_train_mode(tokenizer, rt):
    task, _, dev_ex = rt
    model = tiny_bert(tokenizer.vocab_size).train()
    metrics = evaluate(model, dev_ex, task, tokenizer, batch_size=16, max_length=48)
    assert model.training and set(metrics) == {"accuracy", "f1", "loss"}
    batch = Collator(tokenizer, task)(encode_examples(dev_ex, tokenizer, task, 48))
    with torch.no_grad():
        out = model.eval()(**batch)
    assert metrics["accuracy"] == pytest.approx((out.logits.argmax(-1) == batch["labels"]).float().mean().item())
    assert metrics["loss"] == pytest.approx(out.loss.item(), rel=1e-5)
    capped = evaluate(model, dev_ex, task, tokenizer, batch_size=16, max_length=48, max_examples=10)
    assert capped["accuracy"] in {i / 10 for i in range(11)}


def test_regression_evaluation_scores_the_single_logit(tokenizer, glue_dir):
    data = load_task("stsb", glue_dir / "STS-B")
    dev = data.dev[:24]
    model = tiny_bert(tokenizer.vocab_size, num_labels=1)
    metrics = evaluate(model, dev, data.task, tokenizer, batch_size=8, max_length=64)
    assert set(metrics) == {"pearson", "spearman", "loss"}
    batch = Collator(tokenizer, data.task)(encode_examples(dev, tokenizer, data.task, 64))
    with torch.no_grad():
        pred = model.eval()(**batch).logits[:, 0]
    assert metrics["loss"] == pytest.approx(torch.mean((pred - batch["labels"]) ** 2).item(), rel=1e-5)
    from scipy.stats import rankdata

    x, y = pred.double().numpy(), batch["labels"].double().numpy()
    assert metrics["pearson"] == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-5)
    # Spearman: Pearson of the ranks, ties (STS-B scores repeat) at their average rank
    assert metrics["spearman"] == pytest.approx(np.corrcoef(rankdata(x), rankdata(y))[0, 1], abs=1e-5)
    assert abs(metrics["pearson"] - metrics["spearman"]) > 1e-3  # the two are told apart on this sample


# --- pure parts ---------------------------------------------------------------------------------------------


def test_schedule_values_at_known_points():
    assert warmup_steps(100, 0.06) == 6 and warmup_steps(10, 0.0) == 0
    assert lr_lambda(0, 100, 10) == pytest.approx(0.1) and lr_lambda(9, 100, 10) == 1.0
    assert lr_lambda(10, 100, 10) == 1.0 and lr_lambda(55, 100, 10) == pytest.approx(0.5)
    assert lr_lambda(99, 100, 10) == pytest.approx(1 / 90)
    assert lr_lambda(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_lambda(10 + 90 // 3, 100, 10, "cosine") == pytest.approx(0.75)
    assert lr_lambda(99, 100, 10, "constant") == 1.0 and lr_lambda(0, 5, 0) == 1.0
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(optimizer, total=10, warmup_ratio=0.2, kind="linear")
    seen = []
    for _ in range(10):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.5, 1.0] + [1 - i / 8 for i in range(8)])


def test_data_order_is_a_pure_function_of_seed_and_step():
    size, bs = 50, 8
    per_epoch = batches_per_epoch(size, bs)
    assert per_epoch == 6 and batches_per_epoch(5, 8) == 1
    order = DataOrder(seed=3, size=size, batch_size=bs)
    for n in [0, 5, 6, 17, 3, 40]:  # any order, as a resumed run asks
        assert order(n) == batch_indices(3, n, size, bs)
    epoch = [i for n in range(per_epoch) for i in order(n)]
    assert len(epoch) == len(set(epoch)) == per_epoch * bs
    assert order(0) != order(per_epoch) and order(0) != batch_indices(4, 0, size, bs)
    assert sorted(batch_indices(0, 7, 5, 8)) == list(range(5))


def test_grouping_by_length_cuts_padding_and_stays_a_pure_function(tokenizer, rt):
    task, train_ex, _ = rt
    lengths = [len(f["input_ids"]) for f in encode_examples(train_ex, tokenizer, task, 128)]
    size, bs = len(lengths), 8
    plain, grouped = DataOrder(0, size, bs), DataOrder(0, size, bs, lengths, window=6)
    assert DataOrder(0, size, bs, lengths, window=0)(3) == plain(3)  # window 0 is the plain order
    per_epoch = batches_per_epoch(size, bs)
    for n in [0, 5, per_epoch + 2, 3]:
        assert grouped(n) == batch_indices(0, n, size, bs, lengths, 6)
    epoch = [i for n in range(per_epoch) for i in grouped(n)]
    plain_epoch = [i for n in range(per_epoch) for i in plain(n)]
    assert sorted(epoch) == sorted(plain_epoch)  # the same examples, each once
    assert grouped(0) != grouped(per_epoch)

    def padded(order) -> int:
        return sum(bs * max(lengths[i] for i in order(n)) for n in range(per_epoch))
    # rotten-tomatoes sentences vary in length: grouped batches pad far less
    assert padded(grouped) < 0.8 * padded(plain), (padded(grouped), padded(plain))
    # the batch order is shuffled: consecutive batches are not sorted by length across windows
    firsts = [max(lengths[i] for i in grouped(n)) for n in range(per_epoch)]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_a_run_grouped_by_length_resumes_exactly(tokenizer, rt, tmp_path):
    cfg = config(group_by_length=3)
    full = run(tokenizer, rt, tmp_path / "full", cfg)
    run(tokenizer, rt, tmp_path / "resumed", cfg, callbacks=[StopAt(4)])
    resumed = run(tokenizer, rt, tmp_path / "resumed", cfg, resume=True)
    assert_same_adapter(full.adapter_dir, resumed.adapter_dir)
    with pytest.raises(ConfigError, match="--group-by-length"):
        run(tokenizer, rt, tmp_path / "resumed", config(group_by_length=5), resume=True)


@pytest.mark.parametrize(("kwargs", "flag"), [
    ({"steps": 0}, "--steps"), ({"lr": 0.0}, "--lr"), ({"lr": -1e-3}, "--lr"),
    ({"weight_decay": -0.1}, "--weight-decay"), ({"warmup_ratio": 1.0}, "--warmup-ratio"),
    ({"scheduler": "step"}, "--scheduler"), ({"batch_size": 0}, "--batch-size"), ({"grad_accum": 0}, "--grad-accum"),
    ({"max_length": 1}, "--max-length"), ({"eval_every": -1}, "--eval-every"), ({"save_every": -2}, "--save-every"),
    ({"early_stopping": 2}, "--early-stopping"), ({"seed": -1}, "--train-seed"), ({"max_grad_norm": -1.0}, "--max-grad-norm"),
    ({"eval_max_examples": 0}, "--eval-max-examples"), ({"pad_to": 16}, "--pad-to"),
    ({"gen_max_new_tokens": 0}, "--gen-max-new-tokens"), ({"steps": 2.5}, "--steps"),
    ({"group_by_length": -1}, "--group-by-length"),
])
def test_config_errors_name_their_flag(kwargs, flag):
    with pytest.raises(ConfigError, match=f"^{flag} "):
        TrainConfig(**{"steps": 10, **kwargs})


def test_config_defaults_and_flag_names():
    cfg = TrainConfig(steps=3)
    assert (cfg.lr, cfg.batch_size, cfg.scheduler, cfg.eval_every, cfg.pad_to) == (5e-4, 16, "linear", 0, None)
    assert flag_name("grad_accum") == "--grad-accum" and "gen_max_new_tokens" in TrainConfig.field_names()
    with pytest.raises(ConfigError, match="^--steps must be >= 1, got 0$"):
        TrainConfig(steps=0)


def test_phase_timer_records_time_and_memory_per_phase():
    timer = PhaseTimer(phases=PHASES, keep_records=True)
    for step in (1, 2):
        timer.begin_step(step)
        for name, seconds in zip(PHASES, (0.02, 0.01, 0.005)):
            with timer.phase(name):
                time.sleep(seconds)
        with timer.phase("forward"):  # a second micro-batch adds up
            time.sleep(0.01)
        record = timer.end_step()
        assert record["step"] == step and record["forward_s"] >= 0.03 and record["backward_s"] >= 0.01
        assert record["step_s"] >= record["forward_s"] + record["backward_s"] + record["optimizer_s"]
        assert record["peak_memory"] >= max(record[f"mem_after_{p}"] for p in PHASES) > 0
    assert timer.steps == 2 and len(timer.records) == 2 and timer.totals["forward"] >= 0.06
    assert timer.means()["optimizer"] == pytest.approx(timer.totals["optimizer"] / 2)


def test_phase_timer_bookkeeping_is_small_next_to_the_smallest_step(one_thread):
    """Relative to the forward + backward of a tiny BERT on 8 examples measured in the same run (no absolute
    limit: a loaded machine slows both); measured 0.036 of it on 2026-11-29, the bound is 0.1."""
    model = shared_tiny_bert(layers=1)
    ids = torch.randint(0, 100, (8, 16))
    labels = torch.zeros(8, dtype=torch.long)

    def per_call(fn, n: int) -> float:
        fn()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) / n

    def model_step() -> None:
        model(input_ids=ids, labels=labels).loss.backward()

    timer = PhaseTimer(phases=PHASES)

    def timer_step() -> None:
        timer.begin_step(timer.steps)
        for name in PHASES:
            with timer.phase(name):
                pass
        timer.end_step()

    ratio = per_call(timer_step, 200) / per_call(model_step, 20)
    assert ratio < 0.1, f"timer bookkeeping is {ratio:.3f} of a tiny training step"


# --- the HF Trainer callback --------------------------------------------------------------------------------


def test_phase_timing_callback_logs_a_real_trainer_run(tokenizer, rt, tmp_path):
    task, train_ex, _ = rt
    features = encode_examples(train_ex[:48], tokenizer, task, 48)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=8,
                                          logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
                                          disable_tqdm=True, learning_rate=1e-3)
    callback = PhaseTimingCallback()
    trainer = transformers.Trainer(model=tiny_peft(tokenizer.vocab_size), args=args, train_dataset=features,
                                   data_collator=Collator(tokenizer, task), callbacks=[callback])
    trainer.train()
    lines = read_log(tmp_path / "train_log.jsonl")
    assert [r["step"] for r in lines] == [1, 2, 3]
    for r in lines:
        assert r["loss"] > 0 and r["lr"] > 0 and r["optimizer_s"] > 0 and r["forward_backward_s"] > 0
        assert r["step_s"] >= r["optimizer_s"] + r["forward_backward_s"] and r["peak_memory"] > 0
        assert r["forward_s"] is None and r["mem_after_backward"] > 0
    assert callback.timer is not None and callback.timer.steps == 3


# --- the real model -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_minilm_improves_dev_accuracy(minilm, tmp_path):
    data = load_task("rotten-tomatoes")
    rng = random.Random(1)
    train_ex, dev_ex = rng.sample(data.train, 480), rng.sample(data.dev, 200)
    base = copy.deepcopy(minilm.model)  # the session fixture stays untouched
    with torch.no_grad():  # the fresh head's init otherwise differs from process to process
        base.classifier.weight.normal_(0.0, 0.02, generator=torch.Generator().manual_seed(0))
        base.classifier.bias.zero_()
    kwargs = dict(batch_size=16, max_length=48)
    before = evaluate(base, dev_ex, data.task, minilm.tokenizer, **kwargs)
    # The sentence-embedding model was never trained through its pooler: train it with the head.
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "key", "value", "dense"],
                           modules_to_save=["pooler"])
    model = peft.get_peft_model(base, lora)
    cfg = TrainConfig(steps=30, lr=2e-3, eval_every=15, warmup_ratio=0.1, **kwargs)
    result = train(model, minilm.tokenizer, data.task, train_ex, dev_ex, cfg, tmp_path, show_progress=False)
    assert result.final_metrics["accuracy"] > before["accuracy"] + 0.1, (before, result.final_metrics)
    assert result.final_metrics["loss"] < before["loss"] - 0.05
    assert result.best_metrics["accuracy"] >= result.final_metrics["accuracy"]


def test_a_disk_too_small_for_the_checkpoints_is_refused_before_the_first_step(tokenizer, rt, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    model = tiny_peft(tokenizer.vocab_size)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    # checkpoint (weights + two AdamW moments) twice, best and final weights, doubled, plus 1 MiB; float32
    need_mib = (2 * (2 * 3 * 4 * trainable + 2 * 4 * trainable) + 2**20) / 2**20
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**20, 10 * 2**20 - 2**19, 2**19))
    task, train_ex, dev_ex = rt
    with pytest.raises(ConfigError, match=rf"--out {tmp_path}: its disk has 0.5 MiB free, and this run's "
                                          rf"checkpoints and weights need about {need_mib:.1f} MiB"):
        train(model, tokenizer, task, train_ex, dev_ex, config(), tmp_path, show_progress=False)
    assert not (tmp_path / "checkpoint").exists()


class _Stranger:
    """Not a tensor or a plain container: ``torch.load(weights_only=True)`` must refuse its pickle."""


@pytest.mark.parametrize("damage, expected", [
    (lambda f: f.write_bytes(f.read_bytes()[:40]), "is corrupt or truncated"),
    (lambda f: torch.save({"state": _Stranger()}, f), "holds pickled objects that are not loaded for safety"),
    (lambda f: f.unlink(), "is missing; the checkpoint is incomplete"),
])
def test_a_damaged_checkpoint_file_is_one_error_naming_it(tokenizer, rt, tmp_path, damage, expected):
    run(tokenizer, rt, tmp_path, config(steps=2, eval_every=0))
    optimizer_file = find_checkpoint(tmp_path) / "optimizer.pt"
    damage(optimizer_file)
    with pytest.raises(ConfigError, match=rf"--resume: {optimizer_file} {expected}"):
        run(tokenizer, rt, tmp_path, config(steps=2, eval_every=0), resume=True)


def test_dev_eval_best_scores_dev_once_on_the_chosen_steps_weights(tokenizer, rt, tmp_path):
    """``--dev-eval best``: validation at every evaluation, dev once at the end on the weights of the step the
    validation split chose. It reports exactly what scoring dev at every evaluation reports at that step, trains
    the same weights, survives an interrupt after the choice, and leaves no kept weights behind."""
    task, train_ex, dev_ex = rt
    validation = train_ex[:48]
    cfg = config(steps=12, eval_every=2, lr=2e-2)

    def go(out, dev_eval, **kwargs):
        return train(tiny_peft(tokenizer.vocab_size), tokenizer, task, train_ex[48:], dev_ex,
                     config(steps=12, eval_every=2, lr=2e-2, dev_eval=dev_eval), out, show_progress=False,
                     validation_examples=validation, **kwargs)

    every, best = go(tmp_path / "every", "every"), go(tmp_path / "best", "best")
    assert every.best_step not in (None, cfg.steps)  # the chosen weights are not the final ones: a real test
    assert best.best_step == every.best_step and best.best_validation == every.best_validation
    assert best.best_metrics == every.best_metrics  # the same weights, batches and forward: bit for bit
    assert_same_adapter(every.adapter_dir, best.adapter_dir)
    assert_same_adapter(every.best_dir, best.best_dir)
    lines = [r for r in read_log(best.log_path) if "eval" in r]
    assert [r["eval"] for r in lines[:-1]] == [{}] * 6 and all("validation" in r for r in lines[:-1])
    assert lines[-1] == {"step": every.best_step, "eval": every.best_metrics, "at_best": True}
    assert best.final_metrics == {}
    assert json.loads((tmp_path / "best" / "metrics.json").read_text())["best"] == every.best_metrics
    assert not (tmp_path / "best" / "best_state.safetensors").exists()
    # interrupted after the choice: the kept weights carry over to the resumed run
    with pytest.raises(KeyboardInterrupt):
        go(tmp_path / "resumed", "best", callbacks=[InterruptAt(11)])
    assert (tmp_path / "resumed" / "best_state.safetensors").exists()
    resumed = go(tmp_path / "resumed", "best", resume=True)
    assert resumed.best_metrics == every.best_metrics
    with pytest.raises(ConfigError, match="--dev-eval best .*--validation-fraction"):
        run(tokenizer, rt, tmp_path / "none", config(dev_eval="best"))


def test_a_validation_split_chooses_the_step_and_dev_is_only_reported(tokenizer, rt, tmp_path):
    """With validation examples, the best step is the validation split's best (read back from the log),
    ``best`` holds the dev metrics logged at that step, and early stopping counts validation evaluations."""
    task, train_ex, dev_ex = rt
    validation = train_ex[:48]
    result = train(tiny_peft(tokenizer.vocab_size), tokenizer, task, train_ex[48:], dev_ex,
                   config(steps=12, eval_every=2, lr=2e-2), tmp_path, show_progress=False,
                   validation_examples=validation)
    evals = [r for r in read_log(tmp_path / "train_log.jsonl") if "eval" in r]
    assert len(evals) == 6 and all("validation" in r for r in evals)
    val = [r["validation"]["accuracy"] for r in evals]
    first_best = evals[val.index(max(val))]  # ties keep the earlier step
    assert result.best_step == first_best["step"]
    assert result.best_metrics == first_best["eval"] and result.best_validation == first_best["validation"]
    # the validation accuracy is a real accuracy on the held-out examples: a multiple of 1/48
    assert all(abs(v * 48 - round(v * 48)) < 1e-6 for v in val)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["selected_on"] == "validation" and saved["validation_examples"] == 48
    assert saved["best"] == first_best["eval"]
    from layerwise.evaluate.report import collect_run

    (tmp_path / "selection.json").write_text("{}")
    row = collect_run(tmp_path, "x")
    assert row["score"] == first_best["eval"]["accuracy"] and row["scored_at"] == first_best["step"]
    # patience counts validation evaluations: a vanishing learning rate never improves on the first one
    stalled = train(tiny_peft(tokenizer.vocab_size), tokenizer, task, train_ex[48:], dev_ex,
                    config(steps=20, lr=1e-12, eval_every=1, early_stopping=2), tmp_path / "stalled",
                    show_progress=False, validation_examples=validation)
    assert stalled.stopped_early and stalled.steps == 3 and stalled.best_step == 1
