"""Gradient checkpointing that keeps the frozen prefix out of autograd.

The usual recipe (``model.gradient_checkpointing_enable()`` through the Trainer's or TRL's
``gradient_checkpointing=True``, or peft's ``prepare_model_for_kbit_training``) checkpoints every block with
the reentrant ``torch.utils.checkpoint``, which only passes gradients through a block whose input requires
grad; so it calls ``enable_input_require_grads()``, a hook that makes the embeddings' output require grad.
With adapters on the top blocks only, that drags the whole stack into the backward: block 0's input now
needs a gradient, so autograd runs the backward of every frozen block below the lowest adapter, and the
saving a selection promises (a backward only as deep as the lowest adapter) is gone.

Here only the blocks that hold a trainable parameter are checkpointed, with the non-reentrant
``torch.utils.checkpoint`` (``use_reentrant=False``), which needs no input that requires grad: the blocks
below the lowest adapter run as plain inference-like forwards that autograd never records, and the
embeddings' output requires grad only when something below block 0 is trained. The forward of each adapted
block keeps nothing but its input for the backward, where it is recomputed (the RNG state is restored, so
dropout masks repeat and the gradients equal those of a run without checkpointing).

    handle = prepare_gradient_checkpointing(peft_model)   # also for Trainer / TRL users (see README)
    ...                                                   # train
    handle.remove()                                       # the model as it was
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["CheckpointedBlocks", "prepare_gradient_checkpointing", "input_grads_enabled", "adapted_blocks"]

log = logging.getLogger(__name__)


@dataclass
class CheckpointedBlocks:
    """Which blocks were checkpointed, and how to undo it."""

    blocks: list[int]
    """Indices of the checkpointed (adapted) blocks, in order."""
    lowest: int | None
    """The lowest adapted block (None when no block has a trainable parameter)."""
    removed_input_grads: bool = False
    """Whether an ``enable_input_require_grads`` hook was found and removed."""
    _modules: list[torch.nn.Module] = field(default_factory=list, repr=False)
    _config: Any = field(default=None, repr=False)
    _use_cache: Any = field(default=None, repr=False)

    def remove(self) -> None:
        """Plain forwards again, and the model config's ``use_cache`` as it was (the input-grad hook is not
        put back)."""
        for module in self._modules:
            if "forward" in vars(module):
                del module.forward
        self._modules.clear()
        if self._config is not None:
            self._config.use_cache = self._use_cache
            self._config = None


def adapted_blocks(model: torch.nn.Module, stack: Any = None) -> list[int]:
    """Indices of the blocks of ``model`` (its layer stack ``stack``) that hold a trainable parameter."""
    from layerwise.models.layers import find_layer_stack

    stack = stack if stack is not None else find_layer_stack(model)
    return [b.index for b in stack.blocks if any(p.requires_grad for p in b.module.parameters())]


def input_grads_enabled(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules of ``model`` carrying transformers' ``enable_input_require_grads`` hook (which makes the
    input embeddings' output require grad)."""
    # the instance's own attribute: peft's wrappers forward unknown attributes to the model they wrap
    return [m for m in model.modules() if vars(m).get("_require_grads_hook") is not None]


def prepare_gradient_checkpointing(model: torch.nn.Module, stack: Any = None,
                                   warn: bool = True) -> CheckpointedBlocks:
    """Checkpoint only the blocks of ``model`` (a peft model, or any model with trainable blocks) that hold a
    trainable parameter, with non-reentrant ``torch.utils.checkpoint``; never make the embeddings' output
    require grad.

    A model that arrives with input grads enabled (``enable_input_require_grads()``, as the Trainer's and
    TRL's ``gradient_checkpointing=True`` or peft's ``prepare_model_for_kbit_training`` leave it) while no
    parameter below the lowest adapted block is trained gets that hook removed, with a warning (``warn``):
    it would make the backward run through every frozen block below. The model config's ``use_cache`` is
    turned off while checkpointing (a KV cache filled twice, by the forward and by the recompute, would not
    match). Call ``remove()`` on the result to undo. Checkpointing applies in training mode with grad
    enabled; evaluation runs the plain forwards.
    """
    from layerwise.models.layers import find_layer_stack

    stack = stack if stack is not None else find_layer_stack(model)
    indices = adapted_blocks(model, stack)
    lowest = indices[0] if indices else None
    handle = CheckpointedBlocks(indices, lowest)
    handle.removed_input_grads = _drop_input_grads(model, stack, lowest, warn)
    for block in stack.blocks:
        if block.index in indices:
            block.module.forward = functools.partial(_checkpointed, block.module, block.module.forward)
            handle._modules.append(block.module)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "use_cache", None):
        handle._config, handle._use_cache = config, config.use_cache
        config.use_cache = False
    log.debug("gradient checkpointing on blocks %s", indices)
    return handle


def _checkpointed(module: torch.nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
    """``forward`` recomputed in the backward (training with grad enabled), else run as it is."""
    if not (module.training and torch.is_grad_enabled()):
        return forward(*args, **kwargs)
    from torch.utils.checkpoint import checkpoint

    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def _drop_input_grads(model: torch.nn.Module, stack: Any, lowest: int | None, warn: bool) -> bool:
    """Remove ``enable_input_require_grads``'s hook when it only drags frozen blocks into the backward."""
    hooked = input_grads_enabled(model)
    if not hooked or lowest is None or lowest == 0 or _trains_below(model, stack):
        return False
    for module in hooked:
        module._require_grads_hook.remove()
        del module._require_grads_hook
    if warn:
        warnings.warn(f"the model arrived with input grads enabled (enable_input_require_grads(), as "
                      f"gradient_checkpointing=True in the Trainer or TRL sets it), but its lowest adapter is on "
                      f"block {lowest}: the backward would run through the {lowest} frozen block(s) below it. "
                      "layerwise removed that hook and checkpoints only the adapted blocks (non-reentrant); "
                      "leave gradient (activation) checkpointing off in the Trainer's arguments",
                      UserWarning, stacklevel=3)
    return True


def _trains_below(model: torch.nn.Module, stack: Any) -> bool:
    """Whether a trainable parameter is registered before the blocks (embeddings, or a head tied to them):
    its output must then require grad anyway."""
    from layerwise.train.prefix.cache import lowest_trainable_block

    return lowest_trainable_block(model, stack)[1] is not None
