"""Each Layer Card metric against a direct computation on a tiny model (stored activations, autograd)."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from layerwise.runtime.errors import ConfigError, DataError
from layerwise.card.metrics import IMPORTANCE, get_metrics, ridge_for
from layerwise.models.layers import find_layer_stack
from layerwise.card.profiling import NonFiniteMetricError, profile_layers

from numerics import assert_within_fp32_spread
from tiny_models import tiny_bert as shared_tiny_bert

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def tiny_bert() -> torch.nn.Module:
    return shared_tiny_bert(120, layers=3, seed=1, max_positions=64).eval()


def tiny_llama() -> torch.nn.Module:
    torch.manual_seed(2)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=120, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def make_batches(n_batches: int = 4, bs: int = 6, causal: bool = False, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        lengths = torch.randint(4, 12, (bs,), generator=g)
        T = int(lengths.max())
        ids = torch.randint(3, 120, (bs, T), generator=g)
        mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
        ids = ids * mask
        if causal:
            labels = ids.masked_fill(mask == 0, -100)
        else:
            labels = torch.randint(0, 2, (bs,), generator=g)
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def direct_statistics(model: torch.nn.Module, batches: list[dict], pooling: str) -> dict:
    """Store every block's input/output (with grads) and compute the metrics the slow, obvious way."""
    stack = find_layer_stack(model)
    L = len(stack)
    store: dict[int, dict] = {}

    def pre(i):
        def hook(mod, args, kwargs):
            store[i]["x"] = args[0] if args else kwargs["hidden_states"]
        return hook

    def post(i):
        def hook(mod, args, out):
            h = out[0] if isinstance(out, tuple) else out
            h.retain_grad()
            store[i]["h"] = h
        return hook

    def proj(i, kind):
        def hook(mod, args, out):
            store[i][kind] = out.detach()
        return hook

    handles = []
    for b in stack.blocks:
        handles.append(b.module.register_forward_pre_hook(pre(b.index), with_kwargs=True))
        handles.append(b.module.register_forward_hook(post(b.index)))
        for kind in ("q", "v"):
            (lin,) = b.by_role((kind,))
            handles.append(model.get_submodule(lin.name).register_forward_hook(proj(b.index, kind)))
    weights = {b.index: [model.get_submodule(l.name).weight for l in b.linears] for b in stack.blocks}
    acc = {k: [[] for _ in range(L)] for k in ("norm", "q", "v", "px", "ph", "x", "G", "gn", "fi", "ta")}
    for batch in batches:
        store.update({i: {} for i in range(L)})
        out = model(**batch)
        flat = [w for i in range(L) for w in weights[i]]
        hs = [store[i]["h"] for i in range(L)]
        grads = torch.autograd.grad(out.loss, flat + hs)
        wg, hg = grads[: len(flat)], grads[len(flat):]
        mask = batch["attention_mask"].bool()
        k = 0
        for i in range(L):
            x, h = store[i]["x"].detach(), store[i]["h"].detach()
            acc["norm"][i].append(h.norm(dim=-1)[mask])
            for kind in ("q", "v"):
                acc[kind][i].append(store[i][kind].norm(dim=-1)[mask])
            acc["x"][i].append(x[mask])
            idx = mask.long().sum(1) - 1 if pooling == "last" else torch.zeros(mask.shape[0], dtype=torch.long)
            rows = torch.arange(mask.shape[0])
            acc["px"][i].append(x[rows, idx])
            acc["ph"][i].append(h[rows, idx])
            g = hg[i]
            acc["G"][i].append(g.reshape(-1, g.shape[-1]).double().T @ x.reshape(-1, x.shape[-1]).double())
            gs = wg[k: k + len(weights[i])]
            ws = weights[i]
            k += len(ws)
            sq = sum(float(t.double().pow(2).sum()) for t in gs)
            n = sum(t.numel() for t in gs)
            acc["gn"][i].append(math.sqrt(sq))
            acc["fi"][i].append(sq / n)
            acc["ta"][i].append(abs(sum(float((w.detach().double() * t.double()).sum()) for w, t in zip(ws, gs))))
    for h in handles:
        h.remove()
    return acc


def ridged_second_moment(x: np.ndarray) -> np.ndarray:
    """E[x x^T] plus the documented ridge, written out: max(1e-3 * trace / d, 1e-6 * trace)."""
    m = x.T @ x / x.shape[0]
    tr, d = np.trace(m), m.shape[0]
    return m + max(1e-3 * tr / d, 1e-6 * tr) * np.eye(d)


def whitened(g: np.ndarray, m: np.ndarray) -> np.ndarray:
    """G M^{-1/2} with the symmetric inverse square root (numpy eigh)."""
    w, v = np.linalg.eigh(m)
    return g @ (v / np.sqrt(w)) @ v.T


