"""Registry of selection policies: pure functions over a :class:`~layerwise.card.layer_card.LayerCard` that choose which
transformer blocks get adapters. No model is needed; a policy reads the card's metrics (and its ``cost``
table where it prices layers).

Adding a policy: write ``@register_policy(name, description, default_metric)`` over a function
``(card: LayerCard, metric: str | None, **options) -> Pick``. Its keyword options are its flags
(``max_params`` is ``--max-params``); :func:`select` checks them, fills defaults and records them.
"""

from __future__ import annotations

import inspect
import math
import random
import numbers
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from layerwise.card.layer_card import LayerCard
from layerwise.card.cost import selection_cost
from layerwise.runtime.errors import ConfigError
from layerwise.settings import defaults
from layerwise.settings.choices import OBJECTIVES

__all__ = ["Selection", "Pick", "Policy", "POLICIES", "register_policy", "select", "check_options", "parse_layers",
           "OBJECTIVES"]

_SHARE_OF_MAX = {"performance": 0.95, "cost": 0.5}
"""Share of the front's maximum importance the ``performance`` and ``cost`` objectives must reach."""


@dataclass(frozen=True)
class Selection:
    """The blocks chosen for adapters and how they were chosen."""

    layers: tuple[int, ...]
    """Sorted block indices (at least one)."""
    policy: str
    metric: str | None
    """The importance metric the policy ranked by (None for ``all``/``manual``)."""
    params: dict[str, Any]
    """The policy arguments used, defaults included (JSON-able); ``pareto`` adds its ``front``."""
    ranks: dict[int, int] | None = None
    """Optional LoRA rank per selected layer."""
    cost: dict[str, int] | None = None
    """``{"params", "flops"}`` of the adapters (:func:`layerwise.card.cost.selection_cost`), when the card is priced."""

    def __post_init__(self) -> None:
        layers = tuple(int(i) for i in self.layers)
        if not layers:
            raise ConfigError("a selection needs at least one layer")
        if list(layers) != sorted(set(layers)) or layers[0] < 0:
            raise ConfigError(f"selection layers must be sorted, distinct and non-negative, got {list(layers)}")
        object.__setattr__(self, "layers", layers)

    def describe(self) -> str:
        """One line, e.g. ``top-k by actnorm (k=3): layers 3, 4, 5``."""
        head = self.policy + (f" by {self.metric}" if self.metric else "")
        shown = {k: v for k, v in self.params.items()
                 if k != "layers" and isinstance(v, (bool, int, float, str))}
        if shown:
            head += " (" + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"
        line = f"{head}: layers {', '.join(map(str, self.layers))}"
        if self.ranks:
            line += " at ranks " + ", ".join(f"{i}:{r}" for i, r in sorted(self.ranks.items()))
        if self.cost:
            line += f"; {self.cost['params']:,} params, {self.cost['flops']:,} FLOPs/token"
        return line

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (rank keys become strings, as JSON writes them)."""
        return {"layers": list(self.layers), "policy": self.policy, "metric": self.metric,
                "params": self.params,
                "ranks": None if self.ranks is None else {str(i): r for i, r in self.ranks.items()},
                "cost": self.cost}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Selection":
        """Inverse of :meth:`to_dict` (also reads the dict back from JSON)."""
        missing = [k for k in ("layers", "policy") if k not in d]
        if missing:
            raise ConfigError(f"a selection needs {', '.join(missing)}; got keys {', '.join(d) or 'none'}")
        ranks = d.get("ranks")
        return cls(layers=tuple(int(i) for i in d["layers"]), policy=str(d["policy"]), metric=d.get("metric"),
                   params=dict(d.get("params") or {}),
                   ranks=None if ranks is None else {int(i): int(r) for i, r in ranks.items()},
                   cost=d.get("cost"))


@dataclass(frozen=True)
class Pick:
    """What a policy function returns: the chosen blocks and any result worth recording in ``params``."""

    layers: Sequence[int]
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    """A registered selection policy."""

    name: str
    fn: Callable[..., Pick]
    description: str
    default_metric: str | None
    """Metric used when ``--metric`` is not given; None for policies that read no metric."""

    @property
    def options(self) -> dict[str, inspect.Parameter]:
        """The policy's keyword options (its flags, with dashes for underscores) and their defaults."""
        return dict(list(inspect.signature(self.fn).parameters.items())[2:])


