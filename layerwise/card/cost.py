"""The compute cost of putting an adapter on a block: trainable parameters, adapter FLOPs, backward depth.

All figures are per token and count multiply-adds as 2 FLOPs. Attention-score FLOPs (which grow with
sequence length) are left out: the table compares layers, and those are the same for every layer.
"""

from __future__ import annotations

from typing import Any, Iterable

__all__ = ["layer_costs", "selection_cost"]


def layer_costs(stack: Any, rank: int = 8, targets: Iterable[str] = ("q", "v")) -> dict[str, Any]:
    """Per block: adapter params and FLOPs at ``rank`` on ``targets``, and the backward depth it forces.

    An adapter at block i makes gradients flow from the top down to block i: the input-gradient FLOPs of
    blocks i..L-1 (about the blocks' forward FLOPs) are paid however few adapters sit above it, so low
    blocks cost more backward compute than high ones.
    """
    targets = tuple(targets)
    params, adapter, forward = [], [], []
    for block in stack.blocks:
        lins = block.by_role(targets)
        params.append(sum(rank * (lin.in_features + lin.out_features) for lin in lins))
        # forward 2r(in+out); backward: grads of A, B and of the input, about twice that.
        adapter.append(sum(6 * rank * (lin.in_features + lin.out_features) for lin in lins))
        forward.append(sum(2 * lin.in_features * lin.out_features for lin in block.linears))
    depth = [sum(forward[i:]) for i in range(len(forward))]  # input-gradient FLOPs of blocks i..L-1
    total = [a + d for a, d in zip(adapter, depth)]
    return {"rank": rank, "targets": list(targets), "params": params, "adapter_flops": adapter,
            "forward_flops": forward, "backward_depth_flops": depth, "total_flops": total}


def selection_cost(costs: dict[str, Any], layers: Iterable[int]) -> dict[str, int]:
    """Trainable parameters and per-token training FLOPs of adapters on ``layers`` (depth counted once)."""
    layers = sorted(set(layers))
    if not layers:
        return {"params": 0, "flops": 0}
    params = sum(costs["params"][i] for i in layers)
    flops = sum(costs["adapter_flops"][i] for i in layers) + costs["backward_depth_flops"][layers[0]]
    return {"params": params, "flops": flops}
