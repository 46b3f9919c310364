"""What ``layerwise bench`` runs besides the training settings: methods, seeds, k values, inference timing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from layerwise.runtime.errors import ConfigError
from layerwise.settings.fields import at_least, finite_numbers, flag, flag_name

__all__ = ["BenchOptions", "parse_int_list"]


def parse_int_list(spec: str | list | tuple, flag_text: str = "--train-seeds") -> tuple[int, ...]:
    """``0,1,2`` or ``0-2`` (or a mix, or a list) -> (0, 1, 2); errors name ``flag_text``."""
    if isinstance(spec, (list, tuple)):
        spec = ",".join(str(x) for x in spec)
    out: list[int] = []
    try:
        for part in (p.strip() for p in str(spec).split(",")):
            if part:
                a, sep, b = part.partition("-")
                out += list(range(int(a), int(b) + 1)) if sep and a else [int(part)]
    except ValueError as err:
        raise ConfigError(f"{flag_text} takes integers like 0,1,2 or 0-2, got {spec!r}") from err
    if not out:
        raise ConfigError(f"{flag_text} is empty; give integers like 0,1,2")
    return tuple(dict.fromkeys(out))


@dataclass(frozen=True)
class BenchOptions:
    """The bench's own settings (the training settings of every cell are a ``TrainConfig``)."""

    methods: str = "all"
    """comma list of bench methods, or 'all'; actnorm-top takes each --ks, actnorm-top2 one k; see
    --list-methods"""
    train_seeds: tuple[int, ...] = flag((0, 1, 2), parse=lambda s: parse_int_list(s, "--train-seeds"),
                                        metavar="0,1,2")
    """training seeds of every method, e.g. 0,1,2 or 0-4"""
    ks: tuple[int, ...] = flag((1, 2, 3), parse=lambda s: parse_int_list(s, "--ks"), metavar="1,2,3")
    """k values of actnorm-top{k}"""
    full_lr: float = 1e-4
    """peak learning rate of full fine-tuning (it wants a far smaller one than adapters)"""
    inference_examples: int = 64
    """dev examples timed for inference, 0 skips it"""
    inference_repeats: int = 3
    """timed inference passes, the median is kept"""
    inference_new_tokens: int = 16
    """causal LM: tokens generated per prompt when timing TTFT and ITL"""

    FLAGS: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        finite_numbers(self)
        object.__setattr__(self, "train_seeds", parse_int_list(self.train_seeds, flag_name(self, "train_seeds")))
        object.__setattr__(self, "ks", parse_int_list(self.ks, flag_name(self, "ks")))
        if any(s < 0 for s in self.train_seeds):
            raise ConfigError(f"{flag_name(self, 'train_seeds')} must be >= 0, got {list(self.train_seeds)}")
        if any(k < 1 for k in self.ks):
            raise ConfigError(f"{flag_name(self, 'ks')} must be >= 1, got {list(self.ks)}")
        if not isinstance(self.full_lr, (int, float)) or isinstance(self.full_lr, bool) or not self.full_lr > 0:
            raise ConfigError(f"{flag_name(self, 'full_lr')} must be > 0, got {self.full_lr!r}")
        at_least(self, "inference_examples", 0)
        at_least(self, "inference_repeats", 1)
        at_least(self, "inference_new_tokens", 1)
