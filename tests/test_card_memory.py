"""The card's memory plan (layerwise.card.probe.plan): exact statistics when they fit --max-stat-memory, the residual
gradient as a Gaussian projection with a stated error bound when not, blocks in groups over several passes when
even that does not fit; and torch.compile'd models."""

from __future__ import annotations

import gc
import math

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import layerwise
from layerwise.card.layer_card import LayerCard
from layerwise.card.render import render_markdown
from layerwise.runtime.errors import ConfigError
from layerwise.models.layers import find_layer_stack
from layerwise.card.probe.plan import plan_statistics, projected_peak
from layerwise.card.profiling import profile_layers

from numerics import assert_within_fp32_spread
from test_probe import make_batches, tiny_bert

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def hand_norm_bound(k: int, delta: float = 0.05) -> float:
    """1 - sqrt(1 - eps) with eps = sqrt(8 ln(2/delta) / k), written out (Roosta-Khorasani and Ascher, Thm 3)."""
    return 1 - math.sqrt(1 - math.sqrt(8 * math.log(2 / delta) / k))


def test_plan_by_hand() -> None:
    """hidden 256, 4 blocks, input_cov + out_grad: 12 bytes per entry; the projection S is 256 x k float32."""
    stats = ("input_cov", "out_grad")
    exact = 4 * 2 * 256 * 256 * 12  # 6291456
    plan = plan_statistics(4, 256, stats, exact)
    assert plan.exact and plan.passes == 1 and plan.bytes() == exact
    plan = plan_statistics(4, 256, stats, 5_000_000)  # k=128: 4 * (786432 + 393216) + 131072 = 4849664
    assert plan.sketch_dim == 128 and plan.passes == 1 and plan.bytes() == 4_849_664
    # k=64 (983040 per block + 65536) needs two passes of two blocks; k=128 (1179648 per block + 131072) too, so k=128
    plan = plan_statistics(4, 256, stats, 2_500_000)
    assert plan.sketch_dim == 128 and plan.groups == [[0, 1], [2, 3]] and plan.bytes() == 2 * 1179648 + 131072
    with pytest.raises(ConfigError, match="--max-stat-memory"):
        plan_statistics(4, 256, stats, 1_000_000)  # one block at k=64 needs 1048576 bytes
    # coupling keeps every block's whitened signal over the passes (4 x k x 256 x 4 bytes): k=64 still fits two
    # blocks a pass (2 x 983040 + 65536 + 262144), k=128 only one (1179648 + 131072 + 524288): k=64
    plan = plan_statistics(4, 256, stats, 2_500_000, cross_block=True)
    assert plan.sketch_dim == 64 and plan.groups == [[0, 1], [2, 3]] and plan.bytes() == 2_293_760


def test_projected_peak_llama3_8b_statistics() -> None:
    """Llama-3-8B shapes: the exact (d x d) statistics of the default card are 5 per block (3 pooled,
    input_cov, out_grad) x 32 blocks x 4096^2 x 12 bytes; the default 2 GiB budget brings them under 2 GiB."""
    shapes = dict(hidden=4096, num_blocks=32, mlp=14336, kv_dim=1024, vocab=128256, dtype_bytes=2)
    stats = ("out_norm", "pooled", "input_cov", "out_grad", "param_grad")
    exact = projected_peak(**shapes, statistics=stats)
    assert exact["statistics"] == 5 * 32 * 4096 * 4096 * 12
    lean = projected_peak(**shapes, statistics=stats, budget=2 << 30)
    assert lean["statistics"] <= 2 << 30 and lean["passes"] > 1
    assert lean["weights"] == exact["weights"] == (32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 8192)
                                                   + 2 * 128256 * 4096) * 2


# -- a tiny-random Llama with Llama-3-8B's widths, 2 blocks -------------------------------------------------------
@pytest.fixture(scope="module")
def wide_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                      num_hidden_layers=2, vocab_size=128, max_position_embeddings=32)
    model = LlamaForCausalLM(cfg).eval()
    yield model
    del model
    gc.collect()


