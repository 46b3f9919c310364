"""Export a La-LoRA model as a standard peft LoRA adapter with per-module ranks.

Each adapted module ``m`` of block ``i`` is written with ``A[:r_i]`` (``(r_i, in)``) and ``B[:, :r_i]``
(``(out, r_i)``), ``rank_pattern[m] = r_i`` and ``alpha_pattern[m] = scaling_m * r_i``, so peft's scaling
``alpha_m / r_i`` equals the scaling the model trained with (``alpha / r_max`` or ``alpha / r_i``). Keys are the
``re.escape``-d full module names (as :mod:`layerwise.adapters.bridge` writes them), which match exactly one module.
``PeftModel.from_pretrained(fresh_base_model, folder)`` then reproduces the trained model, and
``merge_and_unload()`` merges exactly the truncated update. Other adapter tensors (e.g. the classifier head
peft trains for ``SEQ_CLS``) are saved as peft saves them.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from layerwise.train.lalora.truncation import AdaptedBlock
from layerwise.models.layers import unwrap_model

__all__ = ["ADAPTER_FILE", "export_adapter", "export_patterns"]

ADAPTER_FILE = "adapter_model.safetensors"


def export_patterns(blocks: Sequence[AdaptedBlock], adapter: str = "default") -> tuple[dict[str, int],
                                                                                       dict[str, float]]:
    """(rank_pattern, alpha_pattern) of the current truncation: ``r_i`` and ``scaling * r_i`` per module."""
    ranks, alphas = {}, {}
    for block in blocks:
        for name, layer in block.layers:
            rank = int(layer.lora_A[adapter].rank)
            ranks[re.escape(name)] = rank
            alphas[re.escape(name)] = float(layer.scaling[adapter]) * rank
    return ranks, alphas


def _truncated_state(peft_model: torch.nn.Module, blocks: Sequence[AdaptedBlock], adapter: str) -> dict:
    """The model's state dict with every adapted factor cut to its rank (found by Parameter identity)."""
    cut: dict[int, torch.Tensor] = {}
    for block in blocks:
        for a, b in block.factors(adapter):
            cut[id(a.weight)] = a.weight.detach()[: a.rank]  # (r_i, in)
            cut[id(b.weight)] = b.weight.detach()[:, : b.rank]  # (out, r_i)
    names = {name: cut[id(p)] for name, p in peft_model.named_parameters() if id(p) in cut}
    state = peft_model.state_dict()
    assert len(names) == len(cut), "every adapted factor must be a parameter of the model"
    return {k: names.get(k, v) for k, v in state.items()}


def export_adapter(peft_model: torch.nn.Module, blocks: Sequence[AdaptedBlock], path: str | os.PathLike,
                   adapter: str = "default") -> Path:
    """Write the truncated adapter of ``peft_model`` into the folder ``path`` (atomically, as a peft folder)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from layerwise.train.checkpoint import replace_dir, write_base_record

    config = copy.deepcopy(peft_model.peft_config[adapter])
    rank_pattern, alpha_pattern = export_patterns(blocks, adapter)
    config.rank_pattern = {**(config.rank_pattern or {}), **rank_pattern}
    config.alpha_pattern = {**(config.alpha_pattern or {}), **alpha_pattern}
    config.inference_mode = True
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = unwrap_model(peft_model).__dict__.get("name_or_path")
    state = get_peft_model_state_dict(peft_model, state_dict=_truncated_state(peft_model, blocks, adapter),
                                      adapter_name=adapter, save_embedding_layers=False)
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}  # no views into the live weights

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp / ADAPTER_FILE), metadata={"format": "pt"})
        config.save_pretrained(str(tmp))
        write_base_record(peft_model, tmp)

    return replace_dir(path, write)
