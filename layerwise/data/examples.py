"""The unit of data every task is read into: one text (or text pair) with its label or target."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Example"]


@dataclass(frozen=True)
class Example:
    """One input of a task, independent of the file format it came from."""

    text: str
    """The (first) input text; for causal-LM tasks the prompt."""
    text_pair: str | None = None
    """The second sentence of a sentence-pair task (MRPC, STS-B, MNLI, ...); ``None`` otherwise."""
    label: int | float | None = None
    """Class index (``int``, into ``TaskSpec.label_names``) or regression target (``float``)."""
    target: str | None = None
    """Causal LM: the answer text that follows the prompt; the loss covers these tokens only."""
