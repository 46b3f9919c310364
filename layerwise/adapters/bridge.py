"""The adapter bridge: a layer selection (+ per-layer ranks) -> a peft config, a peft model, a check.

A selection is a list of block indices of a :class:`~layerwise.models.layers.LayerStack` and a ``--targets``
spec (roles such as ``q,v`` or a group such as ``mlp``). It becomes a peft config through peft's own
restriction mechanisms:

* ``target_modules`` lists the *full* module names of the chosen linears (from
  :meth:`LayerStack.target_names`). peft takes a listed name that equals a module name as an exact
  match, so a role never leaks into a sibling (BERT's ``output.dense`` is a suffix of
  ``attention.output.dense``; a full name is not);
* ``layers_to_transform`` + ``layers_pattern`` (the stack's last path component) record the chosen
  blocks where the method's config has them, so the saved ``adapter_config.json`` says which blocks
  were adapted;
* per-layer ranks go into ``rank_pattern`` / ``alpha_pattern``. peft matches a key as the regex
  ``(.*\\.)?(key)$`` against a module name (``peft.utils.other.get_pattern_key``), so each key is the
  ``re.escape``-d full module name: it matches that module and nothing else (``layers.1.`` never
  matches ``layers.11.``).

Every method is one decorated builder in :data:`METHODS`. After ``get_peft_model``,
:func:`apply_adapter` checks that the modules carrying an adapter are exactly the selection, because
peft accepts patterns that match fewer modules than intended without a word.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from typing import TYPE_CHECKING

from layerwise.runtime.errors import ConfigError, LayerwiseError
from layerwise.models.layers import (DEFAULT_TARGETS, OTHER, ROLES, TARGET_GROUPS, LayerStack, parse_targets,
                                     unwrap_model)
from layerwise.runtime.quiet import peft_wrapping

if TYPE_CHECKING:  # annotations only: peft and torch are imported when an adapter is built or applied, so that
    import peft   # the registry, the names and the checks of the settings cost no import of either
    import torch


def _peft():  # type: ignore[no-untyped-def]
    """The peft package, imported when first needed."""
    import peft

    return peft


def _base_tuner_layer() -> type:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return BaseTunerLayer

__all__ = [
    "METHODS",
    "MLP_ROLES",
    "AdapterMethod",
    "AdapterSpec",
    "AdapterMismatchError",
    "register_method",
    "build_peft_config",
    "expected_adapter_modules",
    "apply_adapter",
    "adapted_modules",
    "verify_adapted",
    "task_type_for",
]

MLP_ROLES: frozenset[str] = frozenset({"up", "down", "gate", "gate_up"})
"""Roles IA3 scales on the input side (its ``feedforward_modules``); all other roles on the output side."""

_TASK_BY_SUFFIX: tuple[tuple[str, str], ...] = (
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),  # GPT-2's causal-LM class predates the *ForCausalLM naming
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
)


class AdapterMismatchError(LayerwiseError):
    """The modules that carry an adapter differ from the selection; the message lists both differences."""


@dataclass(frozen=True)
class AdapterSpec:
    """A selection resolved to module names: the plain values every method builder reads."""

    target_modules: tuple[str, ...]
    """Full module names (relative to the transformers model) that must get an adapter, in model order."""
    layers: tuple[int, ...]
    """Selected block indices, sorted, without duplicates."""
    layers_pattern: str
    """peft's ``layers_pattern``: the last component of the block-list path (``layer``, ``layers``, ``h``)."""
    rank: int
    """Rank of every target without a per-layer rank (``--rank``)."""
    alpha: float | None
    """Explicit ``--alpha`` (used for every module), or None for ``2 * rank`` per module."""
    module_ranks: Mapping[str, int]
    """Full module name -> rank, for the targets in blocks given a per-layer rank (``--ranks``)."""
    feedforward_modules: tuple[str, ...]
    """The targets whose role is an MLP role (:data:`MLP_ROLES`): IA3's ``feedforward_modules``."""
    fan_in_fan_out: bool
    """True when the targets are transformers ``Conv1D`` layers (GPT-2), which store weights (in, out)."""
    dropout: float = 0.0
    """``--dropout``: LoRA-family input dropout, LoHa/LoKr rank dropout, VeRA dropout."""
    task_type: str | None = None
    """peft task type (``SEQ_CLS``, ``CAUSAL_LM``, ...); SEQ_CLS also trains the classifier head."""
    total_steps: int | None = None
    """Planned training steps; AdaLoRA's rank schedule needs them."""
    modules_to_save: tuple[str, ...] | None = None
    """Extra modules trained in full and saved with the adapter (peft adds the head for SEQ_CLS)."""

    @property
    def base_alpha(self) -> float:
        """Alpha of the modules without a per-layer rank: ``--alpha``, else ``2 * rank``."""
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank

    @property
    def rank_pattern(self) -> dict[str, int]:
        """peft ``rank_pattern``: escaped full module name -> rank (matches exactly one module)."""
        return {re.escape(name): r for name, r in self.module_ranks.items()}

    @property
    def alpha_pattern(self) -> dict[str, float]:
        """peft ``alpha_pattern``: ``2 * r_i`` per module, so alpha/r stays 2; empty with an explicit ``--alpha``."""
        if self.alpha is not None:
            return {}
        return {re.escape(name): 2.0 * r for name, r in self.module_ranks.items()}

    def common(self) -> dict:
        """Config fields shared by every peft method: targets, task type, extra trainable modules."""
        out: dict = {"target_modules": list(self.target_modules), "task_type": self.task_type}
        if self.modules_to_save:
            out["modules_to_save"] = list(self.modules_to_save)
        return out

    def restricted(self) -> dict:
        """:meth:`common` plus ``layers_to_transform``/``layers_pattern`` (for methods that take them)."""
        return {**self.common(), "layers_to_transform": list(self.layers), "layers_pattern": self.layers_pattern}