def centred_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    x = x.double() - x.double().mean(0)
    y = y.double() - y.double().mean(0)
    return float((y.T @ x).pow(2).sum() / ((x.T @ x).norm() * (y.T @ y).norm()))


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_metrics_match_direct_computation(kind: str) -> None:
    causal = kind == "llama"
    model = tiny_llama() if causal else tiny_bert()
    batches = make_batches(causal=causal)
    card = profile_layers(model, batches, "all", name=kind, weightdelta_steps=2, show_progress=False)
    acc = direct_statistics(model, batches, "last" if causal else "first")
    L = card.num_layers
    assert L == 3
    for i in range(L):
        norms = torch.cat(acc["norm"][i])
        assert card.values("actnorm")[i] == pytest.approx(float(norms.mean()), rel=1e-5)
        assert card.values("gradnorm")[i] == pytest.approx(sum(acc["gn"][i]) / len(batches), rel=1e-4)
        assert card.values("fisher")[i] == pytest.approx(sum(acc["fi"][i]) / len(batches), rel=1e-4)
        assert card.values("taylor")[i] == pytest.approx(sum(acc["ta"][i]) / len(batches), rel=1e-3, abs=1e-9)
        px, ph = torch.cat(acc["px"][i]), torch.cat(acc["ph"][i])
        assert card.values("cka")[i] == pytest.approx(1 - centred_cka(px, ph), abs=1e-5)
        x = torch.cat(acc["x"][i]).double()
        cov = torch.cov(x.T)
        assert card.values("act_energy")[i] == pytest.approx(float(torch.trace(cov)), rel=1e-5)
        eig = torch.linalg.eigvalsh(cov)
        cond = card.metrics["act_energy"]["extras"]["condition_number"][i]
        # a singular covariance (LayerNorm outputs lose one dimension) reads as the 1e7 cap
        expected = float(eig.max() / eig.clamp_min(float(eig.max()) * 1e-7).min())
        assert cond == pytest.approx(expected, rel=1e-3)
        m = ridged_second_moment(x.numpy())
        g = (sum(acc["G"][i]) / len(batches)).numpy()
        direct = math.sqrt(np.trace(g @ np.linalg.inv(m) @ g.T))
        assert card.values("resnorm")[i] == pytest.approx(direct, rel=1e-5)
        for kind in ("q", "v"):  # the extras users read: per-projection mean token norms
            expected = float(torch.cat(acc[kind][i]).mean())
            assert card.metrics["actnorm"]["extras"][f"{kind}_norm"][i] == pytest.approx(expected, rel=1e-5)
        p = np.clip(np.linalg.eigvalsh(cov.numpy()), 0, None)
        p = p[p > 0] / p.sum()
        eff_rank = card.metrics["act_energy"]["extras"]["effective_rank"][i]
        assert eff_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-4)
    # coupling: |cos| between the blocks' G M^{-1/2}, the mean of each row's off-diagonal entries
    w = np.stack([whitened((sum(acc["G"][i]) / len(batches)).numpy(),
                           ridged_second_moment(torch.cat(acc["x"][i]).double().numpy())).ravel() for i in range(L)])
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    cos = np.abs(w @ w.T)
    assert np.allclose(card.metrics["coupling"]["extras"]["matrix"], cos, atol=1e-5)
    assert card.values("coupling") == pytest.approx(((cos.sum(1) - 1) / (L - 1)).tolist(), abs=1e-5)


def test_coupling_is_mean_offdiagonal_cosine_of_whitened_gradients() -> None:
    model = tiny_bert()
    batches = make_batches()
    card = profile_layers(model, batches, "coupling", show_progress=False)
    mat = torch.tensor(card.metrics["coupling"]["extras"]["matrix"], dtype=torch.float64)
    assert torch.allclose(mat, mat.T, atol=1e-9)
    assert torch.allclose(mat.diagonal(), torch.ones(3, dtype=mat.dtype), atol=1e-9)
    off = (mat.sum(1) - 1) / 2
    assert card.values("coupling") == pytest.approx(off.tolist(), abs=1e-9)


def test_mean_pooling_option_matches_formula() -> None:
    model = tiny_bert()
    batches = make_batches()
    card = profile_layers(model, batches, "cka", pooling="mean", show_progress=False)
    stack = find_layer_stack(model)
    feats = {i: ([], []) for i in range(len(stack))}
    handles = []
    for b in stack.blocks:
        def hook(mod, args, out, i=b.index):
            feats[i][0].append(args[0])
            feats[i][1].append(out[0] if isinstance(out, tuple) else out)
        handles.append(b.module.register_forward_hook(hook))
    with torch.no_grad():
        for batch in batches:
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for h in handles:
        h.remove()
    masks = [b["attention_mask"].unsqueeze(-1).float() for b in batches]
    for i in feats:
        px = torch.cat([(x * m).sum(1) / m.sum(1) for x, m in zip(feats[i][0], masks)])
        ph = torch.cat([(h * m).sum(1) / m.sum(1) for h, m in zip(feats[i][1], masks)])
        assert card.values("cka")[i] == pytest.approx(1 - centred_cka(px, ph), abs=1e-5)


