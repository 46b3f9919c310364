"""Tokenisation and padding: examples -> unpadded features -> padded tensor batches.

Classification/regression features hold the tokenizer's fields plus ``labels`` (class index or float).
Causal-LM features hold ``input_ids = prompt + answer + EOS`` and ``labels`` equal to ``input_ids`` on the
answer tokens and -100 on the prompt; padding also gets -100 (found by position, never by token id, since
a decoder's pad token is often its EOS token).
"""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from layerwise.data.examples import Example
from layerwise.data.readers import DataWarning
from layerwise.data.tasks import TaskSpec
from layerwise.runtime.errors import ConfigError, DataError, ModelError

__all__ = ["IGNORE_INDEX", "encode_examples", "example_lengths", "warn_truncation", "TRUNCATION_WARN_SHARE", "Collator", "make_batches", "GenerationBatch", "generation_batches"]

IGNORE_INDEX = -100
"""Label value the cross-entropy loss ignores (prompt and padding positions of causal-LM batches)."""


def encode_examples(examples: Sequence[Example], tokenizer: Any, task: TaskSpec,
                    max_length: int = 128) -> list[dict]:
    """Tokenise ``examples`` for ``task`` into unpadded features (lists of ints), truncated to ``max_length``."""
    if max_length < 2:
        raise ConfigError(f"--max-length must be at least 2 tokens, got {max_length}")
    if task.kind == "causal-lm":
        return _encode_causal(examples, tokenizer, max_length)
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if task.pair else None
    if pairs is not None and any(p is None for p in pairs):
        raise DataError(f"task {task.name!r} is a sentence-pair task but an example has no text_pair")
    if not texts:
        return []
    enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    features = [{k: list(enc[k][i]) for k in keys} for i in range(len(texts))]
    for f, e in zip(features, examples):
        if e.label is not None:
            f["labels"] = e.label
    return features


TRUNCATION_WARN_SHARE = 0.05
"""``warn_truncation`` warns when more than this share of the examples is longer than ``--max-length``."""


def example_lengths(examples: Sequence[Example], tokenizer: Any, task: TaskSpec) -> list[int]:
    """Tokens of each example before truncation (prompt + answer + EOS for causal LM; both texts of a pair)."""
    if not examples:
        return []
    if task.kind == "causal-lm":
        return [len(ids) + 1 for ids in tokenizer([e.text + (e.target or "") for e in examples])["input_ids"]]
    pairs = [e.text_pair for e in examples] if task.pair else None
    return [len(ids) for ids in tokenizer([e.text for e in examples], pairs, truncation=False)["input_ids"]]


def warn_truncation(examples: Sequence[Example], tokenizer: Any, task: TaskSpec, max_length: int,
                    what: str = "training examples") -> tuple[float, int] | None:
    """Warn (a ``DataWarning``, one line) when more than :data:`TRUNCATION_WARN_SHARE` of ``examples`` is longer
    than ``max_length``: the share truncated, the median length and the ``--max-length`` that keeps 95% whole.
    Returns (share truncated, length of the 95th percentile), or None without examples."""
    lengths = sorted(example_lengths(examples, tokenizer, task))
    if not lengths:
        return None
    share = sum(n > max_length for n in lengths) / len(lengths)
    keep95 = lengths[min(len(lengths) - 1, math.ceil(0.95 * len(lengths)) - 1)]
    if share > TRUNCATION_WARN_SHARE:
        warnings.warn(f"{share:.0%} of the {len(lengths):,} {what} are longer than --max-length {max_length} and "
                      f"are truncated (median {lengths[len(lengths) // 2]} tokens); --max-length {keep95} keeps 95% "
                      "of them whole", DataWarning, stacklevel=2)
    return share, keep95


def _encode_causal(examples: Sequence[Example], tokenizer: Any, max_length: int) -> list[dict]:
    """prompt + target + EOS; the answer tokens are those after the longest common prefix of the
    tokenised prompt and the tokenised prompt+target (robust to a token merging across the boundary)."""
    eos = _special_id(tokenizer, "eos")
    if any(e.target is None for e in examples):
        raise DataError("a causal-LM example has no target (the answer text to train on)")
    if not examples:
        return []
    prompts = tokenizer([e.text for e in examples])["input_ids"]
    fulls = tokenizer([e.text + e.target for e in examples])["input_ids"]  # type: ignore[operator]
    bos = getattr(tokenizer, "bos_token_id", None)
    out, cut_answers = [], 0
    for prompt, full in zip(prompts, fulls):
        n = _common_prefix(prompt, full)
        prompt_ids, answer = list(full[:n]), list(full[n:]) + [eos]
        if len(answer) > max_length - 1:  # keep at least one prompt token
            answer, cut_answers = answer[: max_length - 1], cut_answers + 1
        prompt_ids = _keep_right(prompt_ids, max_length - len(answer), bos)
        ids = prompt_ids + answer
        out.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                    "labels": [IGNORE_INDEX] * len(prompt_ids) + answer})
    if cut_answers:
        warnings.warn(f"{cut_answers} answer(s) longer than --max-length {max_length} were cut at the end "
                      f"(their EOS is lost); raise --max-length", DataWarning, stacklevel=3)
    return out


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _keep_right(ids: list[int], room: int, bos: int | None) -> list[int]:
    """The last ``room`` tokens of ``ids`` (a leading BOS token is kept in front)."""
    if len(ids) <= room:
        return ids
    if room >= 2 and bos is not None and ids and ids[0] == bos:
        return [bos] + ids[len(ids) - room + 1:]
    return ids[len(ids) - room:] if room > 0 else []


