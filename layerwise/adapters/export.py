"""A layer selection as a config for someone else's trainer: a peft adapter config, axolotl YAML keys, JSON.

The exported names do not depend on the head the card's model was loaded with. A module's *portable name*
is its full name without the transformers base-model prefix (``bert.``, ``model.``, ``transformer.``: the
model class's ``base_model_prefix``), e.g. ``encoder.layer.3.attention.self.query`` or
``layers.3.self_attn.q_proj``. In peft's config:

* ``target_modules`` is one regex string, ``(?:.*\\.)?(?:name|name|...)`` over the escaped portable names;
  peft full-matches a string against every module name (``re.fullmatch``), so it matches the chosen modules
  of ``AutoModel``, ``*ForSequenceClassification`` or ``*ForCausalLM`` (any prefix ending in a dot) and no
  other module: ``layer.1.`` never matches ``layer.11.``, and BERT's ``output.dense`` never matches
  ``attention.output.dense`` because the block index sits in between;
* ``rank_pattern``/``alpha_pattern`` keys are the escaped portable names: peft matches a key as
  ``(.*\\.)?(key)$`` (``peft.utils.other.get_pattern_key``), again under any prefix.

axolotl builds its ``LoraConfig`` from ``lora_target_modules`` + ``peft_layers_to_transform`` +
``peft_layers_pattern``: names inside the block, checked for suffix collisions (a name that is also the
end of another linear in a chosen block would adapt that one too; then the keys fall back to the regex).
axolotl has no per-layer rank key, so per-layer ranks become ``lora_r`` = the largest, with a comment.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from layerwise.runtime.errors import ConfigError
from layerwise.settings.export import FORMATS

if TYPE_CHECKING:
    from peft import PeftConfig

__all__ = ["FORMATS", "AXOLOTL_METHODS", "Target", "ExportedSelection", "base_model_prefix", "portable_name",
           "from_card", "from_run", "fan_in_fan_out", "peft_config", "axolotl_keys", "axolotl_yaml", "export_json",
           "write_export"]

log = logging.getLogger(__name__)

AXOLOTL_METHODS: dict[str, dict[str, Any]] = {
    "lora": {}, "dora": {"peft_use_dora": True}, "rslora": {"peft_use_rslora": True},
    "pissa": {"peft_init_lora_weights": "pissa"},
}
"""Methods axolotl's LoRA loader can express, and the keys that turn them on."""

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Target:
    """One module that gets an adapter."""

    block: int
    """Index of its block in the layer stack."""
    name: str
    """Portable name: the full module name without the base-model prefix (``layers.3.self_attn.q_proj``)."""
    within: str
    """Name inside the block (``self_attn.q_proj``)."""
    mlp: bool = False
    """True for an MLP role (IA3 scales its input)."""
    conv1d: bool = False
    """True for transformers' ``Conv1D`` (GPT-2): peft's ``fan_in_fan_out`` must be True for it."""


@dataclass(frozen=True)
class ExportedSelection:
    """A selection resolved to portable module names, with the adapter settings it is trained with."""

    targets: tuple[Target, ...]
    """Every adapted module, in model order."""
    layers: tuple[int, ...]
    """Selected block indices, sorted."""
    layers_pattern: str
    """Last component of the block list's path (``layer``, ``layers``, ``h``)."""
    method: str = "lora"
    targets_spec: str = "q,v"
    rank: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    ranks: Mapping[int, int] | None = None
    """Per-layer ranks (block -> rank), or None for ``rank`` everywhere."""
    adaptive: Mapping[str, Any] | None = None
    """La-LoRA settings when the ranks are chosen while training (not expressible before training)."""
    policy: str | None = None
    metric: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    model: Mapping[str, Any] = field(default_factory=dict)
    """The card's (or run's) model fingerprint: name, model_type, config_hash, parameters."""
    block_linears: tuple[str, ...] | None = None
    """Names inside a block of every linear of the chosen blocks (from the card); None when unknown."""
    source: Mapping[str, Any] = field(default_factory=dict)
    """Where the selection came from: ``{"card": path, "card_sha256": ...}`` or ``{"run": folder}``."""

    @property
    def base_model(self) -> str | None:
        """The model name the user gave (alias, hub id or folder)."""
        return self.model.get("name")

    def rank_of(self, block: int) -> int:
        """The rank of ``block``'s adapters."""
        return int((self.ranks or {}).get(block, self.rank))


