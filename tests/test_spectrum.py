"""Data-free weight metrics (snr, alpha_hill, kappa): each estimator against a direct numpy/scipy computation,
per block on a tiny model and a real MiniLM block, undefined values, the SVD cache, data-free cards and the
stability study's task agreement."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.stats
import torch

from layerwise.card.layer_card import LayerCard
from layerwise.runtime.errors import ConfigError
from layerwise.card.metrics import IMPORTANCE, get_metrics, is_data_free
from layerwise.models.layers import find_layer_stack
from layerwise.card.probe.spectrum import (HILL_MIN_TAIL, ModuleSpectrum, alpha_hill, condition_number, spectral_snr)
from layerwise.card.profiling import profile_layers
from tiny_models import tiny_bert

pytestmark = pytest.mark.usefixtures("one_thread")  # small SVDs: OpenMP threads only wait on each other

F32_EPS = float(np.finfo(np.float32).eps)
WEIGHT_METRICS = ("snr", "alpha_hill", "kappa")


def with_singular_values(s: np.ndarray, m: int, n: int, seed: int = 0) -> np.ndarray:
    """An m x n float64 matrix with exactly the singular values ``s`` (random orthogonal factors)."""
    rng = np.random.default_rng(seed)
    u = scipy.stats.ortho_group.rvs(m, random_state=rng)[:, :len(s)]
    v = scipy.stats.ortho_group.rvs(n, random_state=rng)[:, :len(s)]
    return (u * s) @ v.T


def spectrum_of(w: np.ndarray, name: str = "w", eps: float = F32_EPS) -> ModuleSpectrum:
    return ModuleSpectrum(name, w.shape, np.linalg.svd(w, compute_uv=False), eps)


# -- direct computations (independent of layerwise) ------------------------------------------------------
def snr_direct(w: np.ndarray) -> float:
    s = np.linalg.svd(w, compute_uv=False)
    sigma = scipy.stats.iqr(s) / 1.349
    m, n = w.shape
    edge = sigma * (1 + np.sqrt(min(m, n) / max(m, n)))
    return s[s > edge].sum() / s[s <= edge].sum() / s.max()


def alpha_direct(w: np.ndarray) -> float:
    """Hill's estimator as the maximum-likelihood Pareto fit of the top half of W^T W's eigenvalues."""
    lam = np.sort(np.linalg.eigvalsh(w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T))
    k = len(lam) // 2
    xmin = lam[len(lam) - k - 1]
    shape, _, _ = scipy.stats.pareto.fit(lam[len(lam) - k:], floc=0, fscale=xmin)
    return 1.0 + shape  # density exponent of p(x) ~ x^-alpha is the Pareto shape + 1


# -- estimators on small matrices ------------------------------------------------------------------------------
def test_snr_by_hand_and_against_scipy_iqr() -> None:
    # s = 10, 4, 3, 2, 1 in a 5 x 8 matrix: quartiles 2 and 4, sigma = 2/1.349, edge = sigma (1 + sqrt(5/8))
    # = 2.655, so signal = 10 + 4 + 3 and noise = 2 + 1: snr = 17 / 3 / 10.
    w = with_singular_values(np.array([10.0, 4.0, 3.0, 2.0, 1.0]), 5, 8)
    assert spectral_snr(spectrum_of(w)).value == pytest.approx(17 / 30, rel=1e-9)
    rng = np.random.default_rng(1)
    for m, n in ((12, 12), (20, 7), (40, 90)):
        w = rng.standard_normal((m, n)) + 3 * np.outer(rng.standard_normal(m), rng.standard_normal(n))
        assert spectral_snr(spectrum_of(w)).value == pytest.approx(snr_direct(w), rel=1e-9)
    w = rng.standard_normal((9, 31)) + 3 * np.outer(rng.standard_normal(9), rng.standard_normal(31))
    with np.errstate(divide="ignore"):
        assert snr_direct(w) == np.inf  # every singular value above the edge: Spectrum's ratio is unbounded
    assert spectral_snr(spectrum_of(w)).value is None


def test_alpha_hill_is_the_pareto_mle_of_the_top_half() -> None:
    rng = np.random.default_rng(2)
    for m, n in ((40, 40), (64, 24), (20, 50)):
        w = rng.standard_normal((m, n)) @ np.diag(rng.pareto(2.0, n) + 1)
        est = alpha_hill(spectrum_of(w))
        assert est.value == pytest.approx(alpha_direct(w), rel=1e-6)
        assert est.extra["k"] == min(m, n) // 2


def test_alpha_hill_recovers_a_known_power_law() -> None:
    # eigenvalues drawn from p(x) ~ x^-3 on [1, inf): the top half is again a power law with exponent 3
    lam = np.sort(scipy.stats.pareto.rvs(2.0, size=4000, random_state=3))[::-1]
    spec = ModuleSpectrum("pl", (4000, 4000), np.sqrt(lam), F32_EPS)
    assert alpha_hill(spec).value == pytest.approx(3.0, abs=0.15)  # standard error (alpha - 1)/sqrt(2000) ~ 0.045


def test_kappa_is_numpys_two_norm_condition_number_and_singular_is_capped() -> None:
    rng = np.random.default_rng(4)
    w = rng.standard_normal((30, 18))
    est = condition_number(spectrum_of(w))
    assert est.value == pytest.approx(np.linalg.cond(w), rel=1e-9) and est.extra["singular"] is False
    rank2 = rng.standard_normal((30, 2)) @ rng.standard_normal((2, 18))  # s_3 .. s_18 are rounding noise
    est = condition_number(spectrum_of(rank2))
    assert est.extra["singular"] is True
    assert est.value == pytest.approx(1 / (30 * F32_EPS), rel=1e-9)  # s_min clamped to s_max * max(m, n) * eps


def test_too_small_or_degenerate_modules_are_undefined_with_a_note() -> None:
    rng = np.random.default_rng(5)
    tiny = spectrum_of(rng.standard_normal((3, 5)), "blk.q")
    est = spectral_snr(tiny)
    assert est.value is None and "blk.q (3x5)" in est.note and "at least 4" in est.note
    small = spectrum_of(rng.standard_normal((2 * HILL_MIN_TAIL - 1, 40)), "blk.v")
    est = alpha_hill(small)
    assert est.value is None and "Hill tail fit needs at least 16" in est.note
    assert alpha_hill(spectrum_of(rng.standard_normal((2 * HILL_MIN_TAIL, 40)))).value is not None
    orthogonal = spectrum_of(scipy.stats.ortho_group.rvs(20, random_state=6))  # every eigenvalue 1: no tail
    assert alpha_hill(orthogonal).value is None and "all equal" in alpha_hill(orthogonal).note
    zero = spectrum_of(np.zeros((8, 8)))
    assert spectral_snr(zero).value is None and condition_number(zero).value is None
    assert alpha_hill(zero).value is None
    rank1 = spectrum_of(np.outer(np.arange(1.0, 9.0), np.ones(8)))  # IQR 0: edge 0, no noise bulk
    assert spectral_snr(rank1).value is None and "no noise bulk" in spectral_snr(rank1).note


# -- per block ----------------------------------------------------------------------------------------------
def block_direct(model: torch.nn.Module, roles: tuple[str, ...], fn) -> list[float]:
    """Mean of ``fn`` over each block's linear layers with ``roles``, weights read straight from the model."""
    stack = find_layer_stack(model)
    return [float(np.mean([fn(model.get_submodule(lin.name).weight.detach().double().numpy())
                           for lin in b.by_role(roles)])) for b in stack.blocks]


