"""Where the model and the data come from: the settings every command that loads them shares."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from layerwise.runtime.errors import ConfigError
from layerwise.models.precision import DTYPES, QUANTIZATIONS
from layerwise.settings.fields import at_least, finite_numbers, flag, flag_name, one_of

__all__ = ["ModelSource", "DataSource", "DEFAULT_MODEL", "DEFAULT_TASK", "KINDS", "FILE_TASKS", "infer_task"]

DEFAULT_MODEL = "minilm"
"""The bundled default model (works offline)."""
DEFAULT_TASK = "rotten-tomatoes"
"""The embedded default task (works anywhere, no --data needed)."""
KINDS = ("classification", "regression", "causal-lm")
"""Task kinds a CSV/JSONL file can be read as."""


@dataclass(frozen=True)
class ModelSource:
    """Which model to load, and how."""

    model: str = DEFAULT_MODEL
    """local directory, .gguf file, bundled alias (see `layerwise models`) or hub id (name or org/name)"""
    cache_dir: str | None = None
    """where converted GGUF models are kept (default: $LAYERWISE_CACHE or ~/.cache/layerwise)"""
    trust_remote_code: bool = False
    """allow a hub model's own Python code to run (off by default)"""
    layers_path: str | None = None
    """dotted path to the ModuleList of transformer blocks, for architectures layerwise does not recognise
    (e.g. model.decoder.layers)"""
    dtype: str = flag("auto", choices=DTYPES)
    """dtype of the model's weights: auto (bfloat16 on a CUDA device that supports it, float32 on the CPU),
    float32, bfloat16 (also on the CPU) or float16 (CUDA only); the card's statistics and the adapters'
    weights stay float32/float64 whatever it is"""
    quantize: str = flag("none", choices=QUANTIZATIONS)
    """load the frozen base weights quantized: 4bit (NF4, QLoRA's recipe) or 8bit through bitsandbytes (needs
    the bitsandbytes package and a CUDA device); none keeps --dtype weights"""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"{flag_name(self, 'model')} must name a model (a folder, .gguf file, alias or "
                              f"hub id), got {self.model!r}")
        one_of(self, "dtype", DTYPES)
        one_of(self, "quantize", QUANTIZATIONS)
        if isinstance(self.cache_dir, str) and self.cache_dir:
            from layerwise.runtime.io import check_writable_dir

            # checked now, not after a GGUF conversion of half a minute
            check_writable_dir(self.cache_dir, flag_name(self, "cache_dir"))


FILE_TASKS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl"}
"""``--data`` file suffixes and the task they are read as when ``--task`` is not given."""


def infer_task(data: str | None) -> str:
    """The task of ``--data`` when ``--task`` is not given: ``csv``/``jsonl`` for such a file (your own
    columns and labels; reading it as the default task would silently take its labels for that task's), else
    :data:`DEFAULT_TASK`."""
    import os

    if data is not None:
        suffix = os.path.splitext(str(data))[1].lower()
        if suffix in FILE_TASKS:
            return FILE_TASKS[suffix]
    return DEFAULT_TASK


