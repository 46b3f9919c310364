"""``TrainConfig``: every knob of a training run, one documented field each, checked where it is made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

from layerwise.runtime.errors import ConfigError
from layerwise.settings.fields import at_least, finite_numbers, flag, one_of
from layerwise.settings.fields import flag_name as _field_flag
from layerwise.train.reporting import REPORT_TO
from layerwise.train.freeze import FREEZE_MODES

DEV_EVAL_MODES = ("every", "best")
"""``--dev-eval``: when the dev set is scored in a run with a validation split."""

__all__ = ["TrainConfig", "SCHEDULERS", "DEV_EVAL_MODES", "FREEZE_MODES", "PREFIX_CACHE_MODES", "PREFIX_CACHE_DTYPES", "flag_name"]

SCHEDULERS = ("linear", "cosine", "constant")
"""Learning-rate decay shapes after warmup (see :mod:`layerwise.train.schedule`)."""
PREFIX_CACHE_MODES = ("off", "memory", "disk", "auto")
"""Where the frozen-prefix cache lives (see :mod:`layerwise.train.prefix.cache`); ``auto`` decides per run."""
PREFIX_CACHE_DTYPES = ("float32", "bfloat16", "float16")
"""Storage dtypes of the frozen-prefix cache (float32 is exact; the 16-bit ones halve its size)."""


def flag_name(field_name: str) -> str:
    """The CLI flag of a ``TrainConfig`` field: ``grad_accum`` -> ``--grad-accum``, ``seed`` -> ``--train-seed``."""
    return _field_flag(TrainConfig, field_name)


@dataclass
class TrainConfig:
    """Hyper-parameters and bookkeeping of one fine-tuning run (each field is a ``--flag`` of the CLI)."""

    steps: int
    """Total optimizer steps (each one sees ``batch_size * grad_accum`` examples)."""
    lr: float = 5e-4
    """Peak learning rate of AdamW, reached at the end of warmup."""
    weight_decay: float = 0.0
    """Decoupled AdamW weight decay on every trainable parameter."""
    warmup_ratio: float = 0.06
    """Fraction of ``steps`` spent ramping the learning rate up linearly from near zero."""
    scheduler: str = flag("linear", choices=SCHEDULERS)
    """Decay after warmup: 'linear' (to zero), 'cosine' (to zero) or 'constant'."""
    batch_size: int = 16
    """Examples per micro-batch (per forward/backward pass)."""
    grad_accum: int = 1
    """Micro-batches whose gradients are summed into one optimizer step."""
    max_length: int = 128
    """Tokens per example after truncation (prompt + answer for causal LM)."""
    eval_every: int = 0
    """Evaluate on the dev set every this many optimizer steps; 0 evaluates only at the end."""
    dev_eval: str = flag("every", choices=DEV_EVAL_MODES)
    """With a validation split (``--validation-fraction``): 'every' scores the dev set at each evaluation beside
    the validation split; 'best' scores it once, at the end, on the weights of the step the validation split
    chose (the same reported score, without the dev set's cost at every evaluation, and no dev curve)."""
    save_every: int = 0
    """Save a resumable checkpoint every this many steps; 0 saves only at the end and on interrupt."""
    early_stopping: int = 0
    """Stop after this many evaluations without a better main metric (patience); 0 turns it off."""
    seed: int = 0
    """Seeds the adapter initialisation, the data order and torch/python/numpy random state (dropout) of a
    fresh run."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value before each step; 0 turns clipping off."""
    eval_max_examples: int | None = None
    """Evaluate on the first this many dev examples; ``None`` uses all of them."""
    pad_to: int | None = None
    """``None`` pads each batch to its longest example; an int pads every batch to that length (benchmarks)."""
    gen_max_new_tokens: int = 256
    """Causal LM evaluation: the most tokens greedy generation may add after a prompt."""
    group_by_length: int = 0
    """Group examples of similar length into batches: sort by length within windows of this many batches,
    then shuffle the batches (0: off). Dynamic padding then pads little (see ``layerwise.train.data_order``)."""
    prefix_dropout: bool = False
    """Keep dropout in the frozen blocks below the lowest adapted block (off by default: they get no
    gradient, and their dropout only adds noise and compute; see ``layerwise.train.prefix.frozen``)."""
    prefix_cache: str = flag("auto", choices=PREFIX_CACHE_MODES)
    """Frozen-prefix cache: compute the hidden states entering the lowest adapted block once per example and
    train only the blocks above ('off', 'memory', 'disk'; 'auto' caches when the run makes more than one pass
    and the cache fits; see ``layerwise.train.prefix.cache``)."""
    prefix_cache_dtype: str = flag("float32", choices=PREFIX_CACHE_DTYPES)
    """Storage dtype of the prefix cache: 'float32' (exact), 'bfloat16' or 'float16' (half the size)."""
    prefix_cache_dir: str | None = None
    """Folder of the disk prefix cache, shared by runs over the same model prefix and data (default: the run's
    ``prefix_cache/`` folder)."""

    logging_steps: int = 50
    """Without a progress bar (stderr not a terminal: nohup, Slurm, a log file), print one line every this many
    steps (loss, learning rate, steps/s, ETA) and one per evaluation; 0: none."""
    report_to: str | None = flag(None, choices=REPORT_TO)
    """Also write the loss, learning rate and evaluation metrics for TensorBoard into --out's tensorboard/
    folder (needs the extra: pip install "layerwise[tensorboard]")."""

    gradient_checkpointing: bool = False
    """Recompute the adapted blocks' activations in the backward instead of keeping them (less memory, about
    one more forward of those blocks per step); only blocks with a trainable parameter are checkpointed and the
    frozen blocks below the lowest adapter stay out of the backward (see ``layerwise.train.prefix.recompute``)."""

    freeze: str = flag("off", choices=FREEZE_MODES)
    """Freeze as you go: 'auto' freezes the lowest trainable block when its gradient-norm change falls below
    ``--freeze-percentile`` of the trainable blocks' changes (AutoFreeze's rule), 'card' freezes blocks at
    fractions of the budget in the Layer Card's order; frozen blocks are always a bottom prefix and their
    output comes from the prefix cache (see ``layerwise.train.freeze``). 'off': every adapted block trains."""
    freeze_every: int = 0
    """Steps between two freezing checks; 0 checks at each evaluation (``--eval-every``), or every tenth of
    ``--steps`` when there is no evaluation before the end."""
    freeze_percentile: float = 50.0
    """``--freeze auto``: the lowest trainable block freezes when its gradient-norm change is below this
    percentile of the trainable blocks' changes (0-100)."""
    freeze_keep_top: int = 1
    """The top this many adapted blocks (and the task head) are never frozen."""
    freeze_start: float = 0.1
    """``--freeze card``: fraction of ``--steps`` at which the block the card ranks lowest freezes (0.1 and 0.5 were
    chosen over 0.3 and 0.7 on a validation split: docs/BENCHMARKS.md, freezing at convergence)."""
    freeze_end: float = 0.5
    """``--freeze card``: fraction of ``--steps`` at which the last freezable block (ranked highest) freezes."""
    freeze_metric: str = "resnorm"
    """``--freeze card``: the card metric that ranks the blocks (least important freezes first); also the
    ranking the observed freeze order is compared with (Kendall tau) when a card is at hand."""

    FLAGS: ClassVar[dict[str, str]] = {"seed": "train-seed"}
    """Fields whose flag is not their name with dashes (``seed`` is ``--train-seed``: ``--calibration-seed``
    is the card's)."""

    def __post_init__(self) -> None:
        finite_numbers(self)
        at_least(self, "steps", 1)
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise ConfigError(f"{flag_name('lr')} must be > 0, got {self.lr}")
        at_least(self, "weight_decay", 0.0)
        at_least(self, "warmup_ratio", 0.0)
        if not self.warmup_ratio < 1.0:
            raise ConfigError(f"{flag_name('warmup_ratio')} must be in [0, 1), got {self.warmup_ratio}")
        one_of(self, "scheduler", SCHEDULERS)
        for name, low in (("batch_size", 1), ("grad_accum", 1), ("max_length", 2), ("eval_every", 0),
                          ("save_every", 0), ("early_stopping", 0), ("seed", 0), ("max_grad_norm", 0.0),
                          ("gen_max_new_tokens", 1), ("group_by_length", 0), ("logging_steps", 0)):
            at_least(self, name, low)
        if self.eval_max_examples is not None:
            at_least(self, "eval_max_examples", 1)
        if self.pad_to is not None:
            at_least(self, "pad_to", 1)
            if self.pad_to < self.max_length:
                raise ConfigError(f"{flag_name('pad_to')} must be >= {flag_name('max_length')} ({self.max_length}) "
                                  f"so every example fits, got {self.pad_to}")
        one_of(self, "prefix_cache", PREFIX_CACHE_MODES)
        if self.report_to is not None:
            one_of(self, "report_to", REPORT_TO)
        one_of(self, "prefix_cache_dtype", PREFIX_CACHE_DTYPES)
        if self.prefix_cache_dir is not None and not str(self.prefix_cache_dir).strip():
            raise ConfigError(f"{flag_name('prefix_cache_dir')} must be a folder path, got an empty string")
        one_of(self, "freeze", FREEZE_MODES)
        one_of(self, "dev_eval", DEV_EVAL_MODES)
        at_least(self, "freeze_every", 0)
        at_least(self, "freeze_keep_top", 0)
        if not 0.0 < self.freeze_percentile <= 100.0:
            raise ConfigError(f"{flag_name('freeze_percentile')} must be in (0, 100], got {self.freeze_percentile}")
        if not 0.0 <= self.freeze_start <= self.freeze_end <= 1.0:
            raise ConfigError(f"{flag_name('freeze_start')} and {flag_name('freeze_end')} must satisfy 0 <= start <= "
                              f"end <= 1, got {self.freeze_start} and {self.freeze_end}")
        if self.freeze != "off" and self.gradient_checkpointing:
            raise ConfigError(f"{flag_name('freeze')} {self.freeze} does not support --gradient-checkpointing; "
                              "use one of them")
        if self.early_stopping and not self.eval_every:
            raise ConfigError(f"{flag_name('early_stopping')} needs {flag_name('eval_every')} > 0 (with 0 there is "
                              "only the final evaluation)")

    @property
    def freeze_interval(self) -> int:
        """Steps between two freezing checks: ``freeze_every``, else ``eval_every``, else a tenth of ``steps``."""
        return self.freeze_every or self.eval_every or max(1, self.steps // 10)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field."""
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of every field, in declaration order."""
        return tuple(f.name for f in fields(cls))

