"""Tiny random-weight models shared by the tests (same shapes everywhere a test needs 'a small BERT')."""

from __future__ import annotations

import torch
import transformers


def tiny_bert(vocab_size: int = 100, *, layers: int = 2, hidden: int = 32, num_labels: int = 2, seed: int = 0,
              max_positions: int = 128) -> transformers.BertForSequenceClassification:
    """A seeded BERT classifier with 4 heads and intermediate size 64, in training mode (dropout 0.1)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=4, intermediate_size=64,
                                     max_position_embeddings=max_positions, num_labels=num_labels)
    return transformers.BertForSequenceClassification(config)
