"""Known, harmless noise of third-party libraries, silenced only around the call that makes it: the user's
process keeps its own transformers verbosity and warning filters before and after.

- :func:`transformers_errors_only`: a model load's report (e.g. "classifier.weight MISSING" for a new task head)
  is expected, not news.
- :func:`peft_wrapping`: peft 0.21 reads ``model.is_gradient_checkpointing`` when it wraps a model, which
  transformers 5 deprecates with a FutureWarning; the pinned pair works, and the user can do nothing about it.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import Iterator

__all__ = ["transformers_errors_only", "peft_wrapping", "GRADIENT_CHECKPOINTING_WARNING"]

GRADIENT_CHECKPOINTING_WARNING = "`is_gradient_checkpointing` is deprecated"
"""Start of the FutureWarning transformers raises when peft probes the deprecated property."""


@contextlib.contextmanager
def transformers_errors_only() -> Iterator[None]:
    """Inside: transformers logs errors only. After: its verbosity is what it was before (also on error)."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


@contextlib.contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around ``peft.get_peft_model`` / ``PeftModel.from_pretrained``: the deprecation FutureWarning of
    ``is_gradient_checkpointing`` raised inside transformers is ignored; every other warning passes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=re.escape(GRADIENT_CHECKPOINTING_WARNING),
                                category=FutureWarning, module=r"transformers(\.|$)")
        yield