@dataclass(frozen=True)
class AdapterMethod:
    """A registered peft method: its builder and what it supports."""

    name: str
    """Name accepted by ``--method``."""
    build: Callable[..., peft.PeftConfig]
    """``build(spec: AdapterSpec, **method_kwargs) -> peft.PeftConfig``."""
    supports_ranks: bool
    """Whether per-layer ranks (``--ranks``) can be expressed (``rank_pattern``)."""
    description: str
    """One line for ``--help`` and docs."""


METHODS: dict[str, AdapterMethod] = {}
"""Registry of adapter methods by name, filled by :func:`register_method`."""


def register_method(
    name: str, supports_ranks: bool, description: str
) -> Callable[[Callable[..., peft.PeftConfig]], Callable[..., peft.PeftConfig]]:
    """Decorator registering ``build(spec, **method_kwargs) -> peft.PeftConfig`` under ``name`` in :data:`METHODS`."""

    def decorate(build: Callable[..., peft.PeftConfig]) -> Callable[..., peft.PeftConfig]:
        if name in METHODS:
            raise ValueError(f"adapter method {name!r} is already registered")
        METHODS[name] = AdapterMethod(name=name, build=build, supports_ranks=supports_ranks, description=description)
        return build

    return decorate


# Methods: one builder each.


def _lora_fields(spec: AdapterSpec) -> dict:
    """Fields shared by LoraConfig and its variants (DoRA, rsLoRA, PiSSA)."""
    return {
        **spec.restricted(), "r": spec.rank, "lora_alpha": spec.base_alpha, "lora_dropout": spec.dropout,
        "rank_pattern": spec.rank_pattern, "alpha_pattern": spec.alpha_pattern, "fan_in_fan_out": spec.fan_in_fan_out,
    }


@register_method("lora", supports_ranks=True, description="LoRA: low-rank update B A, scaled by alpha/r")
def _lora(spec: AdapterSpec, **kwargs) -> peft.PeftConfig:
    return _peft().LoraConfig(**_lora_fields(spec), **kwargs)


@register_method("dora", supports_ranks=True, description="DoRA: LoRA on the direction plus a learned magnitude")
def _dora(spec: AdapterSpec, **kwargs) -> peft.PeftConfig:
    return _peft().LoraConfig(**_lora_fields(spec), use_dora=True, **kwargs)


@register_method("rslora", supports_ranks=True, description="rsLoRA: LoRA scaled by alpha/sqrt(r)")
def _rslora(spec: AdapterSpec, **kwargs) -> peft.PeftConfig:
    return _peft().LoraConfig(**_lora_fields(spec), use_rslora=True, **kwargs)


@register_method("pissa", supports_ranks=True,
                 description="PiSSA: LoRA initialised from the top singular vectors (taken out of the base weight)")
def _pissa(spec: AdapterSpec, **kwargs) -> peft.PeftConfig:
    kwargs.setdefault("init_lora_weights", "pissa")
    return _peft().LoraConfig(**_lora_fields(spec), **kwargs)


def _lycoris_fields(spec: AdapterSpec) -> dict:
    """Fields shared by LoHa and LoKr; ``--dropout`` is their rank dropout (they have no input dropout)."""
    return {
        **spec.restricted(), "r": spec.rank, "alpha": spec.base_alpha, "rank_dropout": spec.dropout,
        "rank_pattern": spec.rank_pattern, "alpha_pattern": spec.alpha_pattern,
    }