def test_block_values_are_means_over_targeted_projections_from_one_svd_each(monkeypatch) -> None:
    model = tiny_bert(hidden=32)
    calls = []
    svdvals = torch.linalg.svdvals
    monkeypatch.setattr(torch.linalg, "svdvals",
                        lambda x: calls.append((x.shape, torch.get_num_threads())) or svdvals(x))
    torch.set_num_threads(2)  # the SVDs run on one thread; the process's setting is restored (one_thread resets)
    card = profile_layers(model, [], "weights", targets=("q", "v", "up"), show_progress=False)
    assert torch.get_num_threads() == 2 and {threads for _, threads in calls} == {1}
    assert len(calls) == 2 * 3 == card.probe["weights_modules"]  # 3 modules x 2 blocks, once for 3 metrics
    assert card.values("snr") == pytest.approx(block_direct(model, ("q", "v", "up"), snr_direct), rel=1e-9)
    assert card.values("alpha_hill") == pytest.approx(block_direct(model, ("q", "v", "up"), alpha_direct), rel=1e-6)
    assert card.values("kappa") == pytest.approx(block_direct(model, ("q", "v", "up"), np.linalg.cond), rel=1e-9)
    q0 = "bert.encoder.layer.0.attention.self.query"
    assert card.metrics["snr"]["extras"]["modules"][q0] == pytest.approx(
        snr_direct(model.get_submodule(q0).weight.detach().double().numpy()), rel=1e-9)
    for name in WEIGHT_METRICS:
        assert card.metrics[name]["needs"] == "weights"
        assert card.metrics[name]["stability"] == {"deterministic": True}
    assert card.ranks("kappa") == scipy.stats.rankdata(card.values("kappa")).astype(int).tolist()  # lower first
    assert card.ranks("snr") == scipy.stats.rankdata([-v for v in card.values("snr")]).astype(int).tolist()


