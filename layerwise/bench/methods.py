"""The bench's methods: a registry of what each (method, seed) cell trains.

A bench method is one decorated function ``fn(settings, k) -> (SelectionChoice | None, AdapterChoice | None)``
(``None, None`` is full fine-tuning); a name holding ``{k}`` (``actnorm-top{k}``) is one method per ``--ks``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from layerwise.runtime.errors import ConfigError
from layerwise.settings import AdapterChoice, AdaptiveRanks, SelectionChoice

__all__ = ["BenchSettings", "BenchMethod", "CellJob", "BENCH_METHODS", "BASELINE", "register_bench_method",
           "find_method", "resolve_methods", "build_cell"]

BASELINE = "lora"
"""The method every other one is compared with (uniform LoRA over all layers)."""
_K = "{k}"
"""Placeholder of a method parametrised by ``--ks`` (``actnorm-top{k}`` is ``actnorm-top1``, ``actnorm-top2``...)."""


@dataclass(frozen=True)
class BenchSettings:
    """What every method of one bench shares besides the training config."""

    rank: int = 8
    """Adapter rank (``--rank``); La-LoRA's r_max."""
    targets: str = "q,v"
    """Projections adapted (``--targets``)."""
    card: str | None = None
    """The shared ``card.json``; card-based methods need it."""
    full_lr: float | None = None
    """Peak learning rate of full fine-tuning (``--full-lr``); ``None``: the bench's ``--lr``."""
    num_layers: int | None = None
    """Blocks of the model (from the card); methods that size a rank budget by it need it."""


@dataclass(frozen=True)
class BenchMethod:
    """A registered bench method: ``fn(settings, k) -> (SelectionChoice | None, AdapterChoice | None)``."""

    name: str
    fn: Callable[[BenchSettings, int | None], tuple[Any, Any]]
    description: str
    card_metrics: tuple[str, ...] = ()
    """Card metrics the method ranks by; empty for methods that need no card."""
    train_overrides: tuple[tuple[str, Any], ...] = ()
    """``TrainConfig`` fields the method sets (``freeze-auto`` sets ``freeze='auto'``)."""

    @property
    def needs_card(self) -> bool:
        """True when the method selects layers from the Layer Card."""
        return bool(self.card_metrics)

    @property
    def takes_k(self) -> bool:
        """True for a method parametrised by ``--ks`` (its name holds ``{k}``)."""
        return _K in self.name


@dataclass(frozen=True)
class CellJob:
    """What one (method, seed) cell trains; ``selection``/``adapter`` None is full fine-tuning."""

    method: str
    selection: Any
    adapter: Any
    train_config: Any

    @property
    def full(self) -> bool:
        """Full fine-tuning: every parameter trained, no adapter."""
        return self.adapter is None


BENCH_METHODS: dict[str, BenchMethod] = {}


def register_bench_method(name: str, description: str, card_metrics: Sequence[str] = (),
                          train_overrides: dict[str, Any] | None = None) -> Callable:
    """Decorator adding ``fn(settings, k) -> (selection, adapter)`` to :data:`BENCH_METHODS`; ``train_overrides``
    are ``TrainConfig`` fields the method's cells train with."""

    def wrap(fn: Callable[[BenchSettings, int | None], tuple[Any, Any]]) -> Callable:
        BENCH_METHODS[name] = BenchMethod(name, fn, description, tuple(card_metrics),
                                          tuple((train_overrides or {}).items()))
        return fn

    return wrap


# -- the methods --------------------------------------------------------------------------------------
def _uniform(method: str, s: BenchSettings) -> tuple[Any, Any]:
    return SelectionChoice("all"), AdapterChoice(method, s.targets, s.rank)


def _from_card(s: BenchSettings, policy: str, options: dict[str, Any], metric: str | None = None) -> Any:
    if s.card is None:
        raise ConfigError(f"policy {policy!r} of this bench method needs the bench's Layer Card (card.json)")
    return SelectionChoice(policy, metric, s.card, **options)


