"""Benchmark: the data-free weight metrics (snr, alpha_hill, kappa) of a whole model, against the SVDs alone.

The three metrics share one SVD per module (``layerwise.card.probe.spectrum.SpectrumCache``), so their time should
be close to one pass of ``torch.linalg.svdvals`` over the same modules, measured here in the same run (the
baseline), and not three. Issue 18's target: under a minute for SmolLM2-135M on this machine. Example:

    python benchmarks/weight_spectra.py --model smollm2-135m --targets q,v
    python benchmarks/weight_spectra.py --model smollm2-135m --targets all-linear --threads 1
"""

from __future__ import annotations

import argparse
import time


def svd_baseline(model, stack, roles, threads: int) -> float:
    """Seconds of float64 ``svdvals`` over every targeted module with ``threads`` torch threads, nothing else."""
    import torch

    from layerwise.card.probe.spectrum import module_weight

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    for block in stack.blocks:
        for lin in block.by_role(roles):
            torch.linalg.svdvals(module_weight(block, lin).detach().to(torch.float64))
    seconds = time.perf_counter() - start
    torch.set_num_threads(before)
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="bundled alias, folder or hub id (default smollm2-135m)")
    p.add_argument("--targets", default="q,v", help="projections measured: q,v (default), attn, mlp, all-linear")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the process (default 2)")
    p.add_argument("--svd-threads", type=int, default=1,
                   help="torch threads for the SVDs, the card's default (1); 0: the process's")
    p.add_argument("--repeats", type=int, default=3, help="alternating runs of each; the median is reported")
    args = p.parse_args()

    import statistics

    import torch

    from layerwise.models.layers import find_layer_stack, parse_targets
    from layerwise.models import load_model
    from layerwise.card.profiling import profile_layers

    torch.set_num_threads(args.threads)
    roles = parse_targets(args.targets)
    model = load_model(args.model, head="base").model
    stack = find_layer_stack(model)
    svd_threads = args.svd_threads or args.threads
    svd_alone, metrics, svd_in_card = [], [], []
    for _ in range(args.repeats):  # alternate, so a drift in the machine's speed falls on both
        svd_alone.append(svd_baseline(model, stack, roles, svd_threads))
        start = time.perf_counter()
        card = profile_layers(model, [], "weights", stack=stack, targets=roles, show_progress=False,
                              spectrum_threads=svd_threads)
        metrics.append(time.perf_counter() - start)
        svd_in_card.append(card.probe["weights_seconds"])
    med = {k: statistics.median(v) for k, v in (("svd", svd_alone), ("metrics", metrics), ("in_card", svd_in_card))}
    print(f"{args.model}: {len(stack)} blocks, targets {args.targets}, {card.probe['weights_modules']} modules, "
          f"{args.threads} thread(s), SVDs on {svd_threads}, median of {args.repeats}")
    print(f"  snr + alpha_hill + kappa, whole card: {med['metrics']:.2f} s (SVDs inside it {med['in_card']:.2f} s)")
    print(f"  svdvals alone over the same modules:  {med['svd']:.2f} s")
    print(f"  ratio metrics / SVDs alone:           {med['metrics'] / med['svd']:.3f}")
    for name in card.metric_names:
        print(f"  {name:<10} top layers {', '.join(map(str, card.order(name)[:8]))}")
    if card.notes:
        print("  notes: " + "; ".join(card.notes[:5]))


if __name__ == "__main__":
    main()