POLICIES: dict[str, Policy] = {}


def register_policy(name: str, description: str, default_metric: str | None) -> Callable:
    """Decorator adding a policy function ``(card, metric, **options) -> Pick`` to :data:`POLICIES`."""

    def wrap(fn: Callable[..., Pick]) -> Callable[..., Pick]:
        POLICIES[name] = Policy(name, fn, description, default_metric)
        return fn

    return wrap


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


# -- dispatch ---------------------------------------------------------------------------------------
def check_options(policy: str, given: dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the flags in ``given`` (options set, ``metric`` aside) that ``policy``
    does not take: they would be ignored (``--policy all --k 3``)."""
    pol = POLICIES[policy]
    options = pol.options
    unknown = [k for k, v in given.items() if v is not None and k != "metric" and k not in options]
    if unknown:
        takes = ", ".join(_flag(o) for o in options if o != "costs") or "no option"
        raise ConfigError(f"{', '.join(_flag(k) for k in unknown)}: not an option of policy {policy!r}; "
                          f"it takes {takes}" + (" and --metric" if pol.default_metric else ""))


def select(card: LayerCard, policy: str, **kwargs: Any) -> Selection:
    """Run ``policy`` on ``card`` with its options (``metric`` included); options set to None count as not
    given, so a CLI may pass every flag. Unknown policies and options raise :class:`ConfigError`."""
    if policy not in POLICIES:
        raise ConfigError(f"--policy {policy!r} is unknown; choose from: {', '.join(POLICIES)}")
    pol = POLICIES[policy]
    given = {k: v for k, v in kwargs.items() if v is not None}
    metric = _resolve_metric(card, pol, given.pop("metric", None))
    options = pol.options
    check_options(policy, given)
    missing = [k for k, p in options.items() if p.default is inspect.Parameter.empty and k not in given]
    if missing:
        raise ConfigError(f"policy {policy!r} needs {', '.join(_flag(k) for k in missing)}")
    pick = pol.fn(card, metric, **given)
    layers = sorted(set(int(i) for i in pick.layers))
    if not layers:
        raise ConfigError(f"policy {policy!r} selected no layer with {given}; loosen its options")
    assert 0 <= layers[0] and layers[-1] < card.num_layers, (policy, layers)
    params = {k: _jsonable(given.get(k, p.default)) for k, p in options.items() if k != "costs"}
    costs = _cost_table(card, given.get("costs"))
    return Selection(tuple(layers), policy, metric, {**params, **pick.extra},
                     cost=None if costs is None else selection_cost(costs, layers))


def _resolve_metric(card: LayerCard, pol: Policy, metric: str | None) -> str | None:
    if pol.default_metric is None:
        if metric is not None:
            raise ConfigError(f"--metric does not apply to policy {pol.name!r}: it reads no metric")
        return None
    if metric is None and pol.default_metric not in card.metrics:
        raise ConfigError(f"policy {pol.name!r} ranks by --metric {pol.default_metric} unless told otherwise, "
                          f"and this card has no {pol.default_metric!r}; pass --metric with one of: "
                          f"{', '.join(card.metrics)}")
    name = metric or pol.default_metric
    card.metric(name)  # an unknown name lists the card's metrics
    return name


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple, range)):
        return [_jsonable(v) for v in value]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


# -- layer lists ------------------------------------------------------------------------------------
def parse_layers(spec: str, num_layers: int) -> list[int]:
    """Parse ``--layers``: comma-separated indices and inclusive ranges, e.g. ``0,2,5`` or ``0-3,7``.

    Returns sorted distinct indices; a bad item or an index outside ``0..num_layers-1`` raises ConfigError.
    """
    out: set[int] = set()
    for item in (part.strip() for part in str(spec).split(",")):
        if not item:
            continue
        lo, sep, hi = item.partition("-")
        if not lo.strip().isdigit() or (sep and not hi.strip().isdigit()):
            raise ConfigError(f"--layers {spec!r}: {item!r} is not a layer index or a range like 0-3")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ConfigError(f"--layers {spec!r}: the range {item!r} runs backwards; write {last}-{first}")
        out.update(range(first, last + 1))
    return _check_layers(sorted(out), num_layers, repr(spec))


def _check_layers(layers: list[int], num_layers: int, shown: str) -> list[int]:
    if not layers:
        raise ConfigError("--layers selects no layer")
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ConfigError(f"--layers {shown}: {', '.join(map(str, bad))} out of range; this model has "
                          f"{num_layers} layers (0..{num_layers - 1})")
    return layers


# -- ranking policies -------------------------------------------------------------------------------
@register_policy("top-k", "the k most important layers by the metric (Act-LoRA)", defaults.RANKING_METRIC)
def top_k(card: LayerCard, metric: str, k: int) -> Pick:
    """The ``k`` layers ranked highest by ``metric`` (Act-LoRA's top-k selection); ties keep lower indices."""
    L = card.num_layers
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 1 <= k <= L:
        raise ConfigError(f"--k must be in 1..{L} for this model ({L} layers), got {k}")
    return Pick(card.order(metric)[:int(k)])


@register_policy("threshold", "the fewest top layers holding a share of total importance (Act-LoRA)",
                 defaults.RANKING_METRIC)
def threshold(card: LayerCard, metric: str, share: float) -> Pick:
    """Act-LoRA's cumulative-importance mapping: the fewest top layers whose share of the total importance
    (``card.importance(metric)``) reaches ``share``; agrees with the card's ``cumulative`` table."""
    if isinstance(share, bool) or not isinstance(share, numbers.Real) or not 0 < share <= 1:
        raise ConfigError(f"--share must be in (0, 1] (a share of total importance), got {share}")
    importance, order = card.importance(metric), card.order(metric)
    total = sum(importance)
    if total <= 0:  # every layer equally (un)important: as the card's table, take them all
        return Pick(order)
    acc, n = 0.0, 0
    while n < len(order) and acc / total < share - 1e-9:  # same tolerance as card.cumulative_table
        acc += importance[order[n]]
        n += 1
    return Pick(order[:max(n, 1)])


@register_policy("ratio", "a fixed fraction of the layers, most important first (CKA layer selection)", "cka")
def ratio(card: LayerCard, metric: str, ratio: float = 0.5, exclude_first: bool = False) -> Pick:
    """The CKA layer-selection rule as its authors run it: keep ``floor(ratio * L)`` (at least 1) layers, most
    important first, among the layers where the metric is defined. For an encoder's CKA the first block's
    input is the same [CLS] embedding for every example, so its CKA is undefined: leaving it out is exactly
    the authors' "skip the top-ranked layer" for encoders. ``exclude_first`` never adapts layer 0."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 < ratio <= 1:
        raise ConfigError(f"--ratio must be in (0, 1] (the fraction of layers to keep), got {ratio}")
    L, values = card.num_layers, card.values(metric)
    candidates = [i for i in card.order(metric) if values[i] is not None and not (exclude_first and i == 0)]
    if not candidates:
        raise ConfigError(f"--policy ratio: {metric} is undefined at every layer"
                          + (" but layer 0, which --exclude-first leaves out" if exclude_first else ""))
    keep = min(max(1, math.floor(ratio * L + 1e-9)), len(candidates))
    return Pick(candidates[:keep])


def random_layers(num_layers: int, k: int, draw: int = 0) -> list[int]:
    """``k`` distinct layers of ``num_layers`` drawn uniformly with seed ``draw`` (sorted)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_layers:
        raise ConfigError(f"--k must be a whole number in 1..{num_layers} (the model's layers), got {k!r}")
    if isinstance(draw, bool) or not isinstance(draw, int) or draw < 0:
        raise ConfigError(f"--draw must be a whole number >= 0, got {draw!r}")
    return sorted(random.Random(draw).sample(range(num_layers), k))


@register_policy("random", "k layers drawn at random with --draw (the control every selection must beat)", None)
def random_k(card: LayerCard, metric: None, k: int, draw: int = 0) -> Pick:
    """LISA-style random layers: the baseline a measured choice of the same size has to beat."""
    return Pick(random_layers(card.num_layers, k, draw))


@register_policy("all", "every layer (uniform LoRA)", None)
def all_layers(card: LayerCard, metric: None) -> Pick:
    """Every block: uniform LoRA, the baseline every selection is compared with."""
    return Pick(range(card.num_layers))


@register_policy("manual", "the layers given with --layers", None)
def manual(card: LayerCard, metric: None, layers: str | Sequence[int]) -> Pick:
    """Exactly ``layers``: a list of indices or a ``--layers`` spec such as ``0,2,5`` or ``0-3``."""
    if isinstance(layers, str):
        return Pick(parse_layers(layers, card.num_layers))
    chosen = sorted(set(int(i) for i in layers))
    return Pick(_check_layers(chosen, card.num_layers, ",".join(map(str, chosen))))


# -- priced policies (knapsack over the card's cost table) --------------------------------------------
_COST_KEYS = ("params", "adapter_flops", "backward_depth_flops")


def _cost_table(card: LayerCard, costs: dict[str, Any] | None) -> dict[str, Any] | None:
    """``costs`` if given, else the card's ``cost`` metric extras, else None; lengths checked against the card."""
    if costs is None:
        costs = card.metrics.get("cost", {}).get("extras") or None
        if costs is None:
            return None
    missing = [k for k in _COST_KEYS if k not in costs]
    if missing:
        raise ConfigError(f"the cost table lacks {', '.join(missing)}; build it with layerwise.card.cost.layer_costs")
    bad = [k for k in _COST_KEYS if len(costs[k]) != card.num_layers]
    if bad:
        raise ConfigError(f"the cost table has {len(costs[bad[0]])} layers but the card has {card.num_layers}")
    return costs


def _need_costs(card: LayerCard, costs: dict[str, Any] | None, policy: str) -> dict[str, Any]:
    table = _cost_table(card, costs)
    if table is None:
        raise ConfigError(f"policy {policy!r} prices layers with the card's 'cost' metric, which this card "
                          f"lacks: make the card with the cost metric (`layerwise card --metrics ...,cost`) "
                          f"or pass costs=layerwise.card.cost.layer_costs(stack, rank, targets)")
    return table


_Point = tuple[float, float, tuple[int, ...]]
"""(cost, importance, layers) of one set of layers."""


def _prune(points: list[_Point]) -> list[_Point]:
    """Non-dominated points by increasing cost (strictly increasing importance; the cheaper one on a tie)."""
    out: list[_Point] = []
    for point in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or point[1] > out[-1][1]:
            out.append(point)
    return out


def _front(values: Sequence[float], weights: Sequence[float], depth: Sequence[float],
           cap: float = math.inf) -> list[_Point]:
    """Exact importance/cost front of the non-empty layer sets costing at most ``cap``, where a set costs
    the sum of its ``weights`` plus the ``depth`` of its lowest layer (the backward depth, paid once).

    Sweeps the lowest layer m from the top down, keeping the exact front of the sets above m: every set
    is its lowest layer plus a set above it, and a dominated set above m stays dominated with m added.
    """
    above: list[_Point] = [(0, 0.0, ())]  # front of sets of layers > m, the empty set included
    points: list[_Point] = []
    for m in reversed(range(len(values))):
        base = depth[m] + weights[m]
        points += [(base + c, values[m] + v, (m, *s)) for c, v, s in above if base + c <= cap]
        above = _prune(above + [(c + weights[m], v + values[m], (m, *s))
                                for c, v, s in above if c + weights[m] <= cap])
    return _prune(points)


def _priced(card: LayerCard, metric: str, costs: dict[str, Any], by: str) -> tuple[list, list, list]:
    """(importance, weights, depth) for pricing by ``params`` (no depth) or ``flops`` (adapter + depth)."""
    importance = card.importance(metric)
    if by == "params":
        return importance, list(costs["params"]), [0] * card.num_layers
    return importance, list(costs["adapter_flops"]), list(costs["backward_depth_flops"])


@register_policy("budget", "the most importance under a parameter or FLOP cap (Layer Card)", "resnorm")
def budget(card: LayerCard, metric: str, max_params: int | None = None, max_flops: int | None = None,
           params_share: float | None = None, costs: dict[str, Any] | None = None) -> Pick:
    """The Layer Card budget rule: the layer set with the most total importance whose trainable adapter
    parameters stay under ``max_params`` (or under ``params_share`` of uniform LoRA's: every layer's), or
    whose per-token training FLOPs (adapters plus the backward depth to the lowest selected layer, counted
    once) stay under ``max_flops``. Solved exactly (a 0/1 knapsack over Pareto-pruned partial sets); among
    equally important sets the cheapest wins. Without a cap, ``params_share`` is
    :data:`~layerwise.settings.defaults.BUDGET_PARAMS_SHARE` (half)."""
    if sum(x is not None for x in (max_params, max_flops, params_share)) > 1:
        raise ConfigError("policy 'budget' takes one of --max-params, --params-share or --max-flops, not several")
    if max_params is None and max_flops is None and params_share is None:
        from layerwise.settings.defaults import BUDGET_PARAMS_SHARE

        params_share = BUDGET_PARAMS_SHARE
    if params_share is not None:
        if isinstance(params_share, bool) or not isinstance(params_share, numbers.Real) \
                or not 0 < params_share <= 1:
            raise ConfigError(f"--params-share must be in (0, 1] (a share of uniform LoRA's adapter "
                              f"parameters), got {params_share!r}")
        max_params = int(params_share * sum(_need_costs(card, costs, "budget")["params"]))
    by, cap = ("params", max_params) if max_params is not None else ("flops", max_flops)
    flag = _flag(f"max_{by}") if params_share is None else "--params-share"
    if isinstance(cap, bool) or not isinstance(cap, numbers.Real) or math.isnan(cap):
        raise ConfigError(f"{flag} must be a number, got {cap!r}")
    values, weights, depth = _priced(card, metric, _need_costs(card, costs, "budget"), by)
    single = [d + w for d, w in zip(depth, weights)]
    cheapest = min(range(len(single)), key=single.__getitem__)
    if cap < single[cheapest]:
        raise ConfigError(f"{flag} {cap:,} is below the cheapest single layer (layer {cheapest}: "
                          f"{single[cheapest]:,} {by}); use {flag} {single[cheapest]} or more")
    best = _front(values, weights, depth, cap)[-1]
    return Pick(best[2], extra={"params_share": params_share} if params_share is not None else {})


@register_policy("pareto", "a point of the importance/FLOPs Pareto front chosen by --objective (Layer Card)",
                 "resnorm")
def pareto(card: LayerCard, metric: str, objective: str = "balanced", costs: dict[str, Any] | None = None) -> Pick:
    """The Layer Card trade-off: the exact front of layer sets by total importance against per-token
    training FLOPs, and one point of it. ``performance``: the cheapest point with at least 95% of the
    front's maximum importance; ``cost``: the cheapest with at least 50%; ``balanced``: the knee, the point
    maximising normalised importance minus normalised cost (both scaled to [0, 1] over the front)."""
    if objective not in OBJECTIVES:
        raise ConfigError(f"--objective {objective!r} is unknown; choose from: {', '.join(OBJECTIVES)}")
    front = _front(*_priced(card, metric, _need_costs(card, costs, "pareto"), "flops"))
    chosen = _on_front(front, objective)
    table = [{"layers": list(s), "importance": v, "flops": c} for c, v, s in front]
    return Pick(front[chosen][2], {"front": table})


def _on_front(front: list[_Point], objective: str) -> int:
    """Index of the front point (sorted by increasing cost and importance) that ``objective`` picks."""
    assert front, "the front of a non-empty card has a point"
    if objective in _SHARE_OF_MAX:
        need = _SHARE_OF_MAX[objective] * front[-1][1]
        return next(i for i, (_, v, _) in enumerate(front) if v >= need - 1e-12 * abs(need))
    (c0, v0, _), (c1, v1, _) = front[0], front[-1]
    span_c, span_v = (c1 - c0) or 1, (v1 - v0) or 1
    scores = [(v - v0) / span_v - (c - c0) / span_c for c, v, _ in front]
    return max(range(len(front)), key=lambda i: (scores[i], -i))  # the cheaper point on a tie
