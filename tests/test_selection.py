"""Selection policies: every registered policy, exactness of budget/pareto against brute force, errors, files."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from layerwise.settings import defaults

from layerwise.card.layer_card import CUMULATIVE_LEVELS, LayerCard, metric_entry
from layerwise.card.cost import layer_costs, selection_cost
from layerwise.runtime.errors import ConfigError
from layerwise.card.metrics import IMPORTANCE
from layerwise.selection.policies import OBJECTIVES, POLICIES, Pick, Selection, parse_layers, register_policy, select

L = 8
EXAMPLE_OPTIONS = {"top-k": {"k": 3}, "threshold": {"share": 0.75}, "manual": {"layers": "0,2-3"},
                   "budget": {"max_params": 3000}, "random": {"k": 3, "draw": 1}}
"""Options for a demonstration run of each policy that needs some; a policy not listed runs with none."""


def random_costs(n: int, rng: random.Random) -> dict:
    """A cost table shaped like layer_costs' with uneven layers (so the knapsacks are not trivial)."""
    params = [rng.randint(200, 2000) for _ in range(n)]
    forward = [rng.randint(10_000, 100_000) for _ in range(n)]
    return {"rank": 8, "targets": ["q", "v"], "params": params, "adapter_flops": [6 * p for p in params],
            "forward_flops": forward, "backward_depth_flops": [sum(forward[i:]) for i in range(n)]}


def make_card(n: int = L, seed: int = 0, costs: dict | None = None, with_cost: bool = True) -> LayerCard:
    """A synthetic card: random actnorm, cka, resnorm (higher is better), coupling (lower) and a cost table."""
    rng = random.Random(seed)
    metrics = {name: metric_entry([rng.uniform(0.0, 10.0) for _ in range(n)], IMPORTANCE[name].info(), None, {})
               for name in ("actnorm", "cka", "resnorm", "coupling")}
    if with_cost:
        table = costs or random_costs(n, rng)
        metrics["cost"] = metric_entry([a + d for a, d in zip(table["adapter_flops"], table["backward_depth_flops"])],
                                       IMPORTANCE["cost"].info(), {"deterministic": True}, table)
    layers = [{"index": i, "name": f"encoder.layer.{i}", "params": 1000, "linears": []} for i in range(n)]
    return LayerCard(model={"name": "synthetic"}, data={}, layers=layers, metrics=metrics, probe={})


@pytest.fixture
def card() -> LayerCard:
    return make_card()


def subsets(n: int):
    for size in range(1, n + 1):
        yield from itertools.combinations(range(n), size)


def importance_of(card: LayerCard, metric: str, layers) -> float:
    imp = card.importance(metric)
    return sum(imp[i] for i in layers)


# -- every registered policy --------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_selects_a_sorted_subset(card, name):
    sel = select(card, name, **EXAMPLE_OPTIONS.get(name, {}))
    assert sel.layers and list(sel.layers) == sorted(set(sel.layers))
    assert set(sel.layers) <= set(range(card.num_layers))
    assert sel.policy == name and sel.metric == POLICIES[name].default_metric
    line = sel.describe()
    assert line.startswith(name) and "\n" not in line and "layers " in line
    assert sel.cost == selection_cost(card.metrics["cost"]["extras"], sel.layers)
    json.dumps(sel.to_dict())  # params are JSON-able


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_every_policy_is_documented(name):
    pol = POLICIES[name]
    assert pol.name == name and pol.description and pol.fn.__doc__
    assert pol.default_metric is None or pol.default_metric in IMPORTANCE


# -- ranking policies ---------------------------------------------------------------------------------
@pytest.mark.parametrize("metric", ["actnorm", "coupling"])
def test_top_k_takes_the_best_layers(card, metric):
    values = card.values(metric)
    sel = select(card, "top-k", k=3, metric=metric)
    best = sorted(values, reverse=card.metrics[metric]["higher_is_better"])[:3]
    assert sorted(values[i] for i in sel.layers) == sorted(best)
    assert sel.describe().startswith(f"top-k by {metric} (k=3): layers ")
    assert select(card, "top-k", k=L).layers == tuple(range(L))


@pytest.mark.parametrize("seed", range(5))
def test_threshold_agrees_with_the_cumulative_table(seed):
    card = make_card(seed=seed)
    table = card.metrics["actnorm"]["cumulative"]
    for level in CUMULATIVE_LEVELS:
        sel = select(card, "threshold", metric="actnorm", share=level / 100)
        assert len(sel.layers) == table[str(level)]
        assert set(sel.layers) == set(card.order("actnorm")[:len(sel.layers)])
        imp = card.importance("actnorm")
        assert importance_of(card, "actnorm", sel.layers) >= level / 100 * sum(imp) - 1e-9


