"""Which layers get an adapter (a policy and its options) and which adapter they get."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from layerwise.runtime.errors import ConfigError
from layerwise.settings.lalora import CONTRIBUTIONS, DEFAULT_GAMMA, RANK_SCALES, check_settings
from layerwise.settings.fields import at_least, finite_numbers, flag, flag_name, one_of

__all__ = ["SelectionChoice", "AdapterChoice", "AdaptiveRanks", "parse_ranks", "OBJECTIVES", "CONTRIBUTIONS",
           "RANK_SCALES", "ADAPTIVE"]

OBJECTIVES = ("performance", "balanced", "cost")
"""``--objective`` choices of the ``pareto`` policy."""
ADAPTIVE = "adaptive"
"""The old ``--ranks`` value that turned on La-LoRA (now ``--adaptive-ranks``)."""


@dataclass(frozen=True)
class SelectionChoice:
    """Which layers get adapters: a policy over a Layer Card, with its options."""

    policy: str = "all"
    """top-k, threshold, ratio, budget, pareto, random, all (uniform LoRA) or manual; see --list-policies"""
    metric: str | None = None
    """card metric the policy ranks by (each policy has a default)"""
    card: str | None = None
    """card.json (or its folder) made for this model; made on the fly when a policy needs one"""
    k: int | None = None
    """top-k and random: number of layers"""
    share: float | None = None
    """threshold: share of total importance, in (0, 1]"""
    ratio: float | None = None
    """ratio: fraction of layers kept (CKA method: 0.5)"""
    exclude_first: bool | None = None
    """ratio: never pick layer 0"""
    max_params: int | None = None
    """budget: cap on trainable adapter parameters"""
    max_flops: float | None = None
    """budget: cap on per-token training FLOPs"""
    params_share: float | None = None
    """budget: cap on trainable adapter parameters as a share of uniform LoRA's, in (0, 1] (0.5 when budget has
    no cap)"""
    objective: str | None = flag(None, choices=OBJECTIVES)
    """pareto: which point of the importance/cost front (default balanced)"""
    layers: str | None = None
    """manual: layers such as 3,4,5 or 2-5"""
    draw: int | None = None
    """random: seed of the draw of layers (default 0)"""

    def __post_init__(self) -> None:
        from layerwise.selection.policies import POLICIES

        finite_numbers(self)
        if self.policy not in POLICIES:
            raise ConfigError(f"{flag_name(self, 'policy')} must be one of {', '.join(POLICIES)}, "
                              f"got {self.policy!r}")
        if self.k is not None:
            at_least(self, "k", 1)
        if self.draw is not None:
            at_least(self, "draw", 0)
        if self.share is not None and not (isinstance(self.share, (int, float)) and 0.0 < self.share <= 1.0):
            raise ConfigError(f"{flag_name(self, 'share')} must be in (0, 1], got {self.share!r}")
        if self.params_share is not None and not (isinstance(self.params_share, (int, float))
                                                  and 0.0 < self.params_share <= 1.0):
            raise ConfigError(f"{flag_name(self, 'params_share')} must be in (0, 1], got {self.params_share!r}")
        if self.ratio is not None and not (isinstance(self.ratio, (int, float)) and 0.0 < self.ratio <= 1.0):
            raise ConfigError(f"{flag_name(self, 'ratio')} must be in (0, 1], got {self.ratio!r}")
        for name in ("max_params", "max_flops"):
            if getattr(self, name) is not None:
                at_least(self, name, 1 if name == "max_params" else 1.0)
        if self.objective is not None:
            one_of(self, "objective", OBJECTIVES)

    @property
    def options(self) -> dict[str, Any]:
        """The policy options that are set, as :func:`layerwise.selection.policies.select` takes them."""
        values = {"k": self.k, "share": self.share, "ratio": self.ratio, "exclude_first": self.exclude_first,
                  "max_params": self.max_params, "params_share": self.params_share,
                  "max_flops": int(self.max_flops) if self.max_flops is not None else None,
                  "objective": self.objective, "layers": self.layers, "draw": self.draw}
        return {k: v for k, v in values.items() if v is not None}

    def uniform(self) -> "SelectionChoice":
        """Uniform LoRA: every layer, no card."""
        return SelectionChoice("all")


def parse_ranks(spec: str | dict | None) -> dict[int, int] | None:
    """``--ranks 3:16,4:8`` -> {3: 16, 4: 8}; errors name the flag."""
    if spec is None or isinstance(spec, dict):
        return spec
    if not spec.strip():
        return None
    out: dict[int, int] = {}
    for part in spec.split(","):
        try:
            layer, rank = part.split(":")
            out[int(layer)] = int(rank)
        except ValueError as err:
            raise ConfigError(f"--ranks takes layer:rank pairs like 3:16,4:8, got {part!r}") from err
    return out


@dataclass(frozen=True)
class AdaptiveRanks:
    """La-LoRA: ranks that adapt per block during training (on with ``--adaptive-ranks``)."""

    r_max: int | None = None
    """largest rank of a block; the adapter is built at this rank (default: --rank)"""
    gamma: float | None = None
    """budget growth rate (Eq. 5), > 0; default 2.0: the budget ends near L * (layer-value growth) ** gamma"""
    rank_interval: int = 1
    """reallocate ranks every N steps"""
    car: bool = True
    """start the budget at one rank per block (the paper's); --no-car starts at r_max per block"""
    fidelity: bool = True
    """weight the contributions by their fidelity (Eq. 10); --no-fidelity is the paper's ablation"""
    contribution: str = flag("norm", choices=CONTRIBUTIONS)
    """truncated norms (norm) or accumulated Fisher information (fisher)"""
    rank_scale: str = flag("rmax", choices=RANK_SCALES)
    """LoRA scaling alpha/r_max (rmax, the paper's) or alpha/r_i (ri)"""

    def __post_init__(self) -> None:
        finite_numbers(self)
        check_settings(1 if self.r_max is None else self.r_max, self.gamma_or_default, self.rank_interval,
                       self.contribution, self.rank_scale)

    @property
    def gamma_or_default(self) -> float:
        """``gamma``, or :data:`layerwise.train.lalora.allocator.DEFAULT_GAMMA` when unset."""
        return DEFAULT_GAMMA if self.gamma is None else self.gamma


@dataclass(frozen=True)
class AdapterChoice:
    """The peft adapter put on the selected layers."""

    method: str = "lora"
    """lora, dora, rslora, pissa, loha, lokr, vera, ia3 or adalora"""
    targets: str = "q,v"
    """projections adapted: q,v, attn, mlp, all-linear, or a comma list of roles
    (q,k,v,o,qkv,gate,up,down,gate_up)"""
    rank: int = 8
    """adapter rank (La-LoRA: r_max unless --r-max is given)"""
    alpha: float | None = None
    """LoRA alpha (default 2 x rank)"""
    ranks: dict[int, int] | None = flag(None, parse=parse_ranks, metavar="L:R,...")
    """per-layer ranks, e.g. 3:16,4:8 (those layers must be selected)"""
    rank_budget: int | None = None
    """total rank over the selected layers, split in proportion to a card metric (--rank-metric) into
    per-layer ranks (each >= 1, summing to the budget); --rank x the number of selected layers has uniform
    rank's parameter count when the blocks have equal widths"""
    rank_metric: str | None = None
    """card metric whose importance drives --rank-budget's split (default: the policy's metric, else
    act_energy, the variance of each block's input)"""
    dropout: float = 0.0
    """adapter dropout"""
    adaptive: AdaptiveRanks | None = None
    """La-LoRA: ranks that adapt per block during training (--method lora; the adapter is built at --r-max)"""

    FLAGS: ClassVar[dict[str, str]] = {"adaptive": "adaptive-ranks"}

    def __post_init__(self) -> None:
        from layerwise.adapters.bridge import METHODS

        finite_numbers(self)
        if self.ranks == ADAPTIVE:  # the old API spelling
            object.__setattr__(self, "ranks", None)
            object.__setattr__(self, "adaptive", self.adaptive or AdaptiveRanks())
        if self.method not in METHODS:
            raise ConfigError(f"{flag_name(self, 'method')} must be one of {', '.join(METHODS)}, got {self.method!r}")
        at_least(self, "rank", 1)
        if self.alpha is not None:
            at_least(self, "alpha", 0.0)
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"{flag_name(self, 'dropout')} must be in [0, 1), got {self.dropout!r}")
        if self.ranks is not None:
            object.__setattr__(self, "ranks", parse_ranks(self.ranks))
            for layer, r in self.ranks.items():
                if r < 1 or layer < 0:
                    raise ConfigError(f"{flag_name(self, 'ranks')} takes layer:rank pairs with layer >= 0 and "
                                      f"rank >= 1, got {layer}:{r}")
        self._check_budget()
        if self.adaptive is not None:
            if self.method != "lora":
                raise ConfigError(f"--adaptive-ranks (La-LoRA) needs {flag_name(self, 'method')} lora, got "
                                  f"{flag_name(self, 'method')} {self.method}")
            if self.ranks:
                raise ConfigError(f"--adaptive-ranks and {flag_name(self, 'ranks')} exclude each other: La-LoRA "
                                  "chooses the per-layer ranks")

    def _check_budget(self) -> None:
        """--rank-budget and --rank-metric: a whole number >= 1, a registered metric, a method with
        per-layer ranks, and neither --ranks nor La-LoRA beside it."""
        from layerwise.adapters.bridge import METHODS
        from layerwise.card.metrics import IMPORTANCE

        budget, metric = flag_name(self, "rank_budget"), flag_name(self, "rank_metric")
        if self.rank_metric is not None:
            if self.rank_budget is None:
                raise ConfigError(f"{metric} chooses what drives {budget}; give {budget} too (a total rank)")
            one_of(self, "rank_metric", tuple(IMPORTANCE))
        if self.rank_budget is None:
            return
        at_least(self, "rank_budget", 1)
        if self.ranks:
            raise ConfigError(f"{budget} and {flag_name(self, 'ranks')} exclude each other: give a total rank to "
                              "split, or the per-layer ranks")
        if self.adaptive is not None:
            raise ConfigError(f"{budget} and --adaptive-ranks exclude each other: La-LoRA chooses the ranks while "
                              "training")
        if not METHODS[self.method].supports_ranks:
            allowed = ", ".join(n for n, m in METHODS.items() if m.supports_ranks)
            raise ConfigError(f"{budget} needs per-layer ranks, which {flag_name(self, 'method')} {self.method} "
                              f"does not have; methods with per-layer ranks: {allowed}")

    @property
    def is_adaptive(self) -> bool:
        """True for La-LoRA ranks."""
        return self.adaptive is not None

    @property
    def r_max(self) -> int:
        """The rank the adapter is built at: La-LoRA's r_max (default --rank), else --rank."""
        if self.adaptive is not None and self.adaptive.r_max is not None:
            return self.adaptive.r_max
        return self.rank
