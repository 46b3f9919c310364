"""The ``layerwise card`` job: load a model and a task, draw a calibration sample, profile, save the card."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from layerwise.errors import ConfigError

__all__ = ["CalibrationSpec", "calibration_batches", "make_card"]


@dataclass(frozen=True)
class CalibrationSpec:
    """How the calibration sample is drawn and batched."""

    samples: int = 256
    """Number of training examples drawn (stratified by label where there are labels)."""
    seed: int = 0
    """Seed of the draw: the same seed gives the same sample and the same card."""
    batch_size: int = 16
    """Examples per probe batch (padding is dynamic: to the longest example of each batch)."""
    max_length: int = 128
    """Tokens kept per example."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.samples < self.batch_size:
            raise ConfigError(f"--samples ({self.samples}) is fewer than one batch (--batch-size {self.batch_size}); "
                              "draw at least one full batch")
        if self.max_length < 8:
            raise ConfigError(f"--max-length must be >= 8, got {self.max_length}")


def calibration_batches(task_data: Any, tokenizer: Any, spec: CalibrationSpec) -> list[dict]:
    """Draw ``spec.samples`` training examples with ``spec.seed`` and batch them with dynamic padding."""
    from layerwise.data import make_batches, sample_calibration

    if spec.samples > len(task_data.train):
        raise ConfigError(f"--samples {spec.samples} is more than the {len(task_data.train)} training examples "
                          f"of {task_data.task.name}")
    examples = sample_calibration(task_data.train, spec.samples, seed=spec.seed)
    return make_batches(examples, tokenizer, task_data.task, batch_size=spec.batch_size,
                        max_length=spec.max_length)


def make_card(model: str, task: str | None, data: str | None, out: str | os.PathLike | None, *,
              calibration: CalibrationSpec = CalibrationSpec(), metrics: str | Sequence[str] | None = None,
              rank: int = 8, targets: str = "q,v", pooling: str | None = None, device: str | None = None,
              weightdelta_steps: int = 20, columns: dict[str, str | None] | None = None, regression: bool = False,
              cache_dir: str | None = None, trust_remote_code: bool = False, layers_path: str | None = None,
              overwrite: bool = False, plots: bool = True, max_stat_memory: int = 2 << 30,
              show_progress: bool = True) -> tuple[Any, dict[str, Path]]:
    """Profile ``model`` on ``task`` and write the card to ``out`` (``card.json``, ``card.md``, ``card.png``).

    Under ``torchrun``/``accelerate launch`` the calibration batches are split over the processes, every
    process gets the same card and only rank 0 writes the files (others return no files).

    ``task`` may be None when every metric is data-free (``--metrics weights``): the model is then loaded
    without a task head and no data is read (``layerwise.weight_card``).
    """
    from layerwise import distributed, weight_card
    from layerwise.importance import get_metrics
    from layerwise.inspection import load_model_for_task, load_task_from_flags
    from layerwise.io import prepare_output_dir
    from layerwise.layers import find_layer_stack, parse_targets
    from layerwise.profiling import profile_layers

    get_metrics(metrics)  # fail on a bad --metrics before loading anything
    roles = parse_targets(targets)
    if rank < 1:
        raise ConfigError(f"--rank must be >= 1, got {rank}")
    data_free = weight_card.check_task(task, metrics)
    dev = resolve_device(device)
    out_dir = prepare_output_dir(out, overwrite) if out is not None else None
    distributed.barrier()  # every rank has checked --out before rank 0 writes into it
    if task is None:  # data-free card (weight metrics only): no task, no head, no batches
        loaded, batches, info = weight_card.load_without_task(model, cache_dir, trust_remote_code)
    else:
        task_data = load_task_from_flags(task, data, columns, regression)
        loaded = load_model_for_task(model, task_data.task, cache_dir, trust_remote_code)
        batches = [] if data_free else calibration_batches(task_data, loaded.tokenizer, calibration)
        info = {"task": task_data.task.name, "source": task_data.source,
                "samples": 0 if data_free else calibration.samples,
                "seed": calibration.seed, "batch_size": calibration.batch_size, "max_length": calibration.max_length}
    loaded.model.to(dev)
    stack = find_layer_stack(loaded.model, layers_path)
    card = profile_layers(loaded.model, batches, metrics, name=model, stack=stack, data_info=info, rank=rank,
                          targets=roles, pooling=pooling, device=dev, weightdelta_steps=weightdelta_steps,
                          seed=calibration.seed, max_stat_memory=max_stat_memory, show_progress=show_progress)
    files = card.save(out_dir, plots=plots) if out_dir is not None and distributed.is_main() else {}
    distributed.barrier()  # the card exists for every rank (``layerwise run`` reads it next)
    return card, files


def resolve_device(device: str | None) -> Any:
    """``auto``/None picks CUDA when available; otherwise the named device, checked.

    Under a launcher (``torchrun``, ``accelerate launch``) a bare ``cuda`` is ``cuda:LOCAL_RANK`` and the
    process joins the launcher's process group (``layerwise.distributed.init_from_env``).
    """
    import torch

    from layerwise import distributed

    if device in (None, "auto"):
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except RuntimeError as err:
            raise ConfigError(f"--device {device!r} is not a device (cpu, cuda, cuda:N, auto)") from err
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA device is available")
    dev = distributed.device_for_rank(dev)
    distributed.init_from_env(dev)
    return dev