def base_model_prefix(model_type: str | None, recorded: str | None = None) -> str:
    """The transformers base model's attribute name in its task-head classes (``bert``, ``model``), or ''.
    ``recorded`` (what the card or run recorded when the model was loaded) is used as is: looking the class up
    imports transformers' model code and torch (seconds), which an export otherwise never needs."""
    if isinstance(recorded, str):
        return recorded
    if not model_type:
        return ""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_MAPPING_NAMES

    name = MODEL_MAPPING_NAMES.get(model_type)
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    return str(getattr(cls, "base_model_prefix", "") or "")


def portable_name(full_name: str, prefix: str) -> str:
    """``full_name`` without the base-model ``prefix`` (``bert.encoder.layer.0`` -> ``encoder.layer.0``)."""
    return full_name[len(prefix) + 1:] if prefix and full_name.startswith(prefix + ".") else full_name


def _roles(targets: str) -> tuple[str, ...]:
    from layerwise.models.layers import parse_targets

    return parse_targets(targets)


def _fused_parts(role: str) -> set[str]:
    return {"qkv": {"q", "k", "v"}, "gate_up": {"gate", "up"}}.get(role, {role})


def from_card(card: Any, layers: Sequence[int], adapter: Any, *, policy: str | None = None,
              metric: str | None = None, params: Mapping[str, Any] | None = None,
              source: Mapping[str, Any] | None = None) -> ExportedSelection:
    """The selection ``layers`` of ``card`` (a :class:`~layerwise.card.layer_card.LayerCard`) with ``adapter``
    (an :class:`~layerwise.settings.AdapterChoice`), named portably. Roles follow ``--targets`` as
    :meth:`LayerStack.target_names` does (a fused layer counts for any of its parts)."""
    from layerwise.adapters.bridge import MLP_ROLES

    chosen = sorted(set(int(i) for i in layers))
    bad = [i for i in chosen if not 0 <= i < card.num_layers]
    if not chosen or bad:
        raise ConfigError(f"--layers: the selection {chosen} must be non-empty indices in 0..{card.num_layers - 1}")
    wanted = set().union(*(_fused_parts(r) for r in _roles(adapter.targets)))
    prefix = base_model_prefix(card.model.get("model_type"), card.model.get("base_model_prefix"))
    found: list[Target] = []
    for i in chosen:
        block = card.layers[i]
        for lin in block["linears"]:
            if _fused_parts(lin["role"]) & wanted:
                found.append(Target(i, portable_name(lin["name"], prefix), lin["name"][len(block["name"]) + 1:],
                                    lin["role"] in MLP_ROLES, bool(lin.get("conv1d", False))))
    if not found:
        raise ConfigError(f"--targets {adapter.targets!r} matches no linear layer in blocks {chosen} of the card")
    stack_path = card.layers[0]["name"].rsplit(".", 1)[0]
    linears = tuple(sorted({lin["name"][len(card.layers[i]["name"]) + 1:] for i in chosen
                            for lin in card.layers[i]["linears"]}))
    exported = _exported(found, chosen, stack_path, adapter, policy, metric, params, card.model, linears)
    return dataclasses.replace(exported, source=dict(source or {}))


def _exported(found: list[Target], chosen: Sequence[int], stack_path: str, adapter: Any, policy: str | None,
              metric: str | None, params: Mapping[str, Any] | None, model: Mapping[str, Any],
              block_linears: tuple[str, ...] | None = None) -> ExportedSelection:
    adaptive = None
    if adapter.is_adaptive:
        from dataclasses import asdict

        adaptive = {**asdict(adapter.adaptive), "r_max": adapter.r_max}
    ranks = {int(k): int(v) for k, v in (adapter.ranks or {}).items()} or None
    unselected = sorted(set(ranks or {}) - set(chosen))
    if unselected:
        raise ConfigError(f"--ranks gives ranks for layer(s) {unselected} that are not selected ({list(chosen)})")
    return ExportedSelection(
        targets=tuple(found), layers=tuple(chosen), layers_pattern=stack_path.rsplit(".", 1)[-1],
        method=adapter.method, targets_spec=adapter.targets, rank=adapter.r_max, alpha=adapter.alpha,
        dropout=adapter.dropout, ranks=ranks, adaptive=adaptive, policy=policy, metric=metric,
        params=dict(params or {}), model=dict(model), block_linears=block_linears)