def test_every_registered_metric_is_finite_and_ranked() -> None:
    model = tiny_llama()
    card = profile_layers(model, make_batches(causal=True), list(IMPORTANCE), weightdelta_steps=2,
                          show_progress=False)
    for name in IMPORTANCE:
        entry = card.metrics[name]
        assert len(entry["values"]) == 3 and all(math.isfinite(v) for v in entry["values"])
        assert sorted(entry["ranks"]) == [1, 2, 3]
        if entry["higher_is_better"]:
            assert entry["cumulative"]["100"] <= 3


def test_same_seed_same_card() -> None:
    batches = make_batches()
    a = profile_layers(tiny_bert(), batches, show_progress=False)
    b = profile_layers(tiny_bert(), batches, show_progress=False)
    for name in a.metric_names:
        assert a.values(name) == b.values(name)
        assert a.metrics[name]["stability"] == b.metrics[name]["stability"]


def test_model_is_left_as_it_was() -> None:
    model = tiny_bert()
    model.classifier.weight.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    profile_layers(model, make_batches(), show_progress=False)
    assert not model.classifier.weight.requires_grad
    assert model.bert.encoder.layer[0].attention.self.query.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_forward_only_metrics_need_no_labels() -> None:
    batches = [{k: v for k, v in b.items() if k != "labels"} for b in make_batches()]
    card = profile_layers(tiny_bert(), batches, "actnorm,cka,act_energy", show_progress=False)
    assert card.probe["backward"] is False
    with pytest.raises(DataError, match="labels"):
        profile_layers(tiny_bert(), batches, "gradnorm", show_progress=False)


def test_unknown_metric_lists_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown metric.*bogus.*known: .*actnorm"):
        get_metrics("actnorm,bogus")


def test_all_padding_batch_is_refused() -> None:
    batches = make_batches()
    batches[1]["attention_mask"] = torch.zeros_like(batches[1]["attention_mask"])
    with pytest.raises(DataError, match="batch 1 is all padding"):
        profile_layers(tiny_bert(), batches, "actnorm", show_progress=False)


def test_non_finite_statistic_names_layer_and_metric() -> None:
    model = tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[1].output.dense.weight[0, 0] = float("inf")
    with pytest.raises(NonFiniteMetricError, match=r"'actnorm' is (nan|inf) at layer 1 \(bert.encoder.layer.1\)"):
        profile_layers(model, make_batches(), "actnorm", show_progress=False)


def test_covariance_too_large_is_refused_with_the_flag() -> None:
    with pytest.raises(ConfigError, match="--max-stat-memory"):
        profile_layers(tiny_bert(), make_batches(), "act_energy", max_stat_memory=1000, show_progress=False)


def test_stability_is_reported_per_metric() -> None:
    card = profile_layers(tiny_bert(), make_batches(n_batches=6), show_progress=False)
    for name in ("actnorm", "gradnorm", "cka", "resnorm"):
        s = card.metrics[name]["stability"]
        assert -1 <= s["kendall_tau_mean"] <= 1 and s["n_batches"] == 6
    assert card.metrics["cost"]["stability"] == {"deterministic": True}


@pytest.mark.parametrize("dim", [64, 300, 384])
def test_streamed_gram_equals_direct_covariance(dim: int) -> None:
    """The triangular blocked update (dims above GRAM_BLOCK) and its mirroring give the exact covariance,
    also with a large common offset (BERT-like hidden states) and more than FOLD_EVERY batches."""
    from layerwise.card.probe.stats import FOLD_EVERY, GramSums

    g = torch.Generator().manual_seed(dim)
    chunks = [torch.randn(int(torch.randint(3, 40, (1,), generator=g)), dim, generator=g) * 2 + 30.0
              for _ in range(FOLD_EVERY + 5)]
    sums = GramSums(dim=dim)
    with torch.inference_mode():  # the probe fills them under inference mode and folds outside it
        for c in chunks:
            sums.add(c)
    x = torch.cat(chunks).double()
    xc = x - x.mean(0)
    expected = xc.T @ xc
    assert torch.allclose(sums.centred(), expected, rtol=0, atol=1e-4 * expected.abs().max().item())
    assert torch.allclose(sums.centred(), sums.centred().T)
    # the blocked, triangular, folded update rounds no worse than plain float32 products per chunk summed in
    # float64 (the same sums without the feature), both against the float64 truth
    plain = sum((c.T @ c).double() for c in chunks)
    assert_within_fp32_spread(sums.gram, plain, x.T @ x, "gram")


