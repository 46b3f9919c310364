"""La-LoRA adaptive ranks: the allocator's equations against hand-computed values, the truncated forward and
backward (smaller matmuls, same numbers as a mask), the pruned slices and their Adam state kept exactly, the
peft export, exact resume, layer selection, NaN and flag errors, and one real MiniLM run."""

from __future__ import annotations

import copy
import json
import math
import random
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

from layerwise.train.lalora.allocator import (FactorProfile, allocate_ranks, check_settings, fidelities, growth_rates,
                                          initial_budget, layer_values, norm_contributions, reallocate, softmax,
                                          update_budget)
from layerwise.train.lalora.callback import LaLoRA, NonFiniteNormError
from layerwise.train.lalora.history import read_history
from layerwise.train.lalora.truncation import TruncatedFactor, set_block_rank
from layerwise.adapters.bridge import apply_adapter
from layerwise.data import load_task
from layerwise.runtime.errors import ConfigError
from layerwise.models.layers import find_layer_stack
from layerwise.train import TrainConfig, train
from layerwise.train.checkpoint import find_checkpoint
from layerwise.workflows.train import AdapterChoice, AdaptiveRanks, check_adaptive, parse_ranks

from numerics import assert_within_fp32_spread
from tiny_models import tiny_bert as shared_tiny_bert

pytestmark = [pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
              pytest.mark.usefixtures("one_thread")]

R_MAX, HIDDEN, LAYERS = 4, 32, 4
INPUT_IDS = torch.tensor([[5, 6, 7, 8, 9, 10], [9, 8, 7, 6, 5, 4]])


def tiny_bert(vocab_size: int = 100, seed: int = 0) -> transformers.PreTrainedModel:
    return shared_tiny_bert(vocab_size, layers=LAYERS, hidden=HIDDEN, seed=seed).eval()


def adapted(layers=(0, 1, 2, 3), vocab_size: int = 100, seed: int = 0, dropout: float = 0.0, method: str = "lora",
            random_b: bool = True):
    """(peft model at rank R_MAX on q,v of ``layers``, its stack, an untouched copy of the base model)."""
    base = tiny_bert(vocab_size, seed)
    fresh = copy.deepcopy(base)
    stack = find_layer_stack(base)
    model = apply_adapter(base, stack, list(layers), method=method, rank=R_MAX, targets="q,v", dropout=dropout)
    if random_b:  # LoRA starts with B = 0; a trained-looking B makes every comparison meaningful
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model, stack, fresh


def factors(model) -> list[TruncatedFactor]:
    return [m for m in model.modules() if isinstance(m, TruncatedFactor)]


# --- the allocator: pure functions against hand-computed values ---------------------------------------------


def profile(a_rows, b_cols) -> FactorProfile:
    return FactorProfile(tuple(float(v) for v in a_rows), tuple(float(v) for v in b_cols))


def test_layer_value_eq7_and_growth_eq6():
    # ||A1[:2]|| = sqrt(9 + 16) = 5, ||B1[:, :2]|| = 0; ||A2[:2]|| = 1, ||B2[:, :2]|| = 2
    block = [profile([9, 16, 144], [0, 0, 0]), profile([1, 0, 5], [4, 0, 7])]
    assert layer_values([block], [2]) == [pytest.approx((5 + 0 + 1 + 2) / 2)]
    assert layer_values([block], [1]) == [pytest.approx(3 + 0 + 1 + 2)]
    assert growth_rates([4.0, 3.0, 1.0], [2.0, 4.0, 0.0]) == [1.0, -0.25, 0.0]  # a zero previous value: 0


def test_budget_eq5_grows_with_mean_rate_and_is_clipped():
    assert initial_budget(6, 8) == 6.0 and initial_budget(6, 8, car=False) == 48.0
    assert update_budget(6.0, [0.1, 0.3], gamma=2.0, num_blocks=2, r_max=8) == pytest.approx(6 * (1 + 2 * 0.2))
    assert update_budget(2.5, [-0.9, -0.9], gamma=1.0, num_blocks=2, r_max=8) == 2.0  # floor L
    assert update_budget(15.0, [0.5, 0.5], gamma=1.0, num_blocks=2, r_max=8) == 16.0  # ceiling r_max * L
    assert update_budget(7.0, [], gamma=1.0, num_blocks=2, r_max=8) == 7.0