@register_method("loha", supports_ranks=True, description="LoHa: Hadamard product of two low-rank updates")
def _loha(spec: AdapterSpec, **kwargs) -> peft.PeftConfig:
    return _peft().LoHaConfig(**_lycoris_fields(spec), **kwargs)


@register_method("lokr", supports_ranks=True, description="LoKr: Kronecker product with a low-rank factor")
def _lokr(spec: AdapterSpec, **kwargs) -> peft.PeftConfig:
    return _peft().LoKrConfig(**_lycoris_fields(spec), **kwargs)


@register_method("vera", supports_ranks=False,
                 description="VeRA: frozen shared random projections, trained per-layer scaling vectors")
def _vera(spec: AdapterSpec, **kwargs) -> peft.PeftConfig:
    _no_alpha(spec, "vera")
    # peft sizes the shared projections for the largest targeted layer; save_projection (default) keeps
    # them in the checkpoint so a reload does not depend on the PRNG.
    return _peft().VeraConfig(**spec.restricted(), r=spec.rank, vera_dropout=spec.dropout,
                           fan_in_fan_out=spec.fan_in_fan_out, **kwargs)


@register_method("ia3", supports_ranks=False,
                 description="IA3: learned scaling vectors (inputs of MLP layers, outputs of the others); no rank")
def _ia3(spec: AdapterSpec, **kwargs) -> peft.PeftConfig:
    _no_alpha(spec, "ia3")
    if spec.dropout:
        raise ConfigError(f"--dropout {spec.dropout} is not supported by --method ia3 (it has no dropout); use 0")
    return _peft().IA3Config(**spec.common(), feedforward_modules=list(spec.feedforward_modules),
                          fan_in_fan_out=spec.fan_in_fan_out, **kwargs)


@register_method("adalora", supports_ranks=False,
                 description="AdaLoRA: SVD-form LoRA, ranks pruned from --rank to target_r while training")