def from_run(run_dir: str | Path) -> ExportedSelection:
    """The selection a finished ``layerwise train``/``run`` folder trained: its ``selection.json`` and the
    module names of its ``adapter/adapter_config.json``. A La-LoRA run exports the ranks it ended with."""
    from layerwise.adapters.bridge import MLP_ROLES
    from layerwise.models.layers import _role
    from layerwise.settings import AdapterChoice

    run = Path(run_dir)
    for sub in ("", "selected"):  # `layerwise run` keeps the chosen layers' run in selected/
        if (run / sub / "selection.json").exists():
            run = run / sub
            break
    sel_path, cfg_path = run / "selection.json", run / "adapter" / "adapter_config.json"
    for path in (sel_path, cfg_path):
        if not path.exists():
            raise ConfigError(f"--from-run {run_dir}: {path} is missing; give a folder written by `layerwise train`")
    record, config = json.loads(sel_path.read_text()), json.loads(cfg_path.read_text())
    if record.get("adapter") is None:
        raise ConfigError(f"--from-run {run_dir} is a full fine-tuning run; there is no adapter selection to export")
    a, selection = record["adapter"], record["selection"]
    pattern = config.get("layers_pattern") or "layers"
    pattern = pattern[0] if isinstance(pattern, list) else pattern
    prefix = base_model_prefix(record.get("model", {}).get("model_type"), record.get("model", {}).get("base_model_prefix"))
    found, stack_path = [], pattern
    for name in config.get("target_modules") or []:
        m = re.fullmatch(rf"(?P<stack>(?:.*\.)?{re.escape(pattern)})\.(?P<idx>\d+)\.(?P<within>.+)", name)
        if m is None:
            raise ConfigError(f"--from-run {run_dir}: module {name!r} of {cfg_path} is not inside a {pattern!r} block")
        stack_path = m["stack"]
        found.append(Target(int(m["idx"]), portable_name(name, prefix), m["within"], _role(m["within"]) in MLP_ROLES,
                            bool(config.get("fan_in_fan_out"))))  # the run's adapter was built for its modules
    ranks = a.get("ranks")
    if isinstance(ranks, dict) and ranks.get("mode") == "adaptive":
        ranks = _final_ranks(config, found)  # the ranks La-LoRA ended with, as its adapter was saved
    choice = AdapterChoice(method=a["method"], targets=a["targets"], rank=int(a["rank"]), alpha=a.get("alpha"),
                           dropout=float(a.get("dropout") or 0.0),
                           ranks={int(k): int(v) for k, v in ranks.items()} if ranks else None)
    policy, metric, params = selection.get("policy"), selection.get("metric"), selection.get("params")
    card = _run_card(run)
    model = record.get("model", {})
    if card is not None and card.model.get("config_hash") == model.get("config_hash"):
        # the card knows every linear of the blocks (axolotl's suffix check needs them)
        return from_card(card, selection["layers"], choice, policy=policy, metric=metric, params=params,
                         source={"run": str(run_dir)})
    exported = _exported(found, selection["layers"], stack_path, choice, policy, metric, params, model)
    return dataclasses.replace(exported, source={"run": str(run_dir)})


def _run_card(run: Path) -> Any:
    """The Layer Card a run selected with: its own card/ folder, or the --card its config.yaml names."""
    import yaml

    from layerwise.card.layer_card import LayerCard

    candidates = [run / "card" / "card.json"]
    settings = run / "config.yaml"
    if settings.exists():
        card = (yaml.safe_load(settings.read_text()) or {}).get("card")
        if card:
            candidates.append(Path(card))
    for path in candidates:
        if path.exists():
            return LayerCard.load(path)
    return None


def _final_ranks(config: Mapping[str, Any], found: Sequence[Target]) -> dict[int, int] | None:
    """Block -> rank from a La-LoRA run's saved ``rank_pattern`` (one rank per block)."""
    pattern = config.get("rank_pattern") or {}
    out: dict[int, int] = {}
    for t in found:
        for key, r in pattern.items():
            if key == re.escape(t.name) or key.endswith(r"\." + re.escape(t.name)):  # escaped full names
                out[t.block] = int(r)
    return out or None


# peft


def _regex(names: Sequence[str]) -> str:
    """One anchored regex full-matching exactly these portable names under any prefix ending in a dot."""
    return r"(?:.*\.)?(?:" + "|".join(re.escape(n) for n in names) + ")"