def test_threshold_is_the_fewest_layers():
    card = make_card(n=4)
    card.metrics["actnorm"] = metric_entry([1.0, 5.0, 3.0, 1.0], IMPORTANCE["actnorm"].info(), None, {})
    assert select(card, "threshold", metric="actnorm", share=0.5).layers == (1,)   # 5/10 reaches exactly one half
    assert select(card, "threshold", metric="actnorm", share=0.51).layers == (1, 2)
    assert select(card, "threshold", metric="actnorm", share=1.0).layers == (0, 1, 2, 3)


def test_ratio_keeps_a_fraction_and_can_exclude_the_first_layer():
    card = make_card(n=6)
    card.metrics["cka"] = metric_entry([9.0, 1.0, 8.0, 2.0, 7.0, 3.0], IMPORTANCE["cka"].info(), None, {})
    assert select(card, "ratio").layers == (0, 2, 4)  # default 0.5 of 6
    assert select(card, "ratio", exclude_first=True).layers == (2, 4, 5)
    assert select(card, "ratio", ratio=0.25).layers == (0,)  # floor(1.5), as the CKA authors count
    assert select(card, "ratio", ratio=0.34).layers == (0, 2)  # floor(2.04)
    assert select(card, "ratio", ratio=0.01).layers == (0,)  # at least one
    assert select(card, "ratio", ratio=1.0, exclude_first=True).layers == (1, 2, 3, 4, 5)
    assert select(card, "ratio").params == {"ratio": 0.5, "exclude_first": False}


def test_all_and_manual(card):
    assert select(card, "all").layers == tuple(range(L))
    assert select(card, "manual", layers="0-2,5").layers == (0, 1, 2, 5)
    assert select(card, "manual", layers=[5, 1, 1]).layers == (1, 5)
    assert select(card, "manual", layers=(7,)).params == {"layers": [7]}


def test_parse_layers():
    assert parse_layers("0,2,5", 6) == [0, 2, 5]
    assert parse_layers(" 3-5, 0 ,4", 6) == [0, 3, 4, 5]
    assert parse_layers("2-2", 6) == [2]


# -- budget: exact against brute force ----------------------------------------------------------------
def brute_best(card: LayerCard, metric: str, by: str, cap: float) -> float:
    costs = card.metrics["cost"]["extras"]
    return max(importance_of(card, metric, s) for s in subsets(card.num_layers)
               if selection_cost(costs, s)[by] <= cap)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("by", ["params", "flops"])
def test_budget_equals_brute_force(seed, by):
    card = make_card(seed=seed)
    costs = card.metrics["cost"]["extras"]
    all_costs = sorted({selection_cost(costs, s)[by] for s in subsets(L)})
    rng = random.Random(seed)
    caps = [all_costs[0], all_costs[-1], *rng.sample(all_costs, 6), *(c + 0.5 for c in rng.sample(all_costs, 3))]
    for cap in caps:
        sel = select(card, "budget", **{f"max_{by}": cap})
        assert sel.cost[by] <= cap
        assert importance_of(card, "resnorm", sel.layers) == pytest.approx(brute_best(card, "resnorm", by, cap),
                                                                           rel=1e-12)


def test_budget_prefers_high_layers_under_a_flops_cap():
    """With equal importance and equal adapters, backward depth makes the top layers the affordable ones."""
    card = make_card(n=4, costs={"params": [10] * 4, "adapter_flops": [60] * 4,
                                 "backward_depth_flops": [400, 300, 200, 100]})
    card.metrics["resnorm"] = metric_entry([1.0] * 4, IMPORTANCE["resnorm"].info(), None, {})
    sel = select(card, "budget", max_flops=300)  # {3}: 160, {2,3}: 320 too much
    assert sel.describe() == "budget by resnorm (max_flops=300): layers 3; 10 params, 160 FLOPs/token"
    assert sel.layers == (3,) and sel.cost == {"params": 10, "flops": 160}
    assert select(card, "budget", max_flops=400).layers == (2, 3)  # 200 + 120 = 320; {1,2,3} = 480
    assert len(select(card, "budget", max_params=30).layers) == 3


def test_budget_takes_explicit_costs_from_a_stack():
    import torch

    from layerwise.models.layers import Block, Linear

    widths = [16, 32, 32, 64]
    blocks = [Block(i, f"h.{i}", torch.nn.Identity(),
                    [Linear(f"h.{i}.{r}", r, w, w) for r in ("q", "k", "v", "o")]) for i, w in enumerate(widths)]
    stack = type("Stack", (), {"blocks": blocks})()
    costs = layer_costs(stack, rank=4, targets=("q", "v"))
    card = make_card(n=4, with_cost=False)
    sel = select(card, "budget", max_params=2 * 4 * 64 * 2, costs=costs)  # exactly layer 3's adapters
    assert sel.cost == selection_cost(costs, sel.layers) and sel.cost["params"] <= 1024
    assert "costs" not in sel.params and sel.params["max_params"] == 1024
    with pytest.raises(ConfigError, match="cost metric"):
        select(card, "budget", max_params=1024)
    assert select(card, "top-k", k=1).cost is None  # an unpriced card gives no cost


