"""The TRL recipe: `SFTTrainer` with a layerwise suggestion's LoraConfig on a tiny Llama, with TRL's default
gradient checkpointing. Only the chosen modules train and change; with `FrozenPrefixCallback` the blocks below
the lowest adapter build no autograd graph (without it, TRL's `enable_input_require_grads` drags them in)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tiny_models import tiny_llama, word_tokenizer

if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
    import trl  # CI installs the test extra (pip install -e ".[test]"), which holds trl
else:
    trl = pytest.importorskip("trl", reason="TRL is in the test extra: pip install -c constraints.txt -e '.[test]'")

import layerwise
from layerwise.adapters.bridge import adapted_modules
from layerwise.train import FrozenPrefixCallback

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]

WORDS = "the cat dog sat ran on a mat log red blue big small one two three".split()


def texts(n: int = 24) -> list[str]:
    g = torch.Generator().manual_seed(0)
    return [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (8,), generator=g)) for _ in range(n)]


def calibration(tokenizer, rows: list[str]) -> list[dict]:
    """A user's own batches: causal-LM labels are the inputs (no padding: 8 words each)."""
    out = []
    for i in range(0, 16, 8):
        enc = tokenizer(rows[i:i + 8], return_tensors="pt")
        out.append({**enc, "labels": enc["input_ids"].clone()})
    return out


def sft(tmp_path: Path, tokenizer, rows: list[str], lora_config, callbacks: list) -> tuple:
    """A few SFTTrainer steps (gradient checkpointing on, TRL's default); returns (trainer, grad flags seen at
    the output of each block during training)."""
    from datasets import Dataset

    model = tiny_llama(vocab_size=len(tokenizer))
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                         logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=True,
                         seed=0, max_length=16, activation_checkpointing_kwargs={"use_reentrant": False})
    assert args.gradient_checkpointing  # TRL's default, the case this recipe is about
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=Dataset.from_dict({"text": rows}),
                             processing_class=tokenizer, peft_config=lora_config, callbacks=callbacks)
    seen: dict[int, set[bool]] = {}
    layers = trainer.model.get_base_model().model.layers
    hooks = [block.register_forward_hook(lambda m, i, out, b=b: seen.setdefault(b, set()).add(
        (out[0] if isinstance(out, tuple) else out).requires_grad)) for b, block in enumerate(layers)]
    trainer.train()
    for h in hooks:
        h.remove()
    return trainer, seen


def test_sft_trainer_trains_exactly_the_suggested_modules_and_keeps_the_prefix_out_of_autograd(tmp_path) -> None:
    tokenizer = word_tokenizer(WORDS)
    rows = texts()
    s = layerwise.suggest(tiny_llama(vocab_size=len(tokenizer)), calibration(tokenizer, rows), metric="actnorm", k=2,
                          name="tiny-llama")
    assert min(s.layers) > 0  # a frozen prefix exists (the residual stream grows with depth)
    config = s.lora_config(task_type="CAUSAL_LM")

    trainer, seen = sft(tmp_path / "with", tokenizer, rows, config, [FrozenPrefixCallback()])
    model = trainer.model
    expected = sorted(f"model.layers.{i}.self_attn.{p}_proj" for i in s.layers for p in "qv")  # by hand
    assert adapted_modules(model) == expected
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"base_model.model.{m}.lora_{ab}.default.weight" for m in expected for ab in "AB"}
    before = tiny_llama(vocab_size=len(tokenizer)).state_dict()  # the same seed: the weights SFTTrainer started from
    after = model.get_base_model().state_dict()
    for name, value in before.items():  # every base weight as it was
        key = name.replace(".weight", ".base_layer.weight") if any(name.startswith(m + ".") for m in expected) else name
        torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=name)
    for m in expected:  # lora_B starts at zero; after 3 steps at lr 1e-2 both factors moved
        assert after[f"{m}.lora_B.default.weight"].abs().max() > 0, m
    lowest = min(s.layers)
    assert all(seen[b] == {False} for b in range(lowest)), seen  # the frozen prefix: no graph
    assert all(seen[b] == {True} for b in s.layers), seen

    _, without = sft(tmp_path / "without", tokenizer, rows, config, [])
    assert all(without[b] == {True} for b in range(lowest)), without  # TRL's default: the prefix in autograd


def test_reentrant_checkpointing_is_refused_naming_the_setting(tmp_path) -> None:
    """Under the old argument names too (transformers 5 mirrors them onto activation_checkpointing*)."""
    import transformers

    args = transformers.TrainingArguments(output_dir=str(tmp_path), gradient_checkpointing=True,
                                          gradient_checkpointing_kwargs={"use_reentrant": True}, report_to="none")
    from layerwise.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="use_reentrant"):
        FrozenPrefixCallback().on_train_begin(args, None, None, model=tiny_llama())
