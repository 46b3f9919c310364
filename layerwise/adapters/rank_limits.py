"""A low-rank update of a ``in x out`` linear layer has rank at most ``min(in, out)``: a larger ``--rank``
(or a ``--rank-budget`` share, or a ``--ranks`` entry) only adds parameters that cannot add rank. Such ranks
are refused, naming the flag, the layer and its limit (``--rank-budget 100000`` gave ranks of 30k-40k on
384x384 projections, ``export --rank 5000`` wrote r=5000)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from layerwise.runtime.errors import ConfigError

__all__ = ["LOW_RANK_METHODS", "limits_of_stack", "limits_of_card", "check_rank_limits"]

LOW_RANK_METHODS = ("lora", "dora", "rslora", "pissa", "adalora")
"""Methods whose rank is the rank of a product ``B A`` (LoHa, LoKr, VeRA and IA3 count rank otherwise)."""


def _narrowest(linears: Iterable[Any]) -> tuple[str, int, int] | None:
    best = None
    for lin in linears:
        shape = (lin.name, int(lin.in_features), int(lin.out_features))
        if best is None or min(shape[1:]) < min(best[1:]):
            best = shape
    return best


def limits_of_stack(stack: Any, layers: Sequence[int], targets: Any) -> dict[int, tuple[str, int, int]]:
    """Layer -> (name, in, out) of its narrowest target linear, from a model's
    :class:`~layerwise.models.layers.LayerStack`."""
    out = {}
    for i in sorted(set(layers)):
        if 0 <= i < len(stack.blocks):
            found = _narrowest(stack.blocks[i].by_role(targets))
            if found is not None:
                out[i] = found
    return out


def limits_of_card(card: Any, layers: Sequence[int], targets: Any) -> dict[int, tuple[str, int, int]]:
    """Layer -> (name, in, out) of its narrowest target linear, from a Layer Card's layer records."""
    from layerwise.models.layers import Block, Linear

    out = {}
    for i in sorted(set(layers)):
        if not 0 <= i < card.num_layers:
            continue
        record = card.layers[i]
        block = Block(i, record.get("name", str(i)), None,  # type: ignore[arg-type]
                      [Linear(lin["name"], lin["role"], int(lin["in"]), int(lin["out"]))
                       for lin in record.get("linears", []) if "in" in lin and "out" in lin])
        found = _narrowest(block.by_role(targets))
        if found is not None:
            out[i] = found
    return out


def check_rank_limits(adapter: Any, limits: Mapping[int, tuple[str, int, int]], *,
                      budget: int | None = None) -> None:
    """Raise :class:`ConfigError` for the first layer whose rank under ``adapter`` (an
    :class:`~layerwise.settings.AdapterChoice`) exceeds ``min(in, out)`` of its narrowest target; the flag
    named is ``--rank-budget`` when ``budget`` is given (its split made ``adapter.ranks``), else ``--ranks`` for a
    layer it lists, else ``--rank`` (La-LoRA: ``--r-max``)."""
    from layerwise.settings.fields import flag_name

    if adapter is None or adapter.method not in LOW_RANK_METHODS:
        return
    ranks = {int(k): int(v) for k, v in (adapter.ranks or {}).items()}
    for layer, (name, n_in, n_out) in sorted(limits.items()):
        rank = ranks.get(layer, adapter.r_max)
        limit = min(n_in, n_out)
        if rank <= limit:
            continue
        if layer in ranks:
            flag = flag_name(adapter, "rank_budget") if budget is not None else flag_name(adapter, "ranks")
            given = f"{flag} {budget}" if budget is not None else f"{flag} {layer}:{rank}"
            what = f"gives layer {layer} rank {rank}," if budget is not None else "asks"
        else:
            own = adapter.adaptive is not None and adapter.adaptive.r_max is not None
            flag = flag_name(adapter.adaptive, "r_max") if own else flag_name(adapter, "rank")
            given, what = f"{flag} {rank}", "asks"
        raise ConfigError(f"{given} {what} more than layer {layer} can hold: its {name} is {n_in}x{n_out}, so a "
                          f"low-rank update there has rank at most {limit}; use a rank <= {limit}")