def test_per_batch_kernel_cka_of_stacked_blocks_matches_feature_space_formula() -> None:
    """The batched per-batch CKA (one call for every block) equals the feature-space linear CKA per block,
    is undefined (NaN: 0/0) where a side is constant, and NaN for fewer than 3 examples."""
    from layerwise.card.metrics import linear_cka
    from layerwise.card.probe.hooks import _kernel_cka

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 8, 5, generator=g), torch.randn(3, 8, 5, generator=g)
    y[1] = 3.0 * x[1] @ torch.linalg.qr(torch.randn(5, 5, generator=g))[0]  # a rotation and scale: CKA 1
    x[2] = 7.0  # a constant input (the [CLS] embedding of block 0)
    got = _kernel_cka(x, y)
    for s in range(2):
        xc, yc = (x[s] - x[s].mean(0)), (y[s] - y[s].mean(0))
        exact = linear_cka(*(m.double() for m in (xc.T @ xc, yc.T @ yc, yc.T @ xc)))  # fp32 grams: the baseline
        xc, yc = xc.double(), yc.double()
        truth = linear_cka(xc.T @ xc, yc.T @ yc, yc.T @ xc)  # float64
        assert_within_fp32_spread(float(got[s]), exact, truth, f"cka[{s}]")
    assert torch.isnan(got[2]) and float(got[1]) == pytest.approx(1.0, abs=1e-6)
    xc = (x[2] - x[2].mean(0)).double()
    assert linear_cka(xc.T @ xc, xc.T @ xc, xc.T @ xc, tiny=1e-9) is None
    assert torch.isnan(_kernel_cka(x[:, :2], y[:, :2])).all()


def test_ridge_is_the_documented_fraction_of_the_trace() -> None:
    # 1e-3 of the mean eigenvalue: trace 10 over d = 4
    assert ridge_for(torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64))) == pytest.approx(2.5e-3)
    # d > 1000: the floor 1e-6 of the trace (2e-3 here) is the larger one
    assert ridge_for(torch.eye(2000, dtype=torch.float64)) == pytest.approx(2e-3)


def test_resnorm_follows_the_ridge_where_the_input_is_rank_deficient() -> None:
    """Six tokens in 32 dimensions: M is singular, so the ridge sets the scale of the whitened gradient."""
    model = tiny_bert()
    batches = [make_batches(n_batches=1, bs=1, seed=3)[0]]
    acc = direct_statistics(model, batches, "first")
    card = profile_layers(model, batches, "resnorm", show_progress=False)
    for i in range(card.num_layers):
        x = torch.cat(acc["x"][i]).double().numpy()
        assert x.shape[0] < x.shape[1]
        g = acc["G"][i][0].numpy()
        expected = np.linalg.norm(whitened(g, ridged_second_moment(x)))
        assert card.values("resnorm")[i] == pytest.approx(expected, rel=1e-4)


def test_weightdelta_is_the_norm_of_scaling_times_b_a_after_the_probe_run() -> None:
    """The probe run repeated by hand (peft LoRA r 4, alpha 8 on q,v, AdamW lr 1e-3, 3 steps); the delta of each
    adapted projection is (alpha / r) * B @ A from the trained factors, its Frobenius norms summed per block."""
    import copy

    import peft

    model = tiny_bert()
    batches = make_batches(n_batches=2)
    stack = find_layer_stack(model)
    card = profile_layers(model, batches, "weightdelta", weightdelta_steps=3, rank=4, show_progress=False)
    torch.manual_seed(0)
    work = copy.deepcopy(model)
    names = [lin.name for b in stack.blocks for lin in b.by_role(("q", "v"))]
    wrapped = peft.get_peft_model(work, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=names,
                                                        task_type="SEQ_CLS"))
    wrapped.train()
    opt = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-3)
    for step in range(3):
        wrapped(**batches[step % 2]).loss.backward()
        opt.step()
        opt.zero_grad()
    expected = [0.0] * len(stack)
    for name, module in wrapped.named_modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            a = module.lora_A["default"].weight.detach().double().numpy()  # (r, in)
            b = module.lora_B["default"].weight.detach().double().numpy()  # (out, r)
            expected[stack.block_of(name)] += np.linalg.norm((8 / 4) * b @ a)
    assert min(expected) > 0
    assert card.values("weightdelta") == pytest.approx(expected, rel=1e-4)
