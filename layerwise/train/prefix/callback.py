"""``FrozenPrefixCallback``: the frozen blocks below the lowest adapter stay out of autograd in a Hugging Face
``Trainer`` (TRL's ``SFTTrainer`` included) that uses gradient checkpointing.

With gradient checkpointing on, transformers' ``Trainer`` and TRL's ``SFTTrainer`` call the model's
``enable_input_require_grads()``: a forward hook makes the token embeddings' output require grad, which
*reentrant* checkpointing needs to pass gradients to adapters inside a checkpointed block. Its cost: autograd
then records every frozen block below the lowest adapter, and the backward runs through all of them, for no
parameter. *Non-reentrant* checkpointing (transformers 5's default, ``activation_checkpointing_kwargs=
{"use_reentrant": False}``, formerly ``gradient_checkpointing_kwargs``) passes gradients to the adapters
without it, so this callback cuts the graph at the embeddings again: when training begins it adds a forward
hook on the input embeddings, after the Trainer's own (TRL adds one at construction and the Trainer another at
``train()``), that returns the output detached. It is refused with reentrant checkpointing (the adapters would
get no gradient), and does nothing when a parameter of the embeddings is trained.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from layerwise.runtime.errors import ConfigError

__all__ = ["FrozenPrefixCallback"]


def _checkpointing(args: Any) -> tuple[bool, dict]:
    """(checkpointing on, its kwargs) under the old (gradient_*) and new (activation_*) argument names."""
    on = bool(getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", False))
    kwargs = getattr(args, "activation_checkpointing_kwargs", None) or getattr(args, "gradient_checkpointing_kwargs",
                                                                               None)
    return on, dict(kwargs or {})


def _detach(module: Any, inputs: Any, output: Any) -> Any:
    return output.detach()


class FrozenPrefixCallback(TrainerCallback):
    """Detaches the input embeddings' output while the Trainer trains, so the frozen prefix builds no graph."""

    def __init__(self) -> None:
        self._handle: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        on, gc_kwargs = _checkpointing(args)
        if on and gc_kwargs.get("use_reentrant") is True:
            raise ConfigError("FrozenPrefixCallback: activation_checkpointing_kwargs (gradient_checkpointing_kwargs) "
                              "{'use_reentrant': True} needs the frozen prefix in autograd (its adapters would get no "
                              "gradient); use {'use_reentrant': False}, transformers' default")
        embeddings = model.get_input_embeddings() if model is not None else None
        if embeddings is None or any(p.requires_grad for p in embeddings.parameters()):
            return  # a trained embedding needs its gradient
        self._remove()
        self._handle = embeddings.register_forward_hook(_detach)  # runs after the require-grad hooks

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._remove()

    def _remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
