"""The layer stack: a model's transformer blocks in order and their linear sub-layers by role.

Everything here walks the module tree; no parameter name is ever rewritten. Names are full module
names of the *unwrapped* transformers model, exactly as peft matches ``target_modules`` entries
(``key == target or key.endswith("." + target)``), so a list from :meth:`LayerStack.target_names`
can go straight into a ``peft.LoraConfig``.

How the block list is found, in order:

1. ``layers_path`` (the CLI's ``--layers-path``), when given, overrides everything;
2. a known block-list path (``encoder.layer``, ``transformer.layer``, ``transformer.h``,
   ``model.layers``, ...), searched for anywhere in the tree so task-head prefixes such as ``bert.``
   or ``model.`` need no special case; the shallowest match wins;
3. the longest ``torch.nn.ModuleList`` whose children all share one class (first in module order
   on a tie).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: torch is imported when a model is inspected (export needs none)
    import torch

from layerwise.runtime.errors import ConfigError, ModelError

__all__ = [
    "ROLES",
    "TARGET_GROUPS",
    "DEFAULT_TARGETS",
    "Linear",
    "Block",
    "LayerStack",
    "parse_targets",
    "find_layer_stack",
    "unwrap_model",
]

ROLES: tuple[str, ...] = ("q", "k", "v", "o", "qkv", "gate", "up", "down", "gate_up")
"""Roles of the linear sub-layers of a block; fused projections have their own role (``qkv``, ``gate_up``)."""

OTHER = "other"
"""Role of a linear layer that matches none of :data:`ROLES`."""

TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "attn": ("q", "k", "v", "o", "qkv"),
    "mlp": ("gate", "up", "down", "gate_up"),
    "all-linear": ROLES,
}
"""Named groups accepted by ``--targets`` besides comma lists of roles."""

DEFAULT_TARGETS = "q,v"
"""The ``--targets`` default: LoRA on the query and value projections (as in the LoRA paper)."""

_FUSED: dict[str, tuple[str, ...]] = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}
"""Fused roles and the roles they compute; a request for any part selects the fused layer."""

# Role by the layer's own (last) name, wherever it sits in the block.
_ROLE_BY_LEAF: dict[str, str] = {
    **dict.fromkeys(("query", "q_proj", "q_lin", "q", "query_proj"), "q"),
    **dict.fromkeys(("key", "k_proj", "k_lin", "k", "key_proj"), "k"),
    **dict.fromkeys(("value", "v_proj", "v_lin", "v", "value_proj"), "v"),
    **dict.fromkeys(("o_proj", "out_lin", "o"), "o"),
    **dict.fromkeys(("c_attn", "qkv_proj", "query_key_value", "Wqkv"), "qkv"),
    **dict.fromkeys(("gate_proj", "w1"), "gate"),
    **dict.fromkeys(("up_proj", "fc1", "lin1", "c_fc", "w3"), "up"),
    **dict.fromkeys(("down_proj", "fc2", "lin2", "w2"), "down"),
    "gate_up_proj": "gate_up",
}

_ATTENTION_PARTS = frozenset({"attention", "attn", "self_attn", "self_attention"})
"""Path components that mark an attention sub-module (to tell ``dense``/``c_proj`` apart)."""

# Block-list paths of the supported families (BERT-likes, DistilBERT, GPT-2, Llama-likes and the
# base models without their task head). Matched as a suffix of the ModuleList's path.
_KNOWN_PATHS: tuple[str, ...] = (
    "encoder.layer", "transformer.layer", "transformer.h", "model.layers", "layers", "h",
)


def parse_targets(spec: str) -> tuple[str, ...]:
    """Parse the ``--targets`` flag into roles: a group name or a comma list of roles.

    >>> parse_targets("q,v")
    ('q', 'v')
    >>> parse_targets("mlp")
    ('gate', 'up', 'down', 'gate_up')
    """
    text = spec.strip()
    if text in TARGET_GROUPS:
        return TARGET_GROUPS[text]
    roles = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    bad = [role for role in roles if role not in ROLES]
    if bad or not roles:
        allowed = ", ".join([*TARGET_GROUPS, *ROLES])
        what = f"unknown role(s) {', '.join(map(repr, bad))}" if bad else "no role"
        raise ConfigError(
            f"--targets {spec!r}: {what}; use a group ({', '.join(TARGET_GROUPS)}) or a comma list of "
            f"roles; allowed values: {allowed}"
        )
    return roles


def _requested_roles(roles: Iterable[str] | str) -> tuple[str, ...]:
    """Roles from an iterable (or a ``--targets``-style string), checked against :data:`ROLES`."""
    if isinstance(roles, str):
        return parse_targets(roles)
    roles = tuple(roles)
    bad = [role for role in roles if role not in ROLES and role != OTHER]
    if bad:
        raise ConfigError(f"unknown role(s) {', '.join(map(repr, bad))}; allowed: {', '.join(ROLES)}, {OTHER}")
    return roles


def _parts(role: str) -> frozenset[str]:
    return frozenset(_FUSED.get(role, (role,)))


@dataclass
class Linear:
    """One linear sub-layer of a block (``torch.nn.Linear`` or transformers' ``Conv1D``)."""

    name: str
    """Full module name as peft matches it, e.g. ``bert.encoder.layer.3.attention.self.query``."""
    role: str
    """One of :data:`ROLES`, or ``"other"``; fused layers (GPT-2 ``c_attn``) are ``qkv``/``gate_up``."""
    in_features: int
    out_features: int
    conv1d: bool = False
    """True for transformers' ``Conv1D`` (GPT-2), whose weight is stored (in, out): peft needs
    ``fan_in_fan_out=True`` for it."""


@dataclass
class Block:
    """One transformer block: its position, full module name, module and linear sub-layers."""

    index: int
    name: str
    """Full module name of the block, e.g. ``bert.encoder.layer.3``."""
    module: torch.nn.Module = field(repr=False)
    linears: list[Linear]

    def by_role(self, roles: Iterable[str] | str) -> list[Linear]:
        """Linears (in module order) that compute any of ``roles``.

        Fused layers count for their parts and parts for the fused role: asking for ``q`` on GPT-2
        returns ``c_attn`` (role ``qkv``), asking for ``up`` on Phi-3 returns ``gate_up_proj``, and
        asking for ``qkv`` on Llama returns ``q_proj``, ``k_proj`` and ``v_proj``.
        """
        wanted = frozenset().union(*(_parts(role) for role in _requested_roles(roles)))
        return [lin for lin in self.linears if _parts(lin.role) & wanted]

    @property
    def roles(self) -> dict[str, list[str]]:
        """Role -> full names of the linears with that role (``other`` included), in module order."""
        out: dict[str, list[str]] = {}
        for lin in self.linears:
            out.setdefault(lin.role, []).append(lin.name)
        return out


@dataclass
class LayerStack:
    """The blocks of a model in order, found under the ModuleList at ``path``."""

    path: str
    """Dotted path of the block ModuleList, e.g. ``bert.encoder.layer``, ``model.layers``, ``transformer.h``."""
    blocks: list[Block]
    model_class: str
    """Class name of the (unwrapped) model, e.g. ``LlamaForCausalLM``."""

    @property
    def layers_pattern(self) -> str:
        """Last component of :attr:`path`: peft's ``layers_pattern`` (``layer``, ``layers``, ``h``)."""
        return self.path.rsplit(".", 1)[-1]

    def __len__(self) -> int:
        return len(self.blocks)

    def target_names(self, indices: Iterable[int], roles: Iterable[str] | str) -> list[str]:
        """Full module names of the linears with ``roles`` in the blocks at ``indices`` (model order)."""
        wanted = _requested_roles(roles)
        chosen = sorted(set(indices))
        bad = [i for i in chosen if not 0 <= i < len(self.blocks)]
        if bad:
            raise ConfigError(
                f"layer index(es) {bad} out of range: {self.model_class} has {len(self.blocks)} blocks "
                f"(0..{len(self.blocks) - 1})"
            )
        return [lin.name for i in chosen for lin in self.blocks[i].by_role(wanted)]

    def block_of(self, module_name: str) -> int | None:
        """Index of the block holding ``module_name`` (also under a peft ``base_model.model.`` prefix)."""
        head = self.path + "."
        if module_name.startswith(head):
            rest = module_name[len(head):]
        elif "." + head in module_name:
            rest = module_name.split("." + head, 1)[1]
        else:
            return None
        first = rest.split(".", 1)[0]
        if not first.isdigit() or int(first) >= len(self.blocks):
            return None
        return int(first)


def _nn():  # type: ignore[no-untyped-def]
    """``torch.nn``, imported when first needed (an export reads a card and loads no model)."""
    import torch

    return torch.nn


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft ``PeftModel``/``LoraModel`` (any other model unchanged)."""
    for _ in range(4):  # PeftModel -> LoraModel -> transformers model; never loops forever
        if not _is_peft(model):
            break
        inner = model.get_base_model() if hasattr(model, "get_base_model") else getattr(model, "model", model)
        if inner is model:
            break
        model = inner
    return model


def find_layer_stack(model: torch.nn.Module, layers_path: str | None = None) -> LayerStack:
    """Find the transformer blocks of ``model`` (a transformers model, or a peft model wrapping one).

    ``layers_path`` (``--layers-path``) names the block ModuleList by its dotted path and overrides
    the search. Raises :class:`~layerwise.runtime.errors.ModelError` when the path is wrong or when no block
    list can be found.
    """
    model = unwrap_model(model)
    if layers_path:
        path, blocks = layers_path, _module_list_at(model, layers_path)
    else:
        found = _known_stack(model) or _generic_stack(model)
        if found is None:
            raise ModelError(
                f"could not find the transformer blocks of {type(model).__name__}: no known block path "
                f"({', '.join(_KNOWN_PATHS)}) and no torch.nn.ModuleList of identical blocks; "
                f"pass --layers-path with the dotted path of the block list{_lists_hint(model)}"
            )
        path, blocks = found
    return LayerStack(
        path=path,
        blocks=[_make_block(i, f"{path}.{i}", block) for i, block in enumerate(blocks)],
        model_class=type(model).__name__,
    )


def _module_lists(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.ModuleList]]:
    for name, module in model.named_modules():
        if isinstance(module, _nn().ModuleList) and len(module) > 0 and name:
            yield name, module


def _lists_hint(model: torch.nn.Module) -> str:
    found = [f"{name} ({len(ml)} x {type(ml[0]).__name__})" for name, ml in _module_lists(model)]
    return f"; ModuleLists in the model: {', '.join(found[:10])}" if found else "; the model has no ModuleList"


def _module_list_at(model: torch.nn.Module, path: str) -> torch.nn.ModuleList:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        raise ModelError(
            f"--layers-path {path!r} does not exist in {type(model).__name__}{_lists_hint(model)}"
        ) from None
    if not isinstance(module, _nn().ModuleList) or len(module) == 0:
        what = "an empty ModuleList" if isinstance(module, _nn().ModuleList) else type(module).__name__
        raise ModelError(
            f"--layers-path {path!r} in {type(model).__name__} is {what}, not a torch.nn.ModuleList of "
            f"blocks{_lists_hint(model)}"
        )
    return module


def _known_stack(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    """The shallowest ModuleList whose path ends with a known block-list path (first on a tie)."""
    matches = [
        (name, ml) for name, ml in _module_lists(model)
        if any(name == known or name.endswith("." + known) for known in _KNOWN_PATHS)
    ]
    return min(matches, key=lambda item: item[0].count("."), default=None)


def _generic_stack(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    """The longest ModuleList whose children all share one class (first in module order on a tie)."""
    best: tuple[str, torch.nn.ModuleList] | None = None
    for name, ml in _module_lists(model):
        if len({type(child) for child in ml}) == 1 and (best is None or len(ml) > len(best[1])):
            best = (name, ml)
    return best


def _make_block(index: int, name: str, module: torch.nn.Module) -> Block:
    linears = [
        Linear(f"{name}.{rel}", _role(rel), *_features(layer), conv1d=not isinstance(layer, _nn().Linear))
        for rel, layer in _walk_linears(module)
    ]
    return Block(index=index, name=name, module=module, linears=linears)


def _walk_linears(module: torch.nn.Module, prefix: str = "") -> Iterator[tuple[str, torch.nn.Module]]:
    """(relative name, linear layer) below ``module``; peft wrappers stand for the layer they wrap.

    The recursion stops at a peft wrapper, so its adapter sub-modules (``lora_A``, ``lora_B``, ...)
    and its ``base_layer`` are never listed on their own.
    """
    for child_name, child in module.named_children():
        rel = f"{prefix}{child_name}"
        inner = _peft_wrapped(child)
        if inner is not None:
            if _is_linear(inner):
                yield rel, inner
        elif _is_linear(child):
            yield rel, child
        else:
            yield from _walk_linears(child, rel + ".")


def _is_peft(module: torch.nn.Module) -> bool:
    return type(module).__module__.split(".", 1)[0] == "peft"


def _peft_wrapped(module: torch.nn.Module) -> torch.nn.Module | None:
    """The original layer inside a peft tuner layer or modules-to-save wrapper, else None."""
    if not _is_peft(module):
        return None
    if hasattr(module, "get_base_layer"):
        return module.get_base_layer()
    if hasattr(module, "original_module"):
        return _peft_wrapped(module.original_module) or module.original_module
    return None


@functools.cache
def _conv1d_class() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        return None
    return Conv1D


def _is_linear(module: torch.nn.Module) -> bool:
    conv1d = _conv1d_class()
    return isinstance(module, _nn().Linear) or (conv1d is not None and isinstance(module, conv1d))


def _features(layer: torch.nn.Module) -> tuple[int, int]:
    """(in_features, out_features); a Conv1D weight is stored (in, out), a Linear weight (out, in)."""
    if isinstance(layer, _nn().Linear):
        return layer.in_features, layer.out_features
    rows, cols = layer.weight.shape
    return int(rows), int(cols)


def _role(rel: str) -> str:
    """Role of a linear from its name relative to the block, e.g. ``attention.output.dense`` -> ``o``."""
    *parents, leaf = rel.split(".")
    if leaf == "dense":
        if parents and parents[-1] == "intermediate":
            return "up"
        if _ATTENTION_PARTS.intersection(parents):
            return "o"
        return "down" if parents == ["output"] else OTHER
    if leaf == "c_proj":
        if _ATTENTION_PARTS.intersection(parents):
            return "o"
        return "down" if parents and parents[-1] == "mlp" else OTHER
    return _ROLE_BY_LEAF.get(leaf, OTHER)