def test_undefined_block_is_ranked_last_noted_and_survives_save_load_render(tmp_path) -> None:
    model = tiny_bert(layers=3, hidden=32)
    with torch.no_grad():  # block 1 has all-zero q and v: no metric is defined there
        for lin in ("query", "value"):
            getattr(model.bert.encoder.layer[1].attention.self, lin).weight.zero_()
    card = profile_layers(model, [], "weights", show_progress=False)
    for name in WEIGHT_METRICS:
        values = card.values(name)
        assert values[1] is None and all(math.isfinite(v) for i, v in enumerate(values) if i != 1)
        assert card.ranks(name)[1] == 3 and card.order(name)[-1] == 1
        assert card.importance(name)[1] == 0.0
    assert any("snr undefined at bert.encoder.layer.1.attention.self.query (32x32)" in n for n in card.notes)
    assert any("kappa undefined at block 1 (bert.encoder.layer.1)" in n for n in card.notes)
    files = card.save(tmp_path)
    raw = json.loads(files["json"].read_text())
    assert raw["metrics"]["alpha_hill"]["values"][1] is None
    back = LayerCard.load(tmp_path)
    assert back.values("snr") == card.values("snr") and back.ranks("kappa") == card.ranks("kappa")
    md = files["md"].read_text()
    assert "| 1 | undefined (3) | undefined (3) | undefined (3) |" in md and "- note: snr undefined" in md
    assert files["png"].stat().st_size > 1000


def test_weight_metrics_on_a_real_minilm_block(minilm) -> None:
    card = profile_layers(minilm.model, [], "weights", targets=("q", "v"), show_progress=False)
    att = minilm.model.bert.encoder.layer[2].attention.self
    ws = [m.weight.detach().double().numpy() for m in (att.query, att.value)]
    assert card.values("snr")[2] == pytest.approx(np.mean([snr_direct(w) for w in ws]), rel=1e-9)
    assert card.values("alpha_hill")[2] == pytest.approx(np.mean([alpha_direct(w) for w in ws]), rel=1e-6)
    assert card.values("kappa")[2] == pytest.approx(np.mean([np.linalg.cond(w) for w in ws]), rel=1e-9)
    assert card.notes == [] and card.probe["weights_modules"] == 12


# -- registry, data-free cards, the command, the stability study ---------------------------------------------
def test_metric_groups_and_data_free_check() -> None:
    assert [m.name for m in get_metrics("weights")] == list(WEIGHT_METRICS)
    names = [m.name for m in get_metrics("default,weights")]
    assert names[-3:] == list(WEIGHT_METRICS) and "resnorm" in names
    assert all(IMPORTANCE[n].needs == "weights" for n in WEIGHT_METRICS)
    assert is_data_free("weights") and is_data_free("snr,cost") and not is_data_free("snr,actnorm")
    with pytest.raises(ConfigError, match="unknown metric.*groups all, default, weights"):
        get_metrics("weightz")