# -- pareto ---------------------------------------------------------------------------------------------
def brute_front(card: LayerCard, metric: str) -> list[tuple[int, float]]:
    costs = card.metrics["cost"]["extras"]
    points = [(selection_cost(costs, s)["flops"], importance_of(card, metric, s)) for s in subsets(card.num_layers)]
    return [(c, v) for c, v in points
            if not any((c2 <= c and v2 >= v) and (c2 < c or v2 > v) for c2, v2 in points)]


@pytest.mark.parametrize("seed", range(4))
def test_pareto_front_is_exact_and_objectives_follow_their_definitions(seed):
    card = make_card(seed=seed)
    costs = card.metrics["cost"]["extras"]
    sels = {obj: select(card, "pareto", objective=obj) for obj in OBJECTIVES}
    front = sels["balanced"].params["front"]
    expected = sorted(set(brute_front(card, "resnorm")))
    assert [p["flops"] for p in front] == [c for c, _ in expected]
    assert [p["importance"] for p in front] == pytest.approx([v for _, v in expected], rel=1e-12)
    for p in front:  # each point is what it claims
        assert selection_cost(costs, p["layers"])["flops"] == p["flops"]
        assert importance_of(card, "resnorm", p["layers"]) == pytest.approx(p["importance"], rel=1e-12)
    top = max(p["importance"] for p in front)
    for obj, share in (("performance", 0.95), ("cost", 0.5)):
        cheapest = min((p for p in front if p["importance"] >= share * top), key=lambda p: p["flops"])
        assert list(sels[obj].layers) == cheapest["layers"]
    c0, c1 = front[0]["flops"], front[-1]["flops"]
    v0, v1 = front[0]["importance"], front[-1]["importance"]
    knee = max(front, key=lambda p: (p["importance"] - v0) / (v1 - v0) - (p["flops"] - c0) / (c1 - c0))
    assert list(sels["balanced"].layers) == knee["layers"]
    assert sels["cost"].cost["flops"] <= sels["performance"].cost["flops"]  # the knee may lie either side


# -- errors ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy, options, message", [
    ("top-k", {"k": 9}, r"--k must be in 1\.\.8 for this model \(8 layers\), got 9"),
    ("top-k", {"k": 0}, r"--k must be in 1\.\.8"),
    ("top-k", {}, r"needs --k"),
    ("top-k", {"k": 2, "share": 0.5}, r"--share: not an option of policy 'top-k'; it takes --k"),
    ("top-k", {"k": 2, "metric": "nope"}, r"--metric 'nope' is not on this card"),
    ("threshold", {"share": 0.0}, r"--share must be in \(0, 1\]"),
    ("threshold", {"share": 1.5}, r"--share must be in \(0, 1\]"),
    ("ratio", {"ratio": 0}, r"--ratio must be in \(0, 1\]"),
    ("ratio", {"ratio": 1.2}, r"--ratio must be in \(0, 1\]"),
    ("budget", {"max_params": 10, "max_flops": 10}, r"one of --max-params, --params-share or --max-flops, not "),
    ("budget", {"max_params": 10}, r"--max-params 10 is below the cheapest single layer \(layer \d+: .*use "
                                   r"--max-params \d+ or more"),
    ("budget", {"max_flops": 1}, r"--max-flops 1 is below the cheapest single layer .*use --max-flops \d+"),
    ("pareto", {"objective": "speed"}, r"--objective 'speed' is unknown; choose from: performance, balanced, cost"),
    ("manual", {"layers": ""}, r"--layers selects no layer"),
    ("manual", {"layers": []}, r"--layers selects no layer"),
    ("manual", {"layers": "0,8"}, r"--layers '0,8': 8 out of range; this model has 8 layers \(0\.\.7\)"),
    ("manual", {"layers": [9]}, r"--layers 9: 9 out of range"),
    ("all", {"metric": "actnorm"}, r"--metric does not apply to policy 'all'"),
    ("nope", {}, r"--policy 'nope' is unknown; choose from: top-k, threshold"),
])
def test_errors_name_the_flag(card, policy, options, message):
    with pytest.raises(ConfigError, match=message):
        select(card, policy, **options)