def target_regex(sel: ExportedSelection, mlp_only: bool = False) -> str:
    r"""The regex of ``sel``'s targets: ``(?:.*\.)?<stack>\.(?:1|3)\.(?:<within>|...)`` when every chosen
    block gets the same modules (the usual case), else the alternation of every portable name."""
    targets = [t for t in sel.targets if t.mlp or not mlp_only]
    within = sorted({t.within for t in targets})
    blocks = sorted({t.block for t in targets})
    stacks = {t.name[: -len(f".{t.block}.{t.within}")] for t in targets}
    if len(stacks) == 1 and len(targets) == len(within) * len(blocks):
        stack = re.escape(stacks.pop())
        return (rf"(?:.*\.)?{stack}\.(?:{'|'.join(map(str, blocks))})\."
                f"(?:{'|'.join(re.escape(w) for w in within)})")
    return _regex([t.name for t in targets])


def fan_in_fan_out(sel: ExportedSelection) -> bool:
    """peft's ``fan_in_fan_out``: True when the targets are transformers' ``Conv1D`` (GPT-2 stores the weight as
    (in, out)). A card made before layerwise recorded ``conv1d`` says False; peft then corrects it with a warning."""
    return any(t.conv1d for t in sel.targets)


def peft_config(sel: ExportedSelection, **peft_kwargs: Any) -> PeftConfig:
    """The peft config of ``sel`` for a freshly loaded model with any head (``task_type`` unset unless given
    in ``peft_kwargs``). Raises :class:`ConfigError` for La-LoRA's ranks, which are chosen while training."""
    from layerwise.adapters.bridge import METHODS, AdapterSpec

    if sel.adaptive is not None:
        raise ConfigError("--adaptive-ranks: La-LoRA chooses its ranks while training, so they cannot be exported "
                          "before training; export a finished run with --from-run DIR, or use --format json")
    method = METHODS[sel.method]
    if sel.ranks and not method.supports_ranks:
        allowed = ", ".join(n for n, m in METHODS.items() if m.supports_ranks)
        raise ConfigError(f"--ranks: --method {sel.method} has no rank_pattern in peft, so per-layer ranks cannot "
                          f"be exported; methods with per-layer ranks: {allowed}")
    names = [t.name for t in sel.targets]
    spec = AdapterSpec(
        target_modules=tuple(names), layers=sel.layers, layers_pattern=sel.layers_pattern, rank=sel.rank,
        alpha=sel.alpha, module_ranks={t.name: sel.rank_of(t.block) for t in sel.targets if sel.ranks
                                       and t.block in sel.ranks},
        feedforward_modules=tuple(t.name for t in sel.targets if t.mlp), fan_in_fan_out=fan_in_fan_out(sel),
        dropout=sel.dropout,
        task_type=peft_kwargs.pop("task_type", None), total_steps=peft_kwargs.pop("total_steps", None))
    try:
        config = method.build(spec, **peft_kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"--method {sel.method}: peft rejects the configuration: {err}") from err
    portable: dict[str, Any] = {"target_modules": target_regex(sel)}
    if hasattr(config, "layers_to_transform"):  # peft refuses layer indices next to a regex; the regex holds them
        portable.update(layers_to_transform=None, layers_pattern=None)
    if hasattr(config, "feedforward_modules"):
        mlp = [t.name for t in sel.targets if t.mlp]
        portable["feedforward_modules"] = target_regex(sel, mlp_only=True) if mlp else []
    config = dataclasses.replace(config, **portable)
    config.base_model_name_or_path = sel.base_model
    return config


# axolotl


