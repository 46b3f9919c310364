"""Causal-LM evaluation end to end (left-padded prompts, greedy ``generate``, new tokens decoded, exact match of
the final number) against a known answer: a one-block Llama built by hand as a bigram machine whose greedy
continuation of every GSM8K prompt is "42", or "7 so 42"."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from layerwise.data import load_task
from layerwise.train import evaluate

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

VOCAB = ["[PAD]", "</s>", "[UNK]", "Question", "Answer", ":", "so", "42", "7", "8", "How", "many", "?", "eggs",
         "are", "."]
# The next token after each token (greedy). A right-padded prompt ends in [PAD] and goes on "8 8 ...", and so
# would a generation that ran past the end.
WRONG = {"[PAD]": "8", "</s>": "8", "8": "8"}
SAYS_42 = {":": "42", "42": "</s>", **WRONG}  # the first new token is the answer
SAYS_7_SO_42 = {":": "7", "7": "so", "so": "42", "42": "</s>", **WRONG}  # the answer is the last number


def bigram_tokenizer() -> transformers.PreTrainedTokenizerFast:
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", eos_token="</s>",
                                                unk_token="[UNK]")


def bigram_llama(next_token: dict[str, str]) -> transformers.LlamaForCausalLM:
    """Attention and MLP write nothing (o_proj = down_proj = 0), so the last hidden state is the one-hot
    embedding of the current token; RMSNorm scales it by sqrt(V) and lm_head row next_token[t] picks the next one.
    """
    V = len(VOCAB)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=V, num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, intermediate_size=8, max_position_embeddings=128,
                                   tie_word_embeddings=False, pad_token_id=0, eos_token_id=1, bos_token_id=None)
    model = transformers.LlamaForCausalLM(cfg)
    ids = {w: i for i, w in enumerate(VOCAB)}
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(V))
        layer = model.model.layers[0]
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(V, V)
        for t in range(V):
            head[ids[next_token.get(VOCAB[t], "</s>")], t] = 1.0
        model.lm_head.weight.copy_(head)
    model.generation_config.eos_token_id = ids["</s>"]
    model.generation_config.pad_token_id = ids["[PAD]"]
    return model.eval()


@pytest.mark.parametrize("next_token", [SAYS_42, SAYS_7_SO_42], ids=["42", "7-so-42"])
def test_greedy_generation_is_scored_by_the_final_number(tmp_path: Path, next_token: dict[str, str]) -> None:
    rows = [("How many eggs ?", "so . #### 42"), ("How many eggs are there ?", "7 so . #### 7"),
            ("How many ?", "#### 42")]
    lines = [json.dumps({"question": q, "answer": a}) for q, a in rows]
    for name in ("train.jsonl", "test.jsonl"):
        (tmp_path / name).write_text("\n".join(lines) + "\n")
    data = load_task("gsm8k", tmp_path)
    tok, model = bigram_tokenizer(), bigram_llama(next_token)
    # batch size 2: prompts of different lengths share a left-padded batch
    metrics = evaluate(model, data.dev, data.task, tok, batch_size=2, max_length=64, gen_max_new_tokens=8)
    assert metrics["exact_match"] == pytest.approx(2 / 3)  # its final number is 42: right twice, wrong once