def _adalora(spec: AdapterSpec, **kwargs) -> peft.PeftConfig:
    steps = spec.total_steps
    if steps is None or steps < 1:
        raise ConfigError(
            f"--method adalora needs the number of training steps (total_steps, --steps >= 1), got {steps}"
        )
    # AdaLoRA's cubic budget schedule keeps init_r for tinit steps and target_r for the last tfinal steps;
    # 10% / 20% of training leave most steps to the rank allocation. Pruning every 1% of training.
    kwargs.setdefault("tinit", steps // 10)
    kwargs.setdefault("tfinal", steps // 5)
    kwargs.setdefault("deltaT", max(1, steps // 100))
    kwargs.setdefault("target_r", max(1, spec.rank // 2))
    return _peft().AdaLoraConfig(**spec.restricted(), init_r=spec.rank, lora_alpha=spec.base_alpha,
                              lora_dropout=spec.dropout, total_step=steps, fan_in_fan_out=spec.fan_in_fan_out,
                              **kwargs)


def _no_alpha(spec: AdapterSpec, method: str) -> None:
    if spec.alpha is not None:
        raise ConfigError(f"--alpha {spec.alpha} is not used by --method {method}; leave --alpha unset")


# Selection -> spec -> config.


def _roles(targets: str | Sequence[str]) -> tuple[str, ...]:
    """Roles from a ``--targets`` string, or a sequence of roles and group names."""
    if isinstance(targets, str):
        return parse_targets(targets)
    roles: list[str] = []
    for item in targets:
        if item in TARGET_GROUPS:
            roles.extend(TARGET_GROUPS[item])
        elif item in ROLES or item == OTHER:
            roles.append(item)
        else:
            raise ConfigError(f"--targets: unknown role {item!r}; allowed: {', '.join([*TARGET_GROUPS, *ROLES])}")
    if not roles:
        raise ConfigError("--targets is empty; give roles (q,v) or a group (attn, mlp, all-linear)")
    return tuple(dict.fromkeys(roles))


def _check_layers(stack: LayerStack, layers: Sequence[int]) -> tuple[int, ...]:
    chosen = tuple(sorted(set(int(i) for i in layers)))
    if not chosen:
        raise ConfigError("--layers: the layer selection is empty; choose at least one block index")
    bad = [i for i in chosen if not 0 <= i < len(stack)]
    if bad:
        raise ConfigError(
            f"--layers: index(es) {bad} out of range; {stack.model_class} has {len(stack)} blocks "
            f"(0..{len(stack) - 1})"
        )
    return chosen


def expected_adapter_modules(stack: LayerStack, layers: Sequence[int], targets: str | Sequence[str]) -> list[str]:
    """Full module names (relative to the transformers model) that must get an adapter, in model order.

    Raises :class:`ConfigError` naming ``--layers`` for an empty or out-of-range selection and
    ``--targets`` when the roles match no linear layer in the selected blocks.
    """
    chosen = _check_layers(stack, layers)
    roles = _roles(targets)
    names = stack.target_names(chosen, roles)
    if not names:
        present = sorted({lin.role for i in chosen for lin in stack.blocks[i].linears})
        raise ConfigError(
            f"--targets {_show(targets)} matches no linear layer in blocks {list(chosen)} of {stack.model_class}; "
            f"roles present there: {', '.join(present) or 'none'}"
        )
    return names


def _show(targets: str | Sequence[str]) -> str:
    return repr(targets if isinstance(targets, str) else ",".join(targets))


def _module_ranks(stack: LayerStack, chosen: Sequence[int], roles: Sequence[str],
                  ranks: Mapping[int, int] | None) -> dict[str, int]:
    """Full module name -> rank for the targets of every block with a per-layer rank."""
    if not ranks:
        return {}
    ranks = {int(i): int(r) for i, r in ranks.items()}  # keys may come from JSON as strings
    unselected = sorted(set(ranks) - set(chosen))
    if unselected:
        raise ConfigError(f"--ranks gives ranks for layer(s) {unselected} that are not selected ({list(chosen)})")
    low = {i: r for i, r in ranks.items() if r < 1}
    if low:
        raise ConfigError(f"--ranks: every rank must be >= 1, got {low}")
    return {name: r for i, r in sorted(ranks.items()) for name in stack.target_names([i], roles)}


def _uses_conv1d(stack: LayerStack, chosen: Sequence[int], roles: Sequence[str]) -> bool:
    """True when a target is transformers' ``Conv1D`` (GPT-2), whose weight is stored (in, out)."""
    from transformers.pytorch_utils import Conv1D

    for i in chosen:
        block = stack.blocks[i]
        for lin in block.by_role(roles):
            layer = block.module.get_submodule(lin.name[len(block.name) + 1:])
            if isinstance(layer, _base_tuner_layer()):
                layer = layer.get_base_layer()
            if isinstance(layer, Conv1D):
                return True
    return False


def _make_spec(stack: LayerStack, layers: Sequence[int], targets: str | Sequence[str], *, rank: int,
               alpha: float | None, ranks: Mapping[int, int] | None, dropout: float, **rest) -> AdapterSpec:
    """Check the flags and resolve the selection into an :class:`AdapterSpec`."""
    if rank < 1:
        raise ConfigError(f"--rank must be >= 1, got {rank}")
    if alpha is not None and alpha <= 0:
        raise ConfigError(f"--alpha must be > 0, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"--dropout must be in [0, 1), got {dropout}")
    names = expected_adapter_modules(stack, layers, targets)
    chosen, roles = _check_layers(stack, layers), _roles(targets)
    mlp = [lin.name for i in chosen for lin in stack.blocks[i].by_role(roles) if lin.role in MLP_ROLES]
    return AdapterSpec(
        target_modules=tuple(names), layers=chosen, layers_pattern=stack.layers_pattern, rank=int(rank),
        alpha=alpha, module_ranks=_module_ranks(stack, chosen, roles, ranks), feedforward_modules=tuple(mlp),
        fan_in_fan_out=_uses_conv1d(stack, chosen, roles), dropout=float(dropout), **rest,
    )


def _method(name: str) -> AdapterMethod:
    if name not in METHODS:
        raise ConfigError(f"--method {name!r} is unknown; allowed: {', '.join(METHODS)}")
    return METHODS[name]


def _task_type(model_class: str) -> str:
    for suffix, task in _TASK_BY_SUFFIX:
        if model_class.endswith(suffix):
            return task
    return "FEATURE_EXTRACTION"


def task_type_for(model: torch.nn.Module) -> str:
    """peft task type of a transformers model (also inside a peft model), from its class name.

    ``SEQ_CLS`` for ``*ForSequenceClassification`` (peft then trains the classifier head too),
    ``CAUSAL_LM`` for ``*ForCausalLM`` and GPT-2's ``*LMHeadModel``, ``TOKEN_CLS``/``QUESTION_ANS``/
    ``SEQ_2_SEQ_LM`` for those heads, else ``FEATURE_EXTRACTION``.
    """
    return _task_type(type(unwrap_model(model)).__name__)


def build_peft_config(
    stack: LayerStack, layers: Sequence[int], *, method: str = "lora", targets: str | Sequence[str] = DEFAULT_TARGETS,
    rank: int = 8, alpha: float | None = None, ranks: Mapping[int, int] | None = None, dropout: float = 0.0,
    task_type: str | None = None, total_steps: int | None = None, modules_to_save: Sequence[str] | None = None,
    **method_kwargs,
) -> peft.PeftConfig:
    """The peft config of ``method`` that puts adapters on ``targets`` in the blocks ``layers`` only.

    ``rank``/``alpha`` apply to every target (alpha defaults to ``2 * rank``); ``ranks`` maps a selected
    block index to its own rank, which goes into ``rank_pattern`` with ``alpha_pattern`` keeping
    alpha/r = 2 unless ``alpha`` is given (then alpha is the same for every module). ``task_type``
    defaults to the one of ``stack.model_class`` (:func:`task_type_for`); ``total_steps`` is needed by
    AdaLoRA's rank schedule; ``method_kwargs`` go to the peft config class unchanged.
    Raises :class:`ConfigError` naming the flag for every value outside what is allowed.
    """
    adapter = _method(method)
    if ranks and not adapter.supports_ranks:
        allowed = ", ".join(name for name, m in METHODS.items() if m.supports_ranks)
        raise ConfigError(f"--ranks: per-layer ranks are not supported by --method {method}; methods with "
                          f"per-layer ranks: {allowed}")
    spec = _make_spec(
        stack, layers, targets, rank=rank, alpha=alpha, ranks=ranks, dropout=dropout,
        task_type=task_type or _task_type(stack.model_class), total_steps=total_steps,
        modules_to_save=tuple(modules_to_save) if modules_to_save else None,
    )
    try:
        return adapter.build(spec, **method_kwargs)
    except LayerwiseError:
        raise
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--method {method}: peft rejects the configuration: {err}") from err


def apply_adapter(model: torch.nn.Module, stack: LayerStack, layers: Sequence[int], **kwargs) -> peft.PeftModel:
    """Build the config (:func:`build_peft_config`, same keyword arguments), wrap ``model``, verify it.

    ``stack`` must be the layer stack of ``model``. ``task_type`` defaults to :func:`task_type_for`.
    peft modifies ``model`` in place (PiSSA also rewrites the adapted base weights). Raises
    :class:`ConfigError` naming ``--method`` and ``--targets`` when peft cannot put the method on those
    layers, and :class:`AdapterMismatchError` when the adapted modules are not exactly the selection.
    """
    if kwargs.get("task_type") is None:
        kwargs["task_type"] = task_type_for(model)
    config = build_peft_config(stack, layers, **kwargs)
    targets = kwargs.get("targets", DEFAULT_TARGETS)
    expected = expected_adapter_modules(stack, layers, targets)
    try:
        with peft_wrapping():
            wrapped = _peft().get_peft_model(model, config)
    except (TypeError, ValueError) as err:
        method = kwargs.get("method", "lora")
        raise ConfigError(
            f"--method {method} cannot be applied to --targets {_show(targets)} of {stack.model_class} "
            f"({len(expected)} modules, e.g. {expected[0]}): {err}"
        ) from err
    verify_adapted(wrapped, expected)
    return wrapped


def _carries_adapter(module: torch.nn.Module) -> bool:
    """A peft tuner layer (any method) holding at least one adapter."""
    if not isinstance(module, _base_tuner_layer()):
        return False
    return any(len(getattr(module, attr, ())) > 0 for attr in module.adapter_layer_names)


def adapted_modules(peft_model: torch.nn.Module) -> list[str]:
    """Names (relative to the transformers model, as in :class:`LayerStack`) of the modules carrying an adapter.

    Any peft tuner type counts (LoRA, DoRA, LoHa, LoKr, VeRA, IA3, AdaLoRA, ...); in module order.
    """
    base = unwrap_model(peft_model)
    return [name for name, module in base.named_modules() if _carries_adapter(module)]


def verify_adapted(peft_model: torch.nn.Module, expected: Sequence[str]) -> None:
    """Raise :class:`AdapterMismatchError` unless the adapted modules are exactly ``expected``."""
    actual = adapted_modules(peft_model)
    actual_set, expected_set = set(actual), set(expected)
    missing = [name for name in expected if name not in actual_set]
    unexpected = [name for name in actual if name not in expected_set]
    if missing or unexpected:
        raise AdapterMismatchError(
            f"the adapted modules differ from the selection ({len(expected)} expected, {len(actual)} adapted); "
            f"missing: {missing or 'none'}; unexpected: {unexpected or 'none'}"
        )
