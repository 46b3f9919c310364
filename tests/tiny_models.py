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


def tiny_llama(vocab_size: int = 64, *, layers: int = 4, hidden: int = 32,
               seed: int = 0) -> transformers.LlamaForCausalLM:
    """A seeded Llama causal LM: 4 heads (2 key/value heads of width 8), intermediate size 64."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=hidden // 4,
                                      intermediate_size=64, max_position_embeddings=128, pad_token_id=0,
                                      bos_token_id=1, eos_token_id=2)
    return transformers.LlamaForCausalLM(config)


def word_tokenizer(words: list[str]) -> transformers.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``words`` (ids 0-3: <pad>, <s>, </s>, <unk>), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *dict.fromkeys(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="<unk>")