def test_fidelity_eq10_and_contribution_eq9():
    a_only = profile([9, 16], [0, 0])  # B = 0: nothing to lose, fidelity 1
    assert fidelities(a_only, 1) == (pytest.approx(3 / 5), 1.0)
    both = profile([9, 16], [9, 16])
    assert fidelities(both, 1) == (pytest.approx(0.6), pytest.approx(0.6))
    assert fidelities(both, 2) == (1.0, 1.0)
    # c = f_dw * ||B[:, :1]|| + f_up * ||A[:1]||: 0.6 * 0 + 1 * 3 and 0.6 * 3 + 0.6 * 3
    assert norm_contributions([[a_only], [both]], [1, 1]) == [pytest.approx(3.0), pytest.approx(3.6)]
    assert norm_contributions([[a_only, both]], [1]) == [pytest.approx(6.6)]  # summed over projections
    assert norm_contributions([[a_only], [both]], [1, 1], fidelity=False) == [pytest.approx(3.0), pytest.approx(6.0)]


def test_softmax_rounding_eq8_hand_values():
    assert softmax([0.0, math.log(3.0)]) == [pytest.approx(0.25), pytest.approx(0.75)]
    assert allocate_ranks([0.0, math.log(3.0)], 8.0, 8) == [2, 6]
    assert allocate_ranks([0.0, 0.0, 0.0], 6.0, 8) == [2, 2, 2]
    assert allocate_ranks([0.0, 0.0, 0.0], 7.0, 8) == [3, 2, 2]  # remainder tie: lower block first
    assert allocate_ranks([0.0, 0.0, 0.0], 6.5, 8) == [3, 2, 2]  # round half up: 7
    assert allocate_ranks([0.0, 10.0], 10.0, 8) == [2, 8]  # the capped share goes to the other block
    assert allocate_ranks([10.0, 0.0, 0.0], 4.0, 8) == [2, 1, 1]  # the floor 1 holds against a peaked softmax
    assert allocate_ranks([1.0, 2.0], 1.0, 8) == [1, 1]  # budget below L: L
    assert allocate_ranks([1.0, 2.0], 40.0, 8) == [8, 8]  # above r_max * L: r_max * L


def test_allocation_sums_to_the_budget_within_bounds_deterministically():
    rng = random.Random(0)
    for _ in range(300):
        num, r_max = rng.randint(1, 12), rng.randint(1, 16)
        contrib = [rng.uniform(-3, 6) for _ in range(num)]
        budget = rng.uniform(num, r_max * num)
        ranks = allocate_ranks(contrib, budget, r_max)
        assert sum(ranks) == math.floor(budget + 0.5) and all(1 <= r <= r_max for r in ranks)
        assert ranks == allocate_ranks(contrib, budget, r_max)
        order = sorted(range(num), key=lambda i: contrib[i])
        assert all(ranks[i] >= ranks[j] for i, j in zip(order[1:], order))  # more contribution, no less rank


def test_reallocate_measures_growth_at_the_ranks_in_force():
    block_a = [profile([1, 1], [1, 0])]  # s at r=1: (1 + 1) / 1 = 2; at r=2: (1 + sqrt(2)) / 2
    block_b = [profile([4, 4], [0, 0])]  # s at r=1: 2;                 at r=2: sqrt(8) / 2
    out = reallocate([block_a, block_b], [1, 1], [1.0, 2.0], 2.0, gamma=1.0, r_max=2)
    assert out.values == [2.0, 2.0] and out.rates == [1.0, 0.0]
    assert out.budget == pytest.approx(3.0) and sum(out.ranks) == 3
    # c_a = f_dw * ||B[:, :1]|| + f_up * ||A[:1]|| = (1 / sqrt 2) * 1 + 1 * 1; c_b = (2 / sqrt 8) * 0 + 1 * 2
    assert out.contributions == [pytest.approx(1 + 1 / math.sqrt(2)), pytest.approx(2.0)]
    assert out.ranks == [1, 2]  # shares 3 * softmax(c) = (1.28, 1.72): the larger remainder gets the extra rank
    assert out.next_values == [pytest.approx(2.0), pytest.approx(math.sqrt(8) / 2)]  # s^(t-1) at the new ranks


