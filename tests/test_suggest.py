"""`layerwise.suggest` on a model the user loaded: any head, a DataLoader or a list of dicts, labels or a loss
function or neither; the README example runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers
from torch.utils.data import DataLoader

import layerwise
from layerwise.adapters.bridge import adapted_modules
from layerwise.models.layers import find_layer_stack

pytestmark = [pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")]
REPO = Path(__file__).resolve().parents[1]


def bert_config() -> transformers.BertConfig:
    return transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64, num_labels=2, pad_token_id=0)


def rows(n: int = 16, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(3, 100, (12,), generator=g), "attention_mask": torch.ones(12, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(n)]


def model_of(cls: type) -> torch.nn.Module:
    torch.manual_seed(0)
    return cls(bert_config()).eval()


def test_a_dataloader_and_a_list_of_dicts_give_the_same_card_and_choice() -> None:
    data = rows()
    loader = DataLoader(data, batch_size=4)
    listed = [batch for batch in DataLoader(data, batch_size=4)]
    a = layerwise.suggest(model_of(transformers.BertForSequenceClassification), loader, metric="resnorm", k=2)
    b = layerwise.suggest(model_of(transformers.BertForSequenceClassification), listed, metric="resnorm", k=2)
    assert a.layers == b.layers and len(a.layers) == 2
    np.testing.assert_allclose(a.card.values("resnorm"), b.card.values("resnorm"), rtol=1e-6)
    assert a.ranks == {i: 8 for i in a.layers}


def test_a_users_loss_function_on_a_base_model_gives_the_heads_own_gradient_metrics() -> None:
    """The classifier's own loss is cross-entropy of its logits; the same loss written by the user on the same
    weights must give the same gradient metrics, through a base model's outputs in a wrapper-free call."""
    data = rows()
    head = model_of(transformers.BertForSequenceClassification)
    own = layerwise.suggest(head, DataLoader(data, batch_size=4), metric="gradnorm", k=2)

    def loss_fn(outputs, batch):
        logits = head.classifier(outputs.pooler_output)  # (B, 2); dropout is off in eval mode
        return torch.nn.functional.cross_entropy(logits, batch["labels"])

    theirs = layerwise.suggest(head.bert, DataLoader(data, batch_size=4), metric="gradnorm", k=2, loss_fn=loss_fn)
    for metric in ("gradnorm", "fisher", "resnorm"):
        np.testing.assert_allclose(theirs.card.values(metric), own.card.values(metric), rtol=1e-4, err_msg=metric)
    assert theirs.layers == own.layers


def test_without_labels_only_forward_metrics_and_the_config_fits_the_model() -> None:
    data = [{k: v for k, v in r.items() if k != "labels"} for r in rows()]
    model = model_of(transformers.BertModel)
    s = layerwise.suggest(model, DataLoader(data, batch_size=8), k=1, targets="all-linear", ranks=None)
    assert set(s.card.metric_names) == {"actnorm", "cka", "act_energy", "cost"}
    assert s.selection.metric == "cka"  # layerwise.settings.defaults.RANKING_METRIC, the best ranking measured
    assert s.layers == [s.card.order("cka")[0]]
    cka = s.card.values("cka")
    assert cka[s.layers[0]] == max(v for v in cka if v is not None)
    shown = repr(s)  # one line (the dataclass's own repr printed the whole card: about 10 KB)
    assert "\n" not in shown and len(shown) < 300 and f"layers={s.layers}" in shown and "metric='cka'" in shown
    wrapped = peft.get_peft_model(model, s.lora_config())
    assert adapted_modules(wrapped) == find_layer_stack(model).target_names(s.layers, "all-linear")


def test_import_layerwise_stays_cheap_and_suggest_is_lazy() -> None:
    code = ("import sys, layerwise; print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules)); "
            "f = layerwise.suggest; print(callable(f), 'layerwise.adapters.suggestion' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO)
    assert out.stdout.split("\n")[:2] == ["[]", "True True False"], out.stderr


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### One call on your own model"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    s, model = scope["s"], scope["peft_model"]
    assert len(s.layers) == 2 and s.selection.metric == "resnorm"
    stack = find_layer_stack(model.get_base_model())
    assert adapted_modules(model) == stack.target_names(s.layers, "q,v")
    saved = peft.LoraConfig.from_pretrained(str(tmp_path / "runs" / "suggestion"))
    assert saved.base_model_name_or_path == "minilm"
    assert (tmp_path / "runs" / "suggestion" / "card" / "card.json").exists()


def test_split_rank_budget_by_hand() -> None:
    from layerwise.runtime.errors import ConfigError
    from layerwise.selection.rank_budget import split_rank_budget

    assert split_rank_budget([1.0, 3.0], 8, r_min=0) == [2, 6]
    assert split_rank_budget([1.0, 1.0, 1.0], 8) == [3, 3, 2]  # 1 each, then 5 by largest remainder
    assert split_rank_budget([0.0, 0.0], 6) == [3, 3]
    assert split_rank_budget([10.0, 0.0, 0.0], 12, r_max=8) == [8, 2, 2]  # capped, the rest shared
    with pytest.raises(ConfigError, match="allowed budgets: 3..24"):
        split_rank_budget([1.0, 2.0, 3.0], 2, r_max=8)


def test_a_rank_budget_becomes_the_per_layer_ranks_of_the_config() -> None:
    model = model_of(transformers.BertForSequenceClassification)
    s = layerwise.suggest(model, DataLoader(rows(), batch_size=4), policy="all", rank_budget=16,
                          rank_metric="act_energy")
    energy = np.array(s.card.importance("act_energy"))
    assert sum(s.ranks.values()) == 16 and s.layers == [0, 1, 2, 3]  # 4 x rank 4: uniform LoRA's parameter count
    order = np.argsort(-energy, kind="stable")
    assert [s.ranks[int(i)] for i in order] == sorted(s.ranks.values(), reverse=True)  # more energy, more rank
    config = s.lora_config()
    wrapped = peft.get_peft_model(model, config)
    got = {n: m.r["default"] for n, m in wrapped.get_base_model().named_modules() if n in adapted_modules(wrapped)}
    stack = find_layer_stack(model)
    assert got == {n: s.ranks[stack.block_of(n)] for n in stack.target_names(s.layers, "q,v")}
