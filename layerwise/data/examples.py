"""The unit of data every task is read into (one text or text pair with its label or target), and a task's
examples split into train and dev."""

from __future__ import annotations

from dataclasses import dataclass

from layerwise.data.tasks import TaskSpec

__all__ = ["Example", "TaskData"]


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


@dataclass
class TaskData:
    """A task's examples, split into train and dev."""

    task: TaskSpec
    """The task; for csv/jsonl files its labels, kind and pair-ness come from the file."""
    train: list[Example]
    """Training examples, in file order."""
    dev: list[Example]
    """Held-out examples that are evaluated and reported; they also choose the checkpoint unless
    ``validation`` is set."""
    source: str
    """Where the data came from (paths or a description)."""
    skipped: dict[str, int]
    """Reason -> number of rows skipped for it (also reported with a warning)."""
    validation: list[Example] | None = None
    """Examples held out of ``train`` (:func:`layerwise.data.holdout.hold_out_validation`) to choose the
    checkpoint and stop early on, so that ``dev`` is only reported; ``None``: the dev set chooses."""
