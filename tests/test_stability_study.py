"""`layerwise stability`: seed agreement, task agreement, score correlation, and a small real study."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import kendalltau, pearsonr, spearmanr

from layerwise.commands.stability import StabilityOptions
from layerwise.runtime.errors import ConfigError
from layerwise.workflows.stability import score_correlation, seed_agreement, task_agreement


def test_identical_rankings_agree_perfectly() -> None:
    s = seed_agreement([[0.1, 0.5, 0.3, 0.2]] * 4)
    assert s["kendall_tau_mean"] == 1.0 and s["kendall_tau_std"] == 0.0 and s["pairs"] == 6
    assert all(v == 1.0 for v in s["top_k_jaccard"].values()) and set(s["top_k_jaccard"]) == {"1", "2", "3", "4"}


def test_seed_agreement_is_the_mean_over_pairs() -> None:
    rng = np.random.default_rng(0)
    runs = rng.normal(size=(5, 8))
    s = seed_agreement(runs)
    taus = [kendalltau(runs[a], runs[b]).statistic for a in range(5) for b in range(a + 1, 5)]
    assert s["kendall_tau_mean"] == pytest.approx(np.mean(taus)) and s["kendall_tau_std"] == pytest.approx(np.std(taus))
    assert s["top_k_jaccard"]["8"] == 1.0


def test_task_agreement_and_score_correlation() -> None:
    agree = task_agreement({"a": [1, 2, 3], "b": [1, 2, 3], "c": [3, 2, 1]})
    assert agree == {"a vs b": 1.0, "a vs c": -1.0, "b vs c": -1.0}
    x, y = [0.1, 0.4, 0.2, 0.9], [0.5, 0.7, 0.6, 0.8]
    c = score_correlation(x, y)
    assert c["pearson"] == pytest.approx(pearsonr(x, y).statistic)
    assert c["spearman"] == pytest.approx(spearmanr(x, y).statistic)
    assert c["cosine"] == pytest.approx(np.dot(x, y) / np.linalg.norm(x) / np.linalg.norm(y))
    flat = score_correlation(x, [0.5] * 4)  # every single-layer run at the same score: undefined, not 0
    assert set(flat.values()) == {None}


def test_seed_flag() -> None:
    assert StabilityOptions(calibration_seeds="0-3,7").calibration_seeds == (0, 1, 2, 3, 7)
    with pytest.raises(ConfigError, match="--calibration-seeds"):
        StabilityOptions(calibration_seeds="x")
    with pytest.raises(ConfigError, match="at least two"):
        StabilityOptions(calibration_seeds="3")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_small_real_study_with_ablation(tmp_path, glue_dir) -> None:
    from layerwise.evaluate.stability_render import write_stability
    from layerwise.train import TrainConfig
    from layerwise.settings import Calibration as CalibrationSpec
    from layerwise.workflows.stability import stability_study

    tasks = [("sst2", str(glue_dir / "SST-2")), ("cola", str(glue_dir / "CoLA"))]
    kwargs = dict(seeds=[0, 1, 2], calibration=CalibrationSpec(32, 0, 16, 64), metrics="actnorm,gradnorm,cka")
    result = stability_study("minilm", tasks[:1], tmp_path, **kwargs,
                             ablation_config=TrainConfig(steps=2, max_length=64, eval_max_examples=32))
    entry = result["tasks"]["sst2"]
    assert entry["layers"] == 6 and set(entry["metrics"]) == {"actnorm", "gradnorm", "cka"}
    assert -1 <= entry["metrics"]["actnorm"]["kendall_tau_mean"] <= 1
    assert len(entry["ablation_scores"]) == 6 and set(entry["correlation"]["cka"]) == {
        "pearson", "spearman", "kendall", "cosine"}
    assert (tmp_path / "cards" / "sst2-seed2" / "card.json").exists()
    again = stability_study("minilm", tasks, tmp_path, **kwargs)  # sst2 cards reused, cola added
    assert "sst2 vs cola" in again["task_agreement"]["actnorm"]
    files = write_stability(tmp_path, again)
    assert json.loads(files["json"].read_text())["schema_version"] == 1
    assert "Kendall tau" in files["md"].read_text() and files["png"].stat().st_size > 1000
    assert all(math.isfinite(v) for v in again["mean_importance"]["gradnorm"]["cola"])