def wide_batches() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(2):
        ids = torch.randint(3, 128, (2, 6), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def direct_resnorm(model: torch.nn.Module, batches: list[dict]) -> list[float]:
    """||G M^{-1/2}||_F per block, from the captured block inputs x and output gradients g, in float64:
    G = (1/B) sum_b g_b^T x_b = A^T X, M = X^T X / N + lambda I (lambda = max(1e-3 tr/d, 1e-6 tr) of X^T X / N),
    so ||G M^{-1/2}||^2 = tr(A A^T X M^{-1} X^T) with X M^{-1} X^T = (K - K (N lambda I + K)^{-1} K) / lambda,
    K = X X^T (Woodbury: N x N matrices only)."""
    stack = find_layer_stack(model)
    xs, gs = [[] for _ in stack.blocks], [[] for _ in stack.blocks]
    for batch in batches:
        store: dict = {}
        hooks = [b.module.register_forward_pre_hook(lambda m, a, kw, i=b.index: store.__setitem__(("x", i), a[0] if a else kw["hidden_states"]), with_kwargs=True)
                 for b in stack.blocks]
        hooks += [b.module.register_forward_hook(lambda m, a, o, i=b.index: store.__setitem__(("h", i), o[0] if isinstance(o, tuple) else o))
                  for b in stack.blocks]
        loss = model(**batch).loss
        for h in hooks:
            h.remove()
        hs = [store[("h", b.index)] for b in stack.blocks]
        grads = torch.autograd.grad(loss, hs)
        for b, g in zip(stack.blocks, grads):
            xs[b.index].append(store[("x", b.index)].detach().reshape(-1, 4096).double())
            gs[b.index].append(g.reshape(-1, 4096).double() / len(batches))
    out = []
    for x, a in zip(xs, gs):
        X, A = torch.cat(x).numpy(), torch.cat(a).numpy()
        n, d = X.shape
        K = X @ X.T
        tr = np.trace(K) / n  # trace of X^T X / N
        lam = max(1e-3 * tr / d, 1e-6 * tr)
        P = (K - K @ np.linalg.solve(n * lam * np.eye(n) + K, K)) / lam
        out.append(math.sqrt(np.trace(P @ (A @ A.T))))
    return out


def test_wide_llama_sketched_resnorm_within_stated_bound(wide_llama, tmp_path) -> None:
    """2 blocks of width 4096: exact input_cov + out_grad need 805 MB; a 480 MB budget projects the residual
    gradient to k=512 (one pass), and resnorm stays within the recorded bound of the exact value."""
    batches = wide_batches()
    card = profile_layers(wide_llama, batches, "resnorm,actnorm", max_stat_memory=480_000_000, n_boot=10,
                          show_progress=False)
    exact = direct_resnorm(wide_llama, batches)
    bound = hand_norm_bound(512)
    entry = card.metrics["resnorm"]["extras"]
    assert entry["representation"] == "gaussian_projection(k=512)"
    assert entry["error_bound"] == pytest.approx(bound, rel=1e-12)
    for got, want in zip(card.values("resnorm"), exact):
        assert abs(got - want) <= bound * want
        assert got != pytest.approx(want, rel=1e-6)  # a projection, not the exact value
    # what the card records: the plan in probe (and card.json), a line in card.md
    plan = card.probe["stat_plan"]
    assert plan["statistics"]["out_grad"] == {"representation": "gaussian_projection", "shape": [512, 4096],
                                              "seed": 1234}
    assert plan["statistics"]["input_cov"]["representation"] == "exact" and plan["passes"] == 1
    assert card.probe["metric_statistics"]["actnorm"] == {"representation": "exact", "error_bound": 0.0}
    card.save(tmp_path, plots=False)
    again = LayerCard.load(tmp_path / "card.json")
    assert again.probe["metric_statistics"]["resnorm"]["error_bound"] == pytest.approx(bound)
    md = render_markdown(card)
    assert "- statistics: input_cov: exact, out_grad: gaussian_projection (k=512); 1 pass(es)" in md
    assert f"resnorm within {bound:.3g} (relative" in md


# -- blocks in groups over several passes ---------------------------------------------------------------------------
def llama(hidden: int, layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(3)
    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=2 * hidden, vocab_size=120, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def assert_same_card(a, b, names) -> None:
    for name in names:
        assert np.allclose(a.values(name), b.values(name), rtol=1e-5, atol=0), name
        sa, sb = a.metrics[name]["stability"], b.metrics[name]["stability"]
        assert sa["kendall_tau_mean"] == pytest.approx(sb["kendall_tau_mean"], rel=1e-6), name


def test_groups_over_passes_equal_one_pass() -> None:
    """hidden 32 (too narrow to project), 24 examples: per block, CKA's pooled rows 2 x 24 x 32 x 8 = 12288 bytes
    (its Grams would be 3 x 32^2 x 12 = 36864), input_cov and out_grad 32^2 x 12 = 12288 each; an 80000-byte
    budget holds 2 of the 3 blocks, so 2 passes; every value and its per-batch stability equal one pass's."""
    model, batches = llama(32), make_batches(causal=True)
    names = "actnorm,cka,act_energy,gradnorm,resnorm"
    one = profile_layers(model, batches, names, n_boot=20, show_progress=False)
    two = profile_layers(model, batches, names, n_boot=20, max_stat_memory=80_000, show_progress=False)
    assert two.probe["stat_plan"]["statistics"]["pooled"] == {"representation": "pooled_rows", "shape": [24, 32]}
    assert one.probe["stat_plan"]["passes"] == 1 and two.probe["stat_plan"]["passes"] == 2
    assert two.probe["stat_plan"]["groups"] == [[0, 1], [2, 2]]
    assert two.metrics["cka"]["extras"]["passes"] == 2
    assert_same_card(one, two, names.split(","))
    assert len(two.metrics["act_energy"]["extras"]["condition_number"]) == 3


def test_cka_from_pooled_rows_equals_the_gram_form() -> None:
    """Budget below the pooled Grams (3 blocks x 36864 bytes) but above the rows (3 x 12288): CKA in kernel form
    from the 24 examples' pooled vectors, exact: the same values as the Grams', and as centred CKA written out."""
    from test_probe import centred_cka, direct_statistics

    model, batches = llama(32), make_batches(causal=True)
    grams = profile_layers(model, batches, "cka", n_boot=20, show_progress=False)
    rows = profile_layers(model, batches, "cka", n_boot=20, max_stat_memory=60_000, show_progress=False)
    assert grams.probe["stat_plan"]["statistics"]["pooled"]["representation"] == "exact"
    assert rows.probe["stat_plan"]["statistics"]["pooled"]["representation"] == "pooled_rows"
    assert rows.probe["stat_plan"]["passes"] == 1
    assert rows.probe["metric_statistics"]["cka"]["error_bound"] == 0.0
    acc = direct_statistics(model, batches, "last")
    # the kernel form on the pooled rows and the Gram form are two fp32 computations of one CKA: the kernel
    # form is as close to the float64 value as the Gram form is
    for i, (got, gram_form) in enumerate(zip(rows.values("cka"), grams.values("cka"))):
        want = 1 - centred_cka(torch.cat(acc["px"][i]).detach(), torch.cat(acc["ph"][i]).detach())
        assert_within_fp32_spread(got, gram_form, want, f"cka[{i}]")
    sa, sb = grams.metrics["cka"]["stability"], rows.metrics["cka"]["stability"]
    assert sa["kendall_tau_mean"] == pytest.approx(sb["kendall_tau_mean"], rel=1e-6)


def test_sketch_in_groups_equals_sketch_in_one_pass() -> None:
    """hidden 128 with the residual gradient projected to k=64 (the same seeded S): one pass or one block per pass
    give the same resnorm."""
    model, batches = llama(128), make_batches(causal=True)
    one = profile_layers(model, batches, "resnorm", n_boot=20, sketch_dim=64, show_progress=False)
    per_block = 128 * 128 * 12 + 64 * 128 * 12
    three = profile_layers(model, batches, "resnorm", n_boot=20, sketch_dim=64, show_progress=False,
                           max_stat_memory=per_block + 128 * 64 * 4)
    assert three.probe["stat_plan"]["passes"] == 3 and one.probe["stat_plan"]["passes"] == 1
    assert_same_card(one, three, ["resnorm"])
    exact = profile_layers(model, batches, "resnorm", n_boot=20, show_progress=False)
    assert not np.allclose(exact.values("resnorm"), one.values("resnorm"), rtol=1e-6)


def test_coupling_in_groups_equals_one_pass() -> None:
    """coupling compares every pair of blocks: over 2 passes (hidden 32: 2 x 12288 bytes per block, 12288 kept for
    all 3 blocks' whitened signals) its matrix and values equal one pass's."""
    model, batches = llama(32), make_batches(causal=True)
    one = profile_layers(model, batches, "coupling,resnorm", show_progress=False)
    two = profile_layers(model, batches, "coupling,resnorm", max_stat_memory=62_000, show_progress=False)
    assert one.probe["stat_plan"]["passes"] == 1 and two.probe["stat_plan"]["groups"] == [[0, 1], [2, 2]]
    assert np.allclose(one.values("coupling"), two.values("coupling"), rtol=1e-5)
    assert np.allclose(one.metrics["coupling"]["extras"]["matrix"], two.metrics["coupling"]["extras"]["matrix"],
                       rtol=1e-5)
    assert_same_card(one, two, ["resnorm"])


# -- torch.compile ---------------------------------------------------------------------------------------------------
def test_compiled_model_is_probed_through_its_original_module() -> None:
    """A torch.compile wrapper (never run: wrapping is lazy) is unwrapped by profile_layers, and refused in one line
    by run_probe, which hooks the module it is given."""
    from layerwise.card.probe.runner import run_probe

    model, batches = tiny_bert(), make_batches()
    plain = profile_layers(model, batches, "actnorm,act_energy", n_boot=10, show_progress=False)
    compiled = torch.compile(model)
    card = profile_layers(compiled, batches, "actnorm,act_energy", n_boot=10, show_progress=False)
    for name in ("actnorm", "act_energy"):
        assert card.values(name) == plain.values(name)
    with pytest.raises(ConfigError, match="torch.compile'd model.*_orig_mod"):
        run_probe(compiled, find_layer_stack(model), batches, ["out_norm"], show_progress=False)
    suggested = layerwise.suggest(compiled, batches, policy="top-k", k=1, show_progress=False)
    assert suggested.card.values("actnorm") == plain.values("actnorm")


def test_run_probe_refuses_a_budget_that_needs_several_passes() -> None:
    """run_probe makes one pass: 3 blocks of input_cov at 32^2 x 12 bytes need 36864; 20000 holds one block."""
    from layerwise.card.probe.runner import run_probe

    model = llama(32)
    with pytest.raises(ConfigError, match=r"--max-stat-memory 20000 bytes holds the statistics of 1 of the 3 blocks"):
        run_probe(model, find_layer_stack(model), make_batches(causal=True), ["input_cov"], max_stat_memory=20_000,
                  show_progress=False)
