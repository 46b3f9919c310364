"""Reports flag degenerate runs: run's report.md shows the dev size, the majority-class baseline and a warning
at or below it; the bench's majority line is computed on the examples actually scored; report.png is linear
with labelled bars and the baseline; card.png says what its colours mean and writes the values in the cells;
plots.png draws a single evaluation visibly."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from layerwise.evaluate.baseline import at_or_below, scored_majority
from layerwise.evaluate.report import compare, render_report_md, render_report_png
from layerwise.settings import DataSource


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """Every figure saved while the test runs (the PNGs are still written)."""
    figures: list[Figure] = []
    original = Figure.savefig

    def keep(self: Figure, *args, **kwargs):  # type: ignore[no-untyped-def]
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep)
    return figures


def _row(label: str, score: float, params: int) -> dict:
    return {"label": label, "main_metric": "accuracy", "score": score, "metrics": {"accuracy": score},
            "trainable_params": params, "train_seconds": 3.0, "steps": 4, "peak_memory": 2**20,
            "memory_kind": "CPU", "layers": [4, 5], "phase_seconds": {"forward": 1.0, "backward": 1.5,
                                                                      "optimizer": 0.5}}


def test_majority_is_computed_on_the_scored_sample() -> None:
    from layerwise.train.evaluate import eval_sample

    data = DataSource("rotten-tomatoes").load()
    full, sample = scored_majority(data), scored_majority(data, 16)
    assert (full["dev_examples"], full["dev_total"]) == (len(data.dev), len(data.dev))
    assert (sample["dev_examples"], sample["dev_total"]) == (16, len(data.dev))
    counts = Counter(int(e.label) for e in data.train)
    majority_class = min(counts, key=lambda c: (-counts[c], c))
    scored = eval_sample(data.dev, 16)
    by_hand = sum(int(e.label) == majority_class for e in scored) / 16
    assert sample["metrics"]["accuracy"] == by_hand
    assert full["metrics"]["accuracy"] == sum(int(e.label) == majority_class for e in data.dev) / len(data.dev)
    assert sample["metrics"]["accuracy"] != full["metrics"]["accuracy"]  # the sample is not the full dev set


def test_report_md_shows_the_baseline_and_warns_at_or_below_it() -> None:
    majority = {"predictor": "always class 1 (300 of 500 training labels)", "metrics": {"accuracy": 0.6838},
                "dev_examples": 128, "dev_total": 408}
    uniform = _row("uniform LoRA", 0.6838, 1000)
    rows = compare([_row("pareto", 0.75, 500), uniform], uniform)
    text = render_report_md(rows, {"model": "minilm", "task": "mrpc", "selection": "x", "majority": majority})
    assert "- dev set: 128 examples scored (of 408)" in text
    assert "- majority-class baseline (always class 1 (300 of 500 training labels)): accuracy 0.6838" in text
    warnings = [line for line in text.splitlines() if "warning" in line]
    assert warnings == ["- **warning: uniform LoRA scores at or below the majority-class baseline (accuracy "
                        "0.6838 <= 0.6838): it has not learned the task; train longer (--steps) or check --lr**"]
    assert at_or_below(0.5, majority, "accuracy") and not at_or_below(0.69, majority, "accuracy")
    assert not at_or_below(None, majority, "accuracy") and not at_or_below(0.1, None, "accuracy")


def test_report_png_is_linear_with_labelled_bars_and_the_baseline(tmp_path: Path, drawn: list) -> None:
    uniform = _row("uniform LoRA", 0.5, 37_634)
    rows = compare([_row("pareto", 0.75, 18_000), uniform], uniform)
    render_report_png(rows, tmp_path / "report.png", {"metrics": {"accuracy": 0.6838}})
    assert (tmp_path / "report.png").stat().st_size > 0
    score_ax, params_ax, time_ax = drawn[-1].axes[:3]
    assert [ax.get_yscale() for ax in (score_ax, params_ax, time_ax)] == ["linear"] * 3
    assert score_ax.get_ylim()[0] == 0 and params_ax.get_ylim()[0] == 0
    texts = [t.get_text() for ax in drawn[-1].axes for t in ax.texts]
    for shown in ("0.7500", "0.5000", "18,000", "37,634", "3.0 s", "majority class 0.6838"):
        assert shown in texts, shown
    assert [line.get_ydata()[0] for line in score_ax.lines] == [0.6838]


def test_card_png_names_its_scale_and_writes_each_value(tmp_path: Path, drawn: list) -> None:
    from layerwise.card.layer_card import LayerCard, metric_entry
    from layerwise.card.metrics import IMPORTANCE
    from layerwise.card.render import normalised_matrix, render_png

    card = LayerCard(model={"name": "tiny"}, data={}, layers=[{"index": i} for i in range(4)], probe={},
                     metrics={"actnorm": metric_entry([1.0, 4.0, 2.0, 3.0], IMPORTANCE["actnorm"].info(), None, {})})
    render_png(card, tmp_path / "card.png")
    heat = drawn[-1].axes[0]
    assert "1 = that metric's most important layer, 0 = its least" in heat.get_title()
    colorbar = next(ax for ax in drawn[-1].axes if ax.get_ylabel().startswith("scaled importance"))
    assert colorbar.get_ylabel() == "scaled importance (1 = most important)"
    _, rows = normalised_matrix(card)
    assert [t.get_text() for t in heat.texts] == [f"{v:.2f}" for v in rows[0]] == ["0.00", "1.00", "0.33", "0.67"]


def test_plots_png_draws_a_single_evaluation_as_a_labelled_bar(tmp_path: Path, drawn: list) -> None:
    from layerwise.train.plots import plot_training

    log = tmp_path / "train_log.jsonl"
    lines = [{"step": s, "loss": 1.0 / s} for s in (1, 2, 3)] + [{"step": 3, "eval": {"accuracy": 0.625}}]
    log.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    plot_training(log, tmp_path / "plots.png", "accuracy")
    metric_ax = drawn[-1].axes[1]
    assert len(metric_ax.patches) == 1 and metric_ax.patches[0].get_height() == 0.625
    assert [t.get_text() for t in metric_ax.texts] == ["0.6250 at step 3"]
    lines.append({"step": 6, "eval": {"accuracy": 0.75}})
    log.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    plot_training(log, tmp_path / "plots.png", "accuracy")
    metric_ax = drawn[-1].axes[1]
    assert not metric_ax.patches and list(metric_ax.lines[0].get_ydata()) == [0.625, 0.75]