def _special_id(tokenizer: Any, which: str) -> int:
    value = getattr(tokenizer, f"{which}_token_id", None)
    if value is None:
        raise ModelError(f"the tokenizer has no {which} token; set one (e.g. tokenizer.{which}_token = ...)")
    return int(value)


def _pad(seqs: Sequence[Sequence], length: int, value: Any, left: bool = False) -> list[list]:
    if left:
        return [[value] * (length - len(s)) + list(s) for s in seqs]
    return [list(s) + [value] * (length - len(s)) for s in seqs]


class Collator:
    """Pads a list of features into a batch of tensors (right padding, for training and scoring).

    ``pad_to=None`` pads to the longest example of the batch (dynamic padding); an int pads every batch to
    exactly that length (fixed shapes for benchmarks; a longer example raises ``ConfigError``).
    """

    def __init__(self, tokenizer: Any, task: TaskSpec, pad_to: int | None = None) -> None:
        if pad_to is not None and pad_to < 1:
            raise ConfigError(f"--pad-to must be a positive number of tokens, got {pad_to}")
        self.task = task
        self.pad_to = pad_to
        self.pad_id = _special_id(tokenizer, "pad")
        self.pad_type_id = int(getattr(tokenizer, "pad_token_type_id", 0) or 0)

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Batch ``features`` (from :func:`encode_examples`): input_ids, attention_mask, [token_type_ids,] labels."""
        assert features, "cannot collate an empty batch"
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to is not None and longest > self.pad_to:
            raise ConfigError(f"--pad-to {self.pad_to} is shorter than an example of {longest} tokens; "
                              f"use --pad-to >= --max-length")
        length = self.pad_to or longest
        values = {"input_ids": self.pad_id, "attention_mask": 0, "token_type_ids": self.pad_type_id}
        batch = {k: torch.tensor(_pad([f[k] for f in features], length, v), dtype=torch.long)
                 for k, v in values.items() if k in features[0]}
        if "labels" in features[0]:
            batch["labels"] = self._labels([f["labels"] for f in features], length)
        return batch

    def _labels(self, labels: list, length: int) -> torch.Tensor:
        if self.task.kind == "causal-lm":
            return torch.tensor(_pad(labels, length, IGNORE_INDEX), dtype=torch.long)
        if self.task.kind == "regression":
            return torch.tensor(labels, dtype=torch.float32)
        return torch.tensor(labels, dtype=torch.long)


def make_batches(examples: Sequence[Example], tokenizer: Any, task: TaskSpec, batch_size: int,
                 max_length: int = 128, shuffle: bool = False, seed: int = 0,
                 pad_to: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Tokenise, order (seeded shuffle if asked) and pad ``examples`` into batches of ``batch_size``."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    features = encode_examples(examples, tokenizer, task, max_length)
    order = list(range(len(features)))
    if shuffle:
        random.Random(seed).shuffle(order)
    collate = Collator(tokenizer, task, pad_to)
    return [collate([features[i] for i in order[s: s + batch_size]]) for s in range(0, len(order), batch_size)]


class GenerationBatch(NamedTuple):
    """Left-padded prompts ready for ``model.generate(**inputs)`` and the reference answers."""

    inputs: dict[str, torch.Tensor]
    """input_ids and attention_mask, padded on the left so every prompt ends at the last position."""
    references: list[str]
    """The examples' targets ('' where an example has none), in batch order."""


def generation_batches(examples: Sequence[Example], tokenizer: Any, batch_size: int,
                       max_length: int = 256) -> list[GenerationBatch]:
    """Prompt-only batches for generation-based evaluation (prompts cut from the left to ``max_length``)."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    if max_length < 1:
        raise ConfigError(f"--max-length must be at least 1 token, got {max_length}")
    pad_id, bos = _special_id(tokenizer, "pad"), getattr(tokenizer, "bos_token_id", None)
    out = []
    for s in range(0, len(examples), batch_size):
        chunk = examples[s: s + batch_size]
        ids = [_keep_right(list(p), max_length, bos) for p in tokenizer([e.text for e in chunk])["input_ids"]]
        length = max(len(p) for p in ids)
        inputs = {"input_ids": torch.tensor(_pad(ids, length, pad_id, left=True), dtype=torch.long),
                  "attention_mask": torch.tensor(_pad([[1] * len(p) for p in ids], length, 0, left=True),
                                                 dtype=torch.long)}
        out.append(GenerationBatch(inputs, [e.target or "" for e in chunk]))
    return out