@pytest.mark.parametrize("spec, message", [
    ("a", r"'a' is not a layer index"), ("-1", r"not a layer index"), ("3-1", r"runs backwards"),
    ("0-9", r"--layers '0-9': 8, 9 out of range"), (",", r"--layers selects no layer"),
])
def test_parse_layers_errors(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_layers(spec, 8)


def test_missing_default_metric_says_what_to_pass():
    card = make_card()
    del card.metrics["resnorm"]
    with pytest.raises(ConfigError, match=r"policy 'budget' ranks by --metric resnorm .* pass --metric"):
        select(card, "budget", max_params=10**6)
    assert select(card, "budget", max_params=10**6, metric="actnorm").layers == tuple(range(L))


def test_none_options_count_as_not_given(card):
    assert select(card, "all", k=None, metric=None).layers == tuple(range(L))


def test_a_policy_returning_nothing_is_an_error(card, monkeypatch):
    import layerwise.selection.policies as selection

    monkeypatch.setattr(selection, "POLICIES", dict(POLICIES))

    @register_policy("none", "selects nothing", None)
    def none(card, metric):
        """Nothing."""
        return Pick([])

    assert "none" in selection.POLICIES and "none" not in POLICIES
    with pytest.raises(ConfigError, match="policy 'none' selected no layer"):
        select(card, "none")


# -- the Selection record -----------------------------------------------------------------------------------
def test_selection_round_trips_through_json(card):
    for sel in (select(card, "pareto"), select(card, "manual", layers="1,3"),
                Selection((1, 4), "top-k", "actnorm", {"k": 2}, ranks={1: 8, 4: 16}, cost={"params": 1, "flops": 2})):
        assert Selection.from_dict(json.loads(json.dumps(sel.to_dict()))) == sel
        assert Selection.from_dict(sel.to_dict()) == sel
    assert "at ranks 1:8, 4:16; 1 params, 2 FLOPs/token" in sel.describe()


def test_selection_refuses_bad_layers():
    with pytest.raises(ConfigError, match="at least one layer"):
        Selection((), "manual", None, {})
    with pytest.raises(ConfigError, match="sorted, distinct"):
        Selection((3, 1), "manual", None, {})
    with pytest.raises(ConfigError, match="needs layers"):
        Selection.from_dict({"policy": "all"})


# -- a real card ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_policy_on_a_real_minilm_card(minilm):
    from layerwise.data import load_task, make_batches, sample_calibration
    from layerwise.card.profiling import profile_layers

    data = load_task("rotten-tomatoes")
    batches = make_batches(sample_calibration(data.train, 32, seed=0), minilm.tokenizer, data.task, batch_size=16)
    card = profile_layers(minilm.model, batches, name="minilm", n_boot=20, show_progress=False)
    n, table = card.num_layers, card.metrics["cost"]["extras"]
    options = {**EXAMPLE_OPTIONS, "manual": {"layers": f"0,{n - 1}"},
               "budget": {"max_params": 2 * min(table["params"])}}
    for name in POLICIES:
        sel = select(card, name, **options.get(name, {}))
        assert sel.layers and set(sel.layers) <= set(range(n)) and sel.cost is not None, name
        assert Selection.from_dict(json.loads(json.dumps(sel.to_dict()))) == sel
    cap = min(a + d for a, d in zip(table["adapter_flops"], table["backward_depth_flops"]))
    assert select(card, "budget", max_flops=cap).layers == (n - 1,)  # only the top layer is that cheap
    for share in (0.25, 0.5, 0.75, 0.9, 1.0):
        assert len(select(card, "threshold", metric="actnorm", share=share).layers) == card.metrics["actnorm"]["cumulative"][
            str(round(share * 100))]


def test_random_policy_is_a_seeded_uniform_draw(card):
    """The random control: k distinct layers, the same for the same draw, every layer about equally often."""
    import collections

    L = card.num_layers
    assert select(card, "random", k=3, draw=5).layers == select(card, "random", k=3, draw=5).layers
    counts = collections.Counter(i for d in range(600) for i in select(card, "random", k=3, draw=d).layers)
    assert set(counts) == set(range(L))
    expected = 600 * 3 / L
    assert all(abs(c - expected) < 0.25 * expected for c in counts.values()), counts
    with pytest.raises(ConfigError, match="--k must be a whole number in 1.."):
        select(card, "random", k=L + 1)


def test_budget_params_share_caps_at_a_share_of_uniform_lora(card):
    total = sum(card.metrics["cost"]["extras"]["params"])
    assert select(card, "budget", params_share=0.5).layers == select(card, "budget", max_params=total // 2).layers
    assert select(card, "budget", params_share=1.0).layers == tuple(range(card.num_layers))
    # no cap given: the measured default share, recorded with the selection so that it loads back the same
    default = select(card, "budget")
    assert default.layers == select(card, "budget", params_share=defaults.BUDGET_PARAMS_SHARE).layers
    assert default.params["params_share"] == defaults.BUDGET_PARAMS_SHARE == 0.5
    with pytest.raises(ConfigError, match="--params-share must be in"):
        select(card, "budget", params_share=1.5)