def axolotl_keys(sel: ExportedSelection) -> tuple[dict[str, Any], list[str]]:
    """(keys, comments): the LoRA keys axolotl reads for ``sel``, and what could not be expressed exactly."""
    if sel.adaptive is not None:
        raise ConfigError("--adaptive-ranks: axolotl has no per-layer ranks and La-LoRA chooses them while training; "
                          "export without --adaptive-ranks, or --format json")
    if sel.method not in AXOLOTL_METHODS:
        raise ConfigError(f"--method {sel.method} cannot be written for axolotl (its LoRA loader takes "
                          f"{', '.join(AXOLOTL_METHODS)}); use --format peft")
    comments: list[str] = []
    rank = sel.rank
    if sel.ranks:
        rank = max(sel.rank_of(i) for i in sel.layers)
        shown = ", ".join(f"{i}:{sel.rank_of(i)}" for i in sel.layers)
        comments.append(f"per-layer ranks {shown} (block:rank) cannot be expressed: axolotl has no rank_pattern; "
                        f"lora_r is the largest, {rank} (use --format peft for the exact ranks)")
    alpha = sel.alpha if sel.alpha is not None else 2.0 * rank
    keys: dict[str, Any] = {"adapter": "lora", "lora_r": int(rank), "lora_alpha": _number(alpha),
                            "lora_dropout": float(sel.dropout)}
    if fan_in_fan_out(sel):
        keys["lora_fan_in_fan_out"] = True  # GPT-2's Conv1D
    within = sorted({t.within for t in sel.targets})
    if _layer_keys_exact(sel, within):
        keys.update(lora_target_modules=within, peft_layers_to_transform=list(sel.layers),
                    peft_layers_pattern=[sel.layers_pattern])
    else:
        keys["lora_target_modules"] = target_regex(sel)
        comments.append("lora_target_modules is a regex: the module names inside the block are suffixes of other "
                        "linears' names, so peft_layers_to_transform would adapt those too")
    keys.update(AXOLOTL_METHODS[sel.method])
    return keys, comments


def _layer_keys_exact(sel: ExportedSelection, within: Sequence[str]) -> bool:
    """Whether block-relative names + layer indices adapt exactly ``sel``: every chosen block must get every
    name, and no name may be the dotted suffix of another linear's name in those blocks (peft matches list
    entries as name suffixes). Unknown siblings (a run without its card) count as not exact."""
    if sel.block_linears is None:
        return False
    if len(sel.targets) != len(within) * len(sel.layers):
        return False
    others = set(sel.block_linears) - set(within)
    return not any(o.endswith("." + w) for o in others for w in within)


def axolotl_yaml(sel: ExportedSelection) -> str:
    """The axolotl keys as a YAML document, with a header naming the selection and comments for approximations."""
    import yaml

    keys, comments = axolotl_keys(sel)
    head = [f"# layerwise export: LoRA keys for axolotl ({sel.base_model}, {_describe(sel)})",
            "# merge these keys into your axolotl config; base_model and datasets stay yours"]
    head += [f"# NOTE: {c}" for c in comments]
    for c in comments:
        log.warning("axolotl: %s", c)
    return "\n".join(head) + "\n" + yaml.safe_dump(keys, sort_keys=False)


# json


def export_json(sel: ExportedSelection) -> dict[str, Any]:
    """Plain JSON: layers, ranks, modules, metric, policy and the card's model fingerprint."""
    return {
        "schema_version": SCHEMA_VERSION, "model": dict(sel.model), "policy": sel.policy, "metric": sel.metric,
        "params": _jsonable(sel.params), "layers": list(sel.layers),
        "ranks": {str(i): sel.rank_of(i) for i in sel.layers} if sel.adaptive is None else None,
        "adaptive": dict(sel.adaptive) if sel.adaptive else None,
        "adapter": {"method": sel.method, "targets": sel.targets_spec, "rank": sel.rank, "alpha": sel.alpha,
                    "dropout": sel.dropout},
        "modules": [t.name for t in sel.targets], "layers_pattern": sel.layers_pattern, "source": dict(sel.source),
    }


def write_export(sel: ExportedSelection, fmt: str, out: str | Path) -> list[Path]:
    """Write ``sel`` as ``fmt`` (one of :data:`FORMATS`) into the folder ``out``, atomically; returns the files."""
    from layerwise.runtime.io import atomic_write_json, atomic_write_text

    out = Path(out)
    if fmt == "peft":
        config = peft_config(sel)
        text = json.dumps(config.to_dict(), indent=2, sort_keys=True, default=_set_as_list)
        return [atomic_write_text(out / "adapter_config.json", text + "\n")]
    if fmt == "axolotl":
        return [atomic_write_text(out / "axolotl.yaml", axolotl_yaml(sel))]
    if fmt == "json":
        return [atomic_write_json(out / "selection.json", export_json(sel))]
    raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def _describe(sel: ExportedSelection) -> str:
    how = (sel.policy or "selection") + (f" by {sel.metric}" if sel.metric else "")
    return f"{how}: blocks {', '.join(map(str, sel.layers))}, {sel.method} on {sel.targets_spec}"


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _set_as_list(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
