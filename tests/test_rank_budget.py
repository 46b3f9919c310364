"""Card-driven per-layer ranks from the command line (`--rank-budget`, `--rank-metric`): the ranks `layerwise
train` trains with are the budget split by the card's metric, read here from card.json and the saved adapter's
tensors; the parameter count equals uniform rank at budget / layers; `export` writes the same ranks; the bench
method `energy-ranks` sizes its budget as --rank x blocks."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from layerwise.cli import main
from layerwise.selection.rank_budget import split_rank_budget

LAYERS, K, BUDGET = 4, 3, 12


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 4-block BERT (hidden 32) saved with the bundled MiniLM's tokenizer files; block i's output LayerNorm
    scales by i + 1, so the blocks' activation metrics differ clearly (a random BERT's are nearly equal)."""
    import torch
    from tiny_models import tiny_bert

    from layerwise.models.resolve import resolve_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    bert = tiny_bert(vocab_size=30522, layers=LAYERS).bert
    with torch.no_grad():
        for i, block in enumerate(bert.encoder.layer):
            block.output.LayerNorm.weight.fill_(1.0 + i)
    bert.save_pretrained(out)
    source = Path(resolve_model("minilm").path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, out / name)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    path = tmp_path_factory.mktemp("data") / "small.csv"
    rows = [f"sentence {i} is {'good' if i % 2 else 'bad'} and {'long ' * (i % 5)},{i % 2}" for i in range(40)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return ["--task", "csv", "--data", str(path)]


@pytest.fixture(scope="module")
def card(tiny_model: Path, data: list[str], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("card") / "card"
    assert main(["card", "--model", str(tiny_model), *data, "--metrics", "actnorm,act_energy",
                 "--samples", "16", "--batch-size", "8", "--out", str(out)]) == 0
    return out


def trained_ranks(run: Path) -> dict[int, int]:
    """Block -> LoRA rank, from the shapes of the saved lora_A tensors (r x in_features); one rank per block."""
    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    ranks: dict[int, set[int]] = {}
    for name, array in tensors.items():
        if "lora_A" in name:
            block = int(re.search(r"layer\.(\d+)\.", name)[1])
            ranks.setdefault(block, set()).add(array.shape[0])
    assert all(len(r) == 1 for r in ranks.values()), ranks  # q and v of a block share its rank
    return {b: r.pop() for b, r in sorted(ranks.items())}


def train(tiny_model: Path, data: list[str], card: Path, out: Path, *extra: str) -> dict:
    args = ["train", "--model", str(tiny_model), *data, "--card", str(card), "--policy", "top-k", "--metric",
            "actnorm", "--k", str(K), "--steps", "2", "--batch-size", "4", "--eval-max-examples", "8",
            "--out", str(out), *extra]
    assert main(args) == 0
    return json.loads((out / "metrics.json").read_text())


def test_cli_trains_the_budget_split_by_the_card_metric_at_uniform_rank_parameter_count(
        tiny_model: Path, data: list[str], card: Path, tmp_path: Path) -> None:
    metrics = json.loads((card / "card.json").read_text())["metrics"]
    actnorm, energy = (np.array(metrics[m]["values"], dtype=float) for m in ("actnorm", "act_energy"))
    chosen = sorted(int(i) for i in np.argsort(-actnorm, kind="stable")[:K])  # top-k by actnorm, by hand
    assert chosen == [1, 2, 3]  # the LayerNorm scales order the blocks' outputs
    expected = dict(zip(chosen, split_rank_budget(list(energy[chosen]), BUDGET)))  # act_energy: higher is better
    assert sum(expected.values()) == BUDGET and len(set(expected.values())) == K  # not uniform by accident
    # block i's input is block i-1's output, scaled by i: energies about 1 : 4 : 9, so 1 each + 9 split 0.6/2.6/5.8
    assert list(expected.values()) == [2, 3, 7]

    budget = train(tiny_model, data, card, tmp_path / "budget", "--rank-budget", str(BUDGET),
                   "--rank-metric", "act_energy")
    assert trained_ranks(tmp_path / "budget") == expected
    record = json.loads((tmp_path / "budget" / "selection.json").read_text())["adapter"]
    assert record["ranks"] == {str(b): r for b, r in expected.items()}
    assert record["rank_budget"] == BUDGET and record["rank_metric"] == "act_energy"

    uniform = train(tiny_model, data, card, tmp_path / "uniform", "--rank", str(BUDGET // K))
    assert trained_ranks(tmp_path / "uniform") == {b: BUDGET // K for b in chosen}
    # q and v are 32 x 32 in every block: sum_i r_i (32 + 32) x 2 = 12 x 128 either way, plus the same head
    assert budget["trainable_params"] == uniform["trainable_params"]
    head = 32 * 2 + 2  # the classifier, trained in both
    assert budget["trainable_params"] == BUDGET * 2 * (32 + 32) + head

    # export: from the card with the same flags (default --rank-metric: the policy's, here actnorm) and from the run
    assert main(["export", "--card", str(card), "--policy", "top-k", "--metric", "actnorm", "--k", str(K),
                 "--rank-budget", str(BUDGET), "--rank-metric", "act_energy", "--format", "json",
                 "--out", str(tmp_path / "e1")]) == 0
    assert main(["export", "--from-run", str(tmp_path / "budget"), "--format", "json",
                 "--out", str(tmp_path / "e2")]) == 0
    for folder in ("e1", "e2"):
        exported = json.loads((tmp_path / folder / "selection.json").read_text())
        assert exported["ranks"] == {str(b): r for b, r in expected.items()}, folder
    assert main(["export", "--card", str(card), "--policy", "top-k", "--metric", "actnorm", "--k", str(K),
                 "--rank-budget", str(BUDGET), "--format", "json", "--out", str(tmp_path / "e3")]) == 0
    by_actnorm = dict(zip(chosen, split_rank_budget(list(actnorm[chosen]), BUDGET)))
    assert by_actnorm != expected
    assert json.loads((tmp_path / "e3" / "selection.json").read_text())["ranks"] == \
        {str(b): r for b, r in by_actnorm.items()}


def test_run_splits_the_budget_for_the_selection_and_keeps_rank_for_uniform_lora(tiny_model: Path, data: list[str],
                                                                                 tmp_path: Path) -> None:
    """`layerwise run --rank-budget`: the selected run's ranks are the budget split by its own card's metric (the
    policy's, actnorm, without --rank-metric); its uniform baseline is --rank on every block."""
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_model), *data, "--policy", "top-k", "--metric", "actnorm", "--k", str(K),
                 "--metrics", "actnorm,act_energy", "--samples", "16", "--rank-budget", str(BUDGET), "--steps", "2",
                 "--batch-size", "4", "--eval-max-examples", "8", "--out", str(out)]) == 0
    actnorm = np.array(json.loads((out / "card" / "card.json").read_text())["metrics"]["actnorm"]["values"])
    chosen = sorted(int(i) for i in np.argsort(-actnorm, kind="stable")[:K])
    expected = dict(zip(chosen, split_rank_budget(list(actnorm[chosen]), BUDGET)))
    assert len(set(expected.values())) > 1  # not --rank, nor budget / k, by accident
    assert trained_ranks(out / "selected") == expected
    assert trained_ranks(out / "uniform") == {b: 8 for b in range(LAYERS)}


@pytest.mark.parametrize("extra, words", [
    (["--rank-budget", "2"], "--rank-budget 2 cannot give 3 layers ranks in [1, 2]"),
    (["--rank-budget", "12", "--rank-metric", "resnorm"], "--rank-metric 'resnorm' is not on this card"),
    (["--rank-budget", "12", "--ranks", "1:4"], "--rank-budget and --ranks exclude each other"),
    (["--rank-metric", "act_energy"], "give --rank-budget too"),
    (["--rank-budget", "12", "--method", "ia3"], "--rank-budget needs per-layer ranks"),
])
def test_bad_budgets_are_one_line_errors_naming_the_flag(card: Path, tmp_path: Path, capsys, extra: list[str],
                                                          words: str) -> None:
    code = main(["export", "--card", str(card), "--policy", "top-k", "--metric", "actnorm", "--k", str(K),
                 *extra, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_energy_ranks_bench_method_has_uniform_lora_total_rank() -> None:
    from layerwise.bench import BenchSettings, build_cell
    from layerwise.train import TrainConfig

    job = build_cell("energy-ranks", 0, TrainConfig(steps=3), BenchSettings(rank=8, card="c.json", num_layers=6))
    assert job.selection.policy == "all" and job.selection.card == "c.json"
    assert job.adapter.rank_budget == 48 and job.adapter.rank_metric == "act_energy" and job.adapter.rank == 8