def test_list_metrics_shows_the_weight_metrics() -> None:
    from layerwise.commands.card import list_metrics

    rows = {line.split()[0]: line.split() for line in list_metrics().splitlines()[1:-1]}
    assert rows["snr"][1:3] == ["weights", "higher"] and rows["kappa"][1:3] == ["weights", "lower"]
    assert rows["alpha_hill"][1:3] == ["weights", "higher"]


def test_data_free_card_needs_no_task_and_fits_the_task_model(tmp_path, minilm) -> None:
    from layerwise.settings import ProbeSettings
    from layerwise.workflows.card import make_card

    card, files = make_card("minilm", None, tmp_path / "card", probe=ProbeSettings(metrics="weights"), plots=False,
                            show_progress=False)
    assert card.data["task"] is None and card.probe["batches"] == 0 and set(card.metric_names) == set(WEIGHT_METRICS)
    assert "data: none" in files["md"].read_text()
    card.check_model(minilm.fingerprint)  # made without a head, it still fits the classification model
    with pytest.raises(ConfigError, match="--task is needed for the data-driven metric.*actnorm"):
        make_card("minilm", None, tmp_path / "x", probe=ProbeSettings(metrics="snr,actnorm"), plots=False)


@pytest.mark.slow
def test_card_command_with_weights_only_reads_no_data(tmp_path) -> None:
    out = tmp_path / "card"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LAYERWISE_PROGRESS": "0"}
    proc = subprocess.run([sys.executable, "-m", "layerwise", "card", "--model", "minilm", "--metrics", "weights",
                           "--targets", "attn", "--out", str(out), "--no-plots"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "no data" in proc.stdout and "weight spectra" in proc.stdout
    card = LayerCard.load(out)
    assert card.data["task"] is None and card.probe["weights_modules"] == 6 * 4  # q, k, v, o of 6 blocks


def test_stability_table_shows_weight_metrics_agree_across_tasks() -> None:
    from layerwise.evaluate.stability_render import render_stability_md
    from layerwise.workflows.stability import task_agreement

    # seed-averaged importance per task: the weight metric is the same on both tasks (it reads no data)
    means = {"resnorm": {"sst2": [3.0, 1.0, 2.0], "cola": [1.0, 2.0, 3.0]},
             "snr": {"sst2": [0.2, 0.5, 0.1], "cola": [0.2, 0.5, 0.1]}}
    agreement = {n: task_agreement(v) for n, v in means.items()}
    assert agreement["snr"]["sst2 vs cola"] == 1.0
    assert agreement["resnorm"]["sst2 vs cola"] == pytest.approx(scipy.stats.kendalltau([3, 1, 2], [1, 2, 3])[0])
    result = {"model": "m", "seeds": [0, 1], "tasks": {}, "task_agreement": agreement,
              "needs": {"resnorm": "backward", "snr": "weights"}}
    md = render_stability_md(result)
    assert "| snr | weights only | 1.00 |" in md and "| resnorm | data (backward) | -0.33 |" in md


@pytest.mark.slow
def test_real_stability_study_reports_weight_metrics(tmp_path, glue_dir) -> None:
    from layerwise.settings import Calibration as CalibrationSpec
    from layerwise.workflows.stability import stability_study

    tasks = [("sst2", str(glue_dir / "SST-2")), ("cola", str(glue_dir / "CoLA"))]
    result = stability_study("minilm", tasks, tmp_path, seeds=[0, 1], calibration=CalibrationSpec(32, 0, 16, 32),
                             metrics="actnorm,weights")
    assert result["needs"] == {"actnorm": "forward", "snr": "weights", "alpha_hill": "weights", "kappa": "weights"}
    for name in WEIGHT_METRICS:
        assert result["task_agreement"][name]["sst2 vs cola"] == 1.0
        assert result["tasks"]["sst2"]["metrics"][name]["kendall_tau_mean"] == 1.0
