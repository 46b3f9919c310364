"""Registry of the tasks ``layerwise`` knows: what they predict, how they are scored, what their labels are."""

from __future__ import annotations

from dataclasses import dataclass

from layerwise.runtime.errors import ConfigError

__all__ = ["KINDS", "TaskSpec", "TASKS", "get_task", "canonical_task_name"]

KINDS = ("classification", "regression", "causal-lm")
"""Task kinds; each one is also the name of the model head it needs (see ``layerwise.models.loading.HEADS``)."""


@dataclass(frozen=True)
class TaskSpec:
    """What a task predicts and how it is scored."""

    name: str
    """Registry name: a GLUE task ('cola', 'sst2', ...), 'rotten-tomatoes', 'gsm8k' or 'custom'."""
    kind: str
    """One of :data:`KINDS`: 'classification', 'regression' or 'causal-lm'."""
    num_labels: int | None
    """Number of classes for classification; ``None`` for regression and causal LM."""
    label_names: tuple[str, ...] | None
    """Raw label strings as they appear in the files, in order of class index."""
    pair: bool
    """True when every example is a pair of texts (sentence-pair tasks)."""
    metrics: tuple[str, ...]
    """Names in the ``layerwise.data.task_metrics`` metric registry reported for this task."""
    main_metric: str
    """The metric used to pick the best checkpoint (one of ``metrics``)."""

    def __post_init__(self) -> None:
        assert self.kind in KINDS, self.kind
        assert self.main_metric in self.metrics, (self.main_metric, self.metrics)
        assert self.label_names is None or len(self.label_names) == self.num_labels

    @property
    def head(self) -> str:
        """The model head this task needs: 'classification', 'regression' or 'causal-lm'."""
        return self.kind


def _cls(name: str, labels: tuple[str, ...], pair: bool, metrics: tuple[str, ...]) -> TaskSpec:
    return TaskSpec(name, "classification", len(labels), labels, pair, metrics, metrics[0])


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        _cls("cola", _BINARY, False, ("matthews", "accuracy")),
        _cls("sst2", _BINARY, False, ("accuracy",)),
        _cls("mrpc", _BINARY, True, ("accuracy", "f1")),
        TaskSpec("stsb", "regression", None, None, True, ("pearson", "spearman"), "pearson"),
        _cls("qqp", _BINARY, True, ("accuracy", "f1")),
        _cls("mnli", ("entailment", "neutral", "contradiction"), True, ("accuracy",)),
        _cls("mnli-mm", ("entailment", "neutral", "contradiction"), True, ("accuracy",)),
        _cls("qnli", _NLI2, True, ("accuracy",)),
        _cls("rte", _NLI2, True, ("accuracy",)),
        _cls("wnli", _BINARY, True, ("accuracy",)),
        _cls("rotten-tomatoes", _BINARY, False, ("accuracy", "f1")),
        TaskSpec("gsm8k", "causal-lm", None, None, False, ("exact_match",), "exact_match"),
        # A template: load_task replaces kind, labels and pair-ness with what the user's file holds.
        TaskSpec("custom", "classification", None, None, False, ("accuracy",), "accuracy"),
    ]
}
"""Every known task by canonical name."""

_ALIASES = {
    "sst-2": "sst2",
    "sts-b": "stsb",
    "mnli-m": "mnli",
    "mnli-matched": "mnli",
    "mnli-mismatched": "mnli-mm",
    "rottentomatoes": "rotten-tomatoes",
    "gsm-8k": "gsm8k",
    "csv": "custom",
    "jsonl": "custom",
    "json": "custom",
    "tsv": "custom",
}


def canonical_task_name(name: str) -> str | None:
    """The registry name for ``name`` (case, '_' vs '-' and aliases like 'SST-2' ignored), or ``None``."""
    key = name.strip().lower().replace("_", "-").replace(" ", "-")
    if key.startswith("glue-") or key.startswith("glue/"):
        key = key[5:]
    key = _ALIASES.get(key, key)
    return key if key in TASKS else None


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` registered as ``name`` (or an alias); unknown names raise ``ConfigError``."""
    key = canonical_task_name(name)
    if key is None:
        raise ConfigError(
            f"--task {name!r} is not a known task; known tasks: {', '.join(TASKS)} "
            f"(or 'csv'/'jsonl' for your own file, or 'hf:<name>[:<config>]' for a Hugging Face dataset)"
        )
    return TASKS[key]
