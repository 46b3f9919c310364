"""The Hugging Face Trainer recipe: a layerwise suggestion's config, La-LoRA and phase timing as
TrainerCallbacks; the adapter La-LoRA exports reproduces the trained model on a fresh base."""

from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
import transformers

import layerwise
from layerwise.train.lalora import LaLoRA, LaLoRATrainerCallback
from layerwise.train import PhaseTimingCallback

pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]


def config() -> transformers.BertConfig:
    return transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64, num_labels=2, pad_token_id=0)


def base() -> transformers.BertForSequenceClassification:
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config()).eval()


def rows(n: int = 32) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (n, 10), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(10, dtype=torch.long),
             "labels": torch.tensor(int(ids[i, 0] > 50))} for i in range(n)]


def test_trainer_with_a_suggestion_la_lora_and_phase_timing(tmp_path: Path) -> None:
    data = rows()
    s = layerwise.suggest(base(), [_stack(data[i:i + 8]) for i in range(0, 32, 8)],
                          metric="gradnorm", k=2, name="tiny-bert")
    model = peft.get_peft_model(base(), s.lora_config(task_type="SEQ_CLS"))
    lalora = LaLoRA(model, s.layers, r_max=8, gamma=2.0)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8,
                                          logging_steps=1, report_to="none", save_strategy="no", use_cpu=True,
                                          disable_tqdm=True, learning_rate=5e-2, seed=0)
    timing = PhaseTimingCallback()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[LaLoRATrainerCallback(lalora), timing])
    trainer.train()
    history = json.loads((tmp_path / "rank_history.json").read_text())
    assert history["steps"] == [0, 1, 2, 3, 4]  # one reallocation after each of the 4 optimizer steps
    assert history["blocks"] == s.layers
    assert [json.loads(line)["step"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()
            if "step" in json.loads(line) and "eval" not in line] == [1, 2, 3, 4]
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    final = dict(zip(history["blocks"], history["ranks"][-1]))
    assert sorted(set(saved["rank_pattern"].values())) == sorted(set(final.values()))
    assert min(final.values()) < 8  # truncated: a reload that ignored the ranks would differ
    # the truncated adapter on a fresh base gives the trained model's outputs
    reloaded = peft.PeftModel.from_pretrained(base(), str(tmp_path / "adapter")).eval()
    model.eval()
    batch = _stack(data[:8])
    batch.pop("labels")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits)


def _stack(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}