@pytest.mark.parametrize("kwargs, flag", [
    ({"gamma": 0.0}, "--gamma"), ({"gamma": -1.0}, "--gamma"), ({"gamma": float("nan")}, "--gamma"),
    ({"r_max": 0}, "--r-max"), ({"interval": 0}, "--rank-interval"), ({"contribution": "grad"}, "--contribution"),
    ({"scale": "sqrt"}, "--rank-scale"),
])
def test_settings_errors_name_their_flag(kwargs, flag):
    settings = {"r_max": 8, "gamma": 1.0, "interval": 1, "contribution": "norm", "scale": "rmax", **kwargs}
    with pytest.raises(ConfigError, match=flag):
        check_settings(**settings)


# --- truncation: smaller matmuls, the same numbers as a mask ------------------------------------------------


def masked_copy(model, ranks: dict[str, int]):
    """The full-rank model with rows of A / columns of B beyond each module's rank zeroed (the reference)."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in ref.named_modules():
            if isinstance(module, TruncatedFactor):
                r = ranks[name]
                (module.weight[r:] if module.side == "A" else module.weight[:, r:]).zero_()
                module.rank = module.r_max
    return ref


def test_truncated_forward_and_backward_equal_a_mask_with_smaller_matmuls():
    model, stack, _ = adapted()
    cb = LaLoRA(model, stack, R_MAX, gamma=1.0, car=False)
    ranks = [2, R_MAX, 1, 3]
    for block, r in zip(cb.blocks, ranks):
        set_block_rank(block, r)
    by_name = {name: f.rank for name, f in model.named_modules() if isinstance(f, TruncatedFactor)}
    ref = masked_copy(model, by_name)

    widths = []
    hooks = [f.register_forward_hook(lambda m, i, o: widths.append((m.side, m.rank, o.shape[-1], i[0].shape[-1])))
             for f in factors(model)]
    with FlopCounterMode(display=False) as small:
        out = model(input_ids=INPUT_IDS).logits
    for h in hooks:
        h.remove()
    with FlopCounterMode(display=False) as full:
        expected = ref(input_ids=INPUT_IDS).logits
    exact_model = masked_copy(model, by_name).double()  # the mask in float64: what both fp32 results round
    exact = exact_model(input_ids=INPUT_IDS).logits
    assert_within_fp32_spread(out, expected, exact, "logits")
    # A emits r columns and B takes r inputs: the matmuls are really r wide.
    assert all((width if side == "A" else inner) == r for side, r, width, inner in widths) and len(widths) == 16
    tokens = INPUT_IDS.numel()
    saved = sum(2 * 2 * tokens * (HIDDEN + HIDDEN) * (R_MAX - r) for r in ranks)  # 2 projections, A and B
    assert full.get_total_flops() - small.get_total_flops() == saved

    out.sum().backward()
    expected.sum().backward()
    exact.sum().backward()
    ref_factors = {name: f for name, f in ref.named_modules() if isinstance(f, TruncatedFactor)}
    exact_factors = {name: f for name, f in exact_model.named_modules() if isinstance(f, TruncatedFactor)}
    for name, f in model.named_modules():
        if isinstance(f, TruncatedFactor):
            grad, ref_grad = f.weight.grad, ref_factors[name].weight.grad
            keep = (slice(0, f.rank), slice(None)) if f.side == "A" else (slice(None), slice(0, f.rank))
            assert_within_fp32_spread(grad[keep], ref_grad[keep], exact_factors[name].weight.grad[keep], name)
            pruned = grad.clone()
            pruned[keep] = 0.0
            assert torch.count_nonzero(pruned) == 0  # the pruned part gets exactly zero


def test_pruned_slices_and_adam_state_are_kept_and_grow_back():
    model, stack, _ = adapted()
    cb = LaLoRA(model, stack, R_MAX, gamma=1.0, car=False, interval=1000)  # no reallocation: ranks set by hand
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)

    def step(n: int) -> None:
        model(input_ids=INPUT_IDS, labels=torch.tensor([0, 1])).loss.backward()
        cb.before_optimizer_step(opt)
        opt.step()
        cb.after_optimizer_step(n)
        opt.zero_grad()

    for n in (1, 2):  # full rank: every row has Adam state
        step(n)
    f = factors(model)
    snapshot = {id(x): (x.weight.detach().clone(), {k: v.clone() for k, v in opt.state[x.weight].items()})
                for x in f}
    for block in cb.blocks:
        set_block_rank(block, 1)
    for n in (3, 4, 5):
        step(n)
    for x in f:
        before, state = snapshot[id(x)]
        cut = (slice(1, None), slice(None)) if x.side == "A" else (slice(None), slice(1, None))
        kept = (slice(0, 1), slice(None)) if x.side == "A" else (slice(None), slice(0, 1))
        assert torch.equal(x.weight.detach()[cut], before[cut])
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(opt.state[x.weight][key][cut], state[key][cut]), key
        assert not torch.equal(x.weight.detach()[kept], before[kept])  # the used part trains
    for block in cb.blocks:  # grow back: the same rows and state are there and train again
        set_block_rank(block, R_MAX)
    step(6)
    for x in f:
        before, _ = snapshot[id(x)]
        cut = (slice(1, None), slice(None)) if x.side == "A" else (slice(None), slice(1, None))
        assert not torch.equal(x.weight.detach()[cut], before[cut])


# --- export -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", ["rmax", "ri"])
def test_export_reloads_with_plain_peft_and_merges(scale, tmp_path):
    model, stack, fresh = adapted()
    cb = LaLoRA(model, stack, R_MAX, alpha=6.0, gamma=1.0, scale=scale)
    ranks = [1, 3, R_MAX, 2]
    cb.set_ranks(ranks)
    cb.export_adapter(tmp_path)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    for block, r in zip(cb.blocks, ranks):
        for name, _ in block.layers:
            key = name.replace(".", "\\.")
            assert config["rank_pattern"][key] == r
            expected_alpha = 6.0 * r / R_MAX if scale == "rmax" else 6.0
            assert config["alpha_pattern"][key] == pytest.approx(expected_alpha)
            assert tensors[f"base_model.model.{name}.lora_A.weight"].shape == (r, HIDDEN)
            assert tensors[f"base_model.model.{name}.lora_B.weight"].shape == (HIDDEN, r)
    loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path)).eval()
    with torch.no_grad():
        expected, got = model.eval()(input_ids=INPUT_IDS).logits, loaded(input_ids=INPUT_IDS).logits
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
        merged = loaded.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=INPUT_IDS).logits, expected, atol=1e-5, rtol=0)


# --- in the training loop: resume, selection, NaN -----------------------------------------------------------


@pytest.fixture(scope="module")
def rt():
    data = load_task("rotten-tomatoes")
    rng = random.Random(0)
    return data.task, rng.sample(data.train, 96), rng.sample(data.dev, 32)


def config(**overrides) -> TrainConfig:
    base = dict(steps=8, lr=3e-2, batch_size=8, max_length=32, warmup_ratio=0.0, weight_decay=0.01,
                scheduler="constant")
    return TrainConfig(**{**base, **overrides})


def run_lalora(tok, rt, out: Path, cfg: TrainConfig, layers=(0, 1, 2, 3), resume: bool = False, extra=(),
               **lalora):
    model, stack, _ = adapted(layers, tok.vocab_size, dropout=0.1, random_b=False)
    cb = LaLoRA(model, stack, R_MAX, **{"gamma": 8.0, **lalora})
    task, train_ex, dev_ex = rt
    result = train(model, tok, task, train_ex, dev_ex, cfg, out, resume=resume, callbacks=[cb, *extra],
                   show_progress=False, weights_writer=cb)
    return result, cb, model


class StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state) -> None:
        state.should_stop = state.should_stop or state.step == self.step


@pytest.mark.parametrize("contribution, interval", [("norm", 1), ("fisher", 2)])
def test_resume_mid_run_is_bit_identical(tokenizer, rt, tmp_path, contribution, interval):
    kw = dict(contribution=contribution, interval=interval)
    full, cb_full, _ = run_lalora(tokenizer, rt, tmp_path / "full", config(), **kw)
    history = read_history(tmp_path / "full" / "rank_history.json")
    assert len({tuple(r) for r in history.ranks}) > 1, history.ranks  # the ranks did move
    assert history.steps == list(range(0, 9, interval))
    first, _, _ = run_lalora(tokenizer, rt, tmp_path / "resumed", config(), extra=[StopAt(5)], **kw)
    assert first.steps == 5
    resumed, cb_resumed, _ = run_lalora(tokenizer, rt, tmp_path / "resumed", config(), resume=True, **kw)
    assert resumed.steps == 8 and cb_resumed.ranks == cb_full.ranks and cb_resumed.budget == cb_full.budget
    assert torch.equal(cb_resumed.fisher, cb_full.fisher)
    a, b = (load_file(str(r.adapter_dir / "adapter_model.safetensors")) for r in (full, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_history(tmp_path / "resumed" / "rank_history.json") == history
    for name in ("ranks.png", "rank_history.json", "plots.png", "metrics.json"):
        assert (tmp_path / "resumed" / name).exists(), name


def test_resume_refuses_a_checkpoint_without_lalora_state(tokenizer, rt, tmp_path):
    task, train_ex, dev_ex = rt
    model, _, _ = adapted(vocab_size=tokenizer.vocab_size, random_b=False)
    train(model, tokenizer, task, train_ex, dev_ex, config(steps=2), tmp_path, show_progress=False)
    with pytest.raises(ConfigError, match="LaLoRA"):
        run_lalora(tokenizer, rt, tmp_path, config(steps=2), resume=True)


def test_selected_blocks_only_are_adapted_and_exported(tokenizer, rt, tmp_path):
    result, cb, model = run_lalora(tokenizer, rt, tmp_path, config(steps=4), layers=(1, 3))
    assert [b.index for b in cb.blocks] == [1, 3] and read_history(tmp_path / "rank_history.json").blocks == [1, 3]
    pattern = json.loads((result.adapter_dir / "adapter_config.json").read_text())["rank_pattern"]
    assert sorted({int(key.split("\\.")[3]) for key in pattern}) == [1, 3] and len(pattern) == 4
    assert sum(1 for _ in factors(model)) == 8
    # Only block 1 adaptive: block 3 keeps its full-rank LoRA, untouched by La-LoRA.
    other, stack, _ = adapted((1, 3))
    only = LaLoRA(other, [1], R_MAX, gamma=1.0)
    assert [b.index for b in only.blocks] == [1]
    assert all(".1." in name for name, m in other.named_modules() if isinstance(m, TruncatedFactor))
    with pytest.raises(ConfigError, match="--layers"):
        LaLoRA(other, [0], R_MAX)


class Poison:
    """Callback: after step ``step`` put NaN into the unused columns of block 1's LoRA B (the forward stays
    finite, so only the norms can tell)."""

    def __init__(self, model, step: int) -> None:
        self.model, self.step = model, step

    def on_step_end(self, state) -> None:
        if state.step == self.step:
            with torch.no_grad():
                for name, m in self.model.named_modules():
                    if isinstance(m, TruncatedFactor) and ".layer.1." in name and m.side == "B":
                        m.weight[:, m.rank:] = float("nan")


def test_nan_norms_stop_training_and_keep_the_last_checkpoint(tokenizer, rt, tmp_path):
    task, train_ex, dev_ex = rt
    model, stack, _ = adapted(vocab_size=tokenizer.vocab_size, random_b=False)
    cb = LaLoRA(model, stack, R_MAX, gamma=1e-6)  # the ranks stay at 1
    with pytest.raises(NonFiniteNormError, match=r"block 1 \(.*\) are NaN or infinite after step 5"):
        train(model, tokenizer, task, train_ex, dev_ex, config(save_every=2), tmp_path,
              callbacks=[cb, Poison(model, 4)], show_progress=False)
    state = json.loads((find_checkpoint(tmp_path) / "state.json").read_text())
    assert state["state"]["step"] == 4 and not (tmp_path / "adapter").exists()


# --- flags ----------------------------------------------------------------------------------------------------


def test_lalora_and_workflow_flag_errors():
    model, stack, _ = adapted()
    with pytest.raises(ConfigError, match="--r-max"):
        LaLoRA(model, stack, R_MAX + 1)
    with pytest.raises(ConfigError, match="--gamma"):
        LaLoRA(model, stack, R_MAX, gamma=0.0)
    with pytest.raises(ConfigError, match="--rank-interval"):
        LaLoRA(model, stack, R_MAX, interval=0)
    dora, dora_stack, _ = adapted(method="dora")
    with pytest.raises(ConfigError, match="--method lora"):
        LaLoRA(dora, dora_stack, R_MAX)
    assert parse_ranks("1:4") == {1: 4} and AdapterChoice(ranks="adaptive").adaptive == AdaptiveRanks()
    with pytest.raises(ConfigError, match="--method"):
        AdapterChoice(method="dora", adaptive=AdaptiveRanks())
    with pytest.raises(ConfigError, match="--r-max"):
        AdaptiveRanks(r_max=0)
    with pytest.raises(ConfigError, match="--adaptive-ranks"):
        check_adaptive(AdapterChoice())


@pytest.mark.parametrize("flags, flag", [(["--gamma", "0"], "--gamma"), (["--r-max", "0"], "--r-max"),
                                         (["--rank-interval", "0"], "--rank-interval"),
                                         (["--method", "loha"], "--method")])
def test_cli_flag_errors_come_before_loading_anything(flags, flag, tmp_path, capsys):
    from layerwise.cli import main

    code = main(["train", "--ranks", "adaptive", *flags, "--out", str(tmp_path / "out")])
    assert code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- the real model -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_minilm_adaptive_run_writes_ranks_and_a_reloadable_adapter(minilm, tmp_path):
    from layerwise.train import evaluate
    from layerwise.workflows.train import train_job

    cfg = TrainConfig(steps=20, lr=2e-3, batch_size=16, max_length=48, eval_max_examples=64)
    result, chosen = train_job("minilm", "rotten-tomatoes", tmp_path, train_config=cfg,
                               adapter=AdapterChoice(rank=8, adaptive=AdaptiveRanks(gamma=4.0)), show_progress=False)
    assert result.steps == 20 and list(chosen.layers) == list(range(6))
    assert (tmp_path / "ranks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = read_history(tmp_path / "rank_history.json")
    assert history.steps == list(range(21)) and history.blocks == list(range(6))
    config_json = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert sorted(set(config_json["rank_pattern"].values())) == sorted(set(history.ranks[-1]))
    data = load_task("rotten-tomatoes")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(minilm.model), str(result.adapter_dir)).eval()
    again = evaluate(loaded, data.dev, data.task, minilm.tokenizer, batch_size=16, max_length=48, max_examples=64)
    assert again["accuracy"] == result.final_metrics["accuracy"]
    assert again["loss"] == pytest.approx(result.final_metrics["loss"], abs=1e-5)


# --- in the loop: every update equals the equations applied to the weights ---------------------------------


class Reference:
    """Callback after La-LoRA: recomputes every update from the LoRA weights with numpy (Eq. 5-7, 9-10, and
    Fisher sums of the factors' gradients), applies the Eq. 8 allocator, and records the comparison."""

    def __init__(self, cb: LaLoRA, stack, gamma: float, contribution: str) -> None:
        self.cb, self.gamma, self.contribution = cb, gamma, contribution
        # per block, per projection: the (A, B) Parameters, found by walking the block's modules
        self.blocks = [[(m.lora_A["default"].weight, m.lora_B["default"].weight)
                        for _, m in block.module.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A]
                       for block in stack.blocks]
        self.L = len(self.blocks)
        self.budget, self.ranks = float(self.L), [1] * self.L  # Eq. 5's start (CAR): L, every block at rank 1
        self.previous = self.values(self.ranks)
        self.fisher = np.zeros(self.L)
        self.records: list[tuple[int, list[int], float]] = []
        self.decided = 0  # updates where the fidelities (norm) or the Fisher sums (fisher) changed the ranks

    def norms(self, i: int, r: int) -> list[tuple[float, float, float, float]]:
        out = []
        for a, b in self.blocks[i]:
            a, b = a.detach().double().numpy(), b.detach().double().numpy()  # (r_max, in), (out, r_max)
            out.append((np.linalg.norm(a[:r]), np.linalg.norm(b[:, :r]), np.linalg.norm(a), np.linalg.norm(b)))
        return out

    def values(self, ranks: list[int]) -> np.ndarray:  # Eq. 7
        return np.array([sum(na + nb for na, nb, _, _ in self.norms(i, r)) / r for i, r in enumerate(ranks)])

    def contributions(self, kind: str) -> list[float]:
        """``fisher``: the Fisher sums; ``norm``: Eq. 9 with the fidelities of Eq. 10 (a zero factor has
        fidelity 1); ``plain``: Eq. 9 with f = 1, to show that the fidelities decide some allocation."""
        if kind == "fisher":
            return self.fisher.tolist()
        out = []
        for i, r in enumerate(self.ranks):
            c = 0.0
            for na, nb, fa, fb in self.norms(i, r):
                f_dw, f_up = (na / fa if fa > 0 else 1.0), (nb / fb if fb > 0 else 1.0)
                if kind == "plain":
                    f_dw = f_up = 1.0
                c += f_dw * nb + f_up * na
            out.append(c)
        return out

    def before_optimizer_step(self, optimizer) -> None:
        for i, pairs in enumerate(self.blocks):
            self.fisher[i] += sum(float((w.grad.double() ** 2).sum()) for pair in pairs for w in pair)

    def on_step_end(self, state) -> None:
        s = self.values(self.ranks)
        rates = (s - self.previous) / self.previous  # Eq. 6
        self.budget = min(max(self.budget * (1 + self.gamma * rates.mean()), self.L), R_MAX * self.L)  # Eq. 5
        contributions = self.contributions(self.contribution)
        other = self.contributions("plain" if self.contribution == "norm" else "norm")
        if allocate_ranks(other, self.budget, R_MAX) != allocate_ranks(contributions, self.budget, R_MAX):
            self.decided += 1
        self.ranks = allocate_ranks(contributions, self.budget, R_MAX)  # Eq. 8
        self.previous = self.values(self.ranks)  # s^(t-1) of the next update: at the ranks now in force
        self.records.append((state.step, list(self.cb.ranks), self.cb.budget))  # the library's norms are float32 sums
        assert self.cb.ranks == self.ranks, (state.step, self.cb.ranks, self.ranks, contributions)
        assert self.cb.budget == pytest.approx(self.budget, rel=1e-6), (state.step, self.cb.budget, self.budget)


@pytest.mark.parametrize("contribution", ["norm", "fisher"])
def test_every_update_in_the_loop_equals_the_equations_on_the_weights(tokenizer, rt, tmp_path, contribution):
    """At gamma 2 and lr 2e-2 the budget stays strictly between L and r_max * L for all ten updates and the blocks
    get uneven ranks, so the layer values (Eq. 7), growth rates (Eq. 6), budget (Eq. 5), contributions (Eq. 9)
    with their fidelities (Eq. 10), or the Fisher sums, decide every allocation."""
    gamma = 2.0
    task, train_ex, dev_ex = rt
    model, stack, _ = adapted(vocab_size=tokenizer.vocab_size, random_b=False)
    cb = LaLoRA(model, stack, R_MAX, gamma=gamma, contribution=contribution)
    ref = Reference(cb, stack, gamma, contribution)
    train(model, tokenizer, task, train_ex, dev_ex, config(steps=10, lr=2e-2), tmp_path, callbacks=[cb, ref],
          show_progress=False)
    assert [step for step, _, _ in ref.records] == list(range(1, 11))
    uneven = [ranks for _, ranks, _ in ref.records if len(set(ranks)) > 1]
    assert len(uneven) >= 5 and len({tuple(r) for r in uneven}) >= 3, ref.records
    assert all(LAYERS < budget < R_MAX * LAYERS for _, _, budget in ref.records), ref.records
    assert ref.decided >= 1, ref.records  # f = 1 (norm), or norm contributions (fisher), would differ somewhere