@register_bench_method("full", "full fine-tuning: every parameter trained, no adapter")
def _full(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    return None, None


_UNIFORM_METHODS = {
    "lora": "LoRA on every layer (uniform LoRA, the baseline)",
    "adalora": "AdaLoRA on every layer (SVD-form LoRA, init rank --rank)",
    "ia3": "IA3 on every layer (learned scaling vectors)",
    "vera": "VeRA on every layer (shared random projections, trained scalings)",
    "loha": "LoHa on every layer (Hadamard product of low-rank updates)",
    "lokr": "LoKr on every layer (Kronecker product with a low-rank factor)",
    "dora": "DoRA on every layer (LoRA direction plus learned magnitude)",
}
"""peft methods benched on every layer, in table order (the bench method's name is the peft method's)."""
for _method, _description in _UNIFORM_METHODS.items():
    register_bench_method(_method, _description)(
        lambda s, k, method=_method: _uniform(method, s))
del _method, _description


def _top_k(s: BenchSettings, k: int | None, metric: str) -> tuple[Any, Any]:
    """LoRA on the top-k layers of the card by ``metric`` (the methods named ``<metric>-top{k}``)."""
    if k is None:
        raise ConfigError(f"{metric}-top{{k}} needs k: name it {metric}-top2 or give --ks")
    return _from_card(s, "top-k", {"k": k}, metric), AdapterChoice("lora", s.targets, s.rank)


register_bench_method("actnorm-top{k}", "LoRA on the top-k layers by activation norm (Act-LoRA; k from --ks)",
                      card_metrics=("actnorm",))(lambda s, k: _top_k(s, k, "actnorm"))
register_bench_method("snr-top{k}", "LoRA on the top-k layers by Spectrum's weight SNR (data-free; k from --ks)",
                      card_metrics=("snr",))(lambda s, k: _top_k(s, k, "snr"))


@register_bench_method("random{k}", "LoRA on k random layers, a new draw per seed (the control; k from --ks)")
def _random(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    if k is None:
        raise ConfigError("random{k} needs k: name it random3 or give --ks")
    return SelectionChoice("random", k=k, draw=0), AdapterChoice("lora", s.targets, s.rank)


@register_bench_method("cka", "LoRA on half of the layers ranked first by CKA, as its authors choose them (ratio "
                       "0.5; an encoder's block 0, whose CKA is undefined, is never chosen)", card_metrics=("cka",))
def _cka(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    return _from_card(s, "ratio", {"ratio": 0.5}, "cka"), AdapterChoice("lora", s.targets, s.rank)


@register_bench_method("actnorm-threshold", "LoRA on the fewest layers holding half of the total activation norm "
                       "(Act-LoRA's cumulative-importance rule at 50%)", card_metrics=("actnorm",))
def _threshold(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    return _from_card(s, "threshold", {"share": 0.5}, "actnorm"), AdapterChoice("lora", s.targets, s.rank)


@register_bench_method("budget", "LoRA on the Layer Card's most residual signal under half of uniform LoRA's "
                       "adapter parameters", card_metrics=("resnorm", "cost"))
def _budget(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    return _from_card(s, "budget", {"params_share": 0.5}), AdapterChoice("lora", s.targets, s.rank)


@register_bench_method("pareto", "LoRA on the Layer Card's balanced point of the importance/FLOPs front",
                       card_metrics=("resnorm", "cost"))
def _pareto(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    return _from_card(s, "pareto", {"objective": "balanced"}), AdapterChoice("lora", s.targets, s.rank)


@register_bench_method("lalora", "La-LoRA on every layer (ranks adapt per block during training)")
def _lalora(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    return SelectionChoice("all"), _lalora_adapter(s)


@register_bench_method("lalora-selected", "La-LoRA on the Layer Card's pareto-selected layers",
                       card_metrics=("resnorm", "cost"))
def _lalora_selected(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    return _from_card(s, "pareto", {"objective": "balanced"}), _lalora_adapter(s)


def _lalora_adapter(s: BenchSettings) -> Any:
    """La-LoRA (``--adaptive-ranks``) at r_max = ``--rank``."""
    return AdapterChoice("lora", s.targets, s.rank, adaptive=AdaptiveRanks(r_max=s.rank))


@register_bench_method("energy-ranks", "LoRA on every layer, ranks split from a total of --rank x layers by "
                       "act_energy (lora's parameter count)", card_metrics=("act_energy",))
def _energy_ranks(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    selection = _from_card(s, "all", {})
    if s.num_layers is None:
        raise ConfigError("energy-ranks needs the model's number of blocks (BenchSettings.num_layers, from the card)")
    budget = s.rank * s.num_layers  # uniform rank's total over every block: lora's parameter count
    return selection, AdapterChoice("lora", s.targets, s.rank, rank_budget=budget, rank_metric="act_energy")


@register_bench_method("freeze-auto", "LoRA on every layer, blocks frozen bottom-up during training when their "
                       "gradient-norm change falls below the percentile (--freeze auto; AutoFreeze's rule)",
                       train_overrides={"freeze": "auto"})
def _freeze_auto(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    return SelectionChoice("all"), AdapterChoice("lora", s.targets, s.rank)


@register_bench_method("freeze-card", "LoRA on every layer, blocks frozen bottom-up at fractions of the budget in "
                       "the Layer Card's order (--freeze card, by resnorm)", card_metrics=("resnorm",),
                       train_overrides={"freeze": "card"})
def _freeze_card(s: BenchSettings, k: int | None) -> tuple[Any, Any]:
    return _from_card(s, "all", {}), AdapterChoice("lora", s.targets, s.rank)


# -- method names ---------------------------------------------------------------------------------------
def find_method(name: str) -> tuple[BenchMethod, int | None]:
    """The registered method of a concrete name and its k (``actnorm-top3`` -> (actnorm-top{k}, 3))."""
    method = BENCH_METHODS.get(name)
    if method is not None and not method.takes_k:
        return method, None
    for method in BENCH_METHODS.values():
        if method.takes_k:
            head, tail = method.name.split(_K)
            middle = name[len(head): len(name) - len(tail)] if len(name) > len(head) + len(tail) else ""
            if name.startswith(head) and name.endswith(tail) and middle.isdigit():
                return method, int(middle)
    raise ConfigError(f"--methods: unknown method {name!r}; registered: {', '.join(BENCH_METHODS)} "
                      f"(see --list-methods)")


def resolve_methods(spec: str | Sequence[str], ks: Sequence[int] = (1, 2, 3)) -> list[str]:
    """Concrete method names of ``--methods`` (a comma list or ``all``): a ``{k}`` method (or its name without
    ``{k}``, e.g. ``actnorm-top``) becomes one method per ``--ks``; duplicates are dropped, order kept."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if names == ["all"]:
        names = list(BENCH_METHODS)
    if not names:
        raise ConfigError(f"--methods is empty; give a comma list or 'all' of: {', '.join(BENCH_METHODS)}")
    templates = {m.name: m for m in BENCH_METHODS.values() if m.takes_k}
    templates.update({m.name.replace(_K, ""): m for m in list(templates.values())})
    out: list[str] = []
    for name in names:
        if name in templates:
            if not ks:
                raise ConfigError(f"--methods {name} needs --ks (e.g. --ks 1,2,3)")
            out += [templates[name].name.replace(_K, str(k)) for k in ks]
        else:
            find_method(name)
            out.append(name)
    return list(dict.fromkeys(out))


def build_cell(name: str, seed: int, train_config: Any, settings: BenchSettings) -> CellJob:
    """The job of cell (``name``, ``seed``): the method's selection and adapter, ``train_config`` at ``seed``."""
    method, k = find_method(name)
    selection, adapter = method.fn(settings, k)
    if selection is not None and selection.policy == "random":
        selection = replace(selection, draw=int(seed))  # each seed is another draw of layers
    job = CellJob(name, selection, adapter, replace(train_config, seed=int(seed), **dict(method.train_overrides)))
    if job.full and settings.full_lr is not None:
        job = replace(job, train_config=replace(job.train_config, lr=settings.full_lr))
    return job