@dataclass(frozen=True)
class DataSource:
    """Which task and data to load, and how its rows are read."""

    task: str | None = DEFAULT_TASK
    """cola, sst2, mrpc, stsb, qqp, mnli, mnli-mm, qnli, rte, wnli, gsm8k, rotten-tomatoes (embedded), csv,
    jsonl or hf:<name>[:<config>] (default: csv or jsonl when --data is such a file, else rotten-tomatoes)"""
    data: str | None = None
    """folder with the task's files (GLUE tsv, GSM8K jsonl) or a CSV/JSONL file"""
    text_column: str | None = None
    """CSV/JSONL column holding the text"""
    pair_column: str | None = None
    """CSV/JSONL column holding the second text of a pair task"""
    label_column: str | None = None
    """CSV/JSONL column holding the label"""
    kind: str | None = flag(None, choices=KINDS)
    """what a CSV/JSONL file's labels are (default: integer labels are classes)"""
    num_labels: int | None = None
    """number of classes a CSV/JSONL file's label column holds (states intent: a column with more distinct
    values, or as many as rows, is refused as not a label column)"""
    label_names: str | None = None
    """comma-separated class labels of a CSV/JSONL file, in class-index order (e.g. neg,pos); any other value
    in the label column is an error naming its line"""
    dev_fraction: float = 0.1
    """share of the rows held out as dev set when the data has no dev split, in (0, 1)"""
    max_length: int = 128
    """truncate examples to this many tokens"""
    train_subset: int | None = None
    """train on a fixed, class-stratified sample of this many training examples (the same sample in every
    run; default: all of them)"""
    validation_fraction: float = 0.0
    """hold out this share of the training examples (a fixed, stratified draw) as a validation split that
    chooses the checkpoint and stops early, so the dev set is only reported; 0 lets the dev set choose"""

    FLAGS: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        if self.task is None:  # not given: the file's own format, else the default task
            object.__setattr__(self, "task", infer_task(self.data))
        finite_numbers(self)
        if self.kind is not None and self.kind not in KINDS:
            raise ConfigError(f"{flag_name(self, 'kind')} must be one of {', '.join(KINDS)}, got {self.kind!r}")
        self._check_labels()
        if isinstance(self.dev_fraction, bool) or not isinstance(self.dev_fraction, (int, float)) \
                or not 0.0 < self.dev_fraction < 1.0:
            raise ConfigError(f"{flag_name(self, 'dev_fraction')} must be between 0 and 1 (exclusive), "
                              f"got {self.dev_fraction!r}")
        at_least(self, "max_length", 8)
        if self.train_subset is not None:
            at_least(self, "train_subset", 2)
        if isinstance(self.validation_fraction, bool) or not isinstance(self.validation_fraction, (int, float)) \
                or not 0.0 <= self.validation_fraction < 1.0:
            raise ConfigError(f"{flag_name(self, 'validation_fraction')} must be in [0, 1) (0: no validation "
                              f"split), got {self.validation_fraction!r}")

    def _check_labels(self) -> None:
        if self.num_labels is not None and (isinstance(self.num_labels, bool) or not isinstance(self.num_labels, int)
                                            or self.num_labels < 2):
            raise ConfigError(f"{flag_name(self, 'num_labels')} must be a whole number >= 2, got {self.num_labels!r}")
        if self.label_names is None:
            return
        names = self.label_name_list
        if not isinstance(self.label_names, str) or len(names) < 2 or len(set(names)) != len(names) or "" in names:
            raise ConfigError(f"{flag_name(self, 'label_names')} must list at least 2 distinct comma-separated "
                              f"labels (e.g. neg,pos), got {self.label_names!r}")
        if self.num_labels is not None and self.num_labels != len(names):
            raise ConfigError(f"{flag_name(self, 'num_labels')} {self.num_labels} disagrees with "
                              f"{flag_name(self, 'label_names')} {self.label_names!r} ({len(names)} labels)")

    @property
    def label_name_list(self) -> list[str]:
        """``label_names`` split at commas (stripped); empty when not given."""
        if not isinstance(self.label_names, str):
            return []
        return [n.strip() for n in self.label_names.split(",")]

    @property
    def columns(self) -> dict[str, str | None]:
        """The column flags as ``load_task`` keyword arguments."""
        return {"text_column": self.text_column, "pair_column": self.pair_column, "label_column": self.label_column}

    def load(self) -> Any:
        """Read the task (:func:`layerwise.data.load_task`) with these settings."""
        from layerwise.data import load_task

        kwargs: dict[str, Any] = {k: v for k, v in self.columns.items() if v is not None}
        if self.kind is not None:
            kwargs["kind"] = self.kind
        if self.num_labels is not None:
            kwargs["num_labels"] = self.num_labels
        if self.label_names is not None:
            kwargs["label_names"] = tuple(self.label_name_list)
        data = load_task(self.task, self.data, dev_fraction=self.dev_fraction, **kwargs)
        return self.carve(data)

    def carve(self, data: Any) -> Any:
        """``data`` (a :class:`layerwise.data.TaskData`) cut to ``train_subset`` with ``validation_fraction``
        of it held out (see :mod:`layerwise.data.holdout`)."""
        from layerwise.data.holdout import hold_out_validation, subset_train

        if self.train_subset is not None:
            data = subset_train(data, self.train_subset, flag_name(self, "train_subset"))
        if self.validation_fraction:
            data = hold_out_validation(data, self.validation_fraction, flag_name(self, "validation_fraction"))
        return data
