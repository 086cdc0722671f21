"""Shared fixtures: tiny random causal LMs with tokenizers trained here, saved to a directory and
reloaded through the Auto classes exactly as a user's local model directory would be.

Two tokenizer families are covered because they split a prompt/answer boundary differently:
GPT-2 style byte-level BPE (a leading space is part of the next token, "Ġparis") and a
SentencePiece-style Metaspace BPE as Llama uses (a space becomes "▁" and a BOS token is prepended).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

# One thread: tests are deterministic and do not fight other processes for the two cores.
torch.set_num_threads(1)

TRAINING_TEXT = [
    "Question: What is the capital of France?\nAnswer: Paris",
    "Question: What is the capital of Italy?\nAnswer: Rome",
    "Question: What is the capital of Spain?\nAnswer: Madrid",
    "Answer the question precisely and concisely.\nQuestion: Who wrote Hamlet?\nAnswer: Shakespeare",
    "The quick brown fox jumps over the lazy dog. 0123456789 , . ! ? : ; ' \" ( ) - +",
    "Paris is the capital and largest city of France. Rome is in Italy.",
] * 20


def _train_bpe(pre_tokenizer, decoder, special_tokens: list[str], vocab_size: int = 400) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoder
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
    return tokenizer


def build_tiny_gpt2(directory: Path, seed: int = 0, positions: int = 256) -> Path:
    """Byte-level BPE, no pad token (as GPT-2 ships), eos == bos == <|endoftext|>; a context of `positions`
    tokens (the small default keeps the context-fitting paths in reach of short test prompts)."""
    raw = _train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(), ["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=positions, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2LMHeadModel(config)
    # A sampling generation config, as many hub models ship: the backend must ignore it.
    model.generation_config.do_sample = True
    model.generation_config.temperature = 0.7
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_llama(directory: Path, seed: int = 0) -> Path:
    """SentencePiece-style Metaspace BPE with <s> prepended, as Llama tokenizers do."""
    raw = _train_bpe(
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        decoders.Metaspace(replacement="▁", prepend_scheme="first"),
        ["<unk>", "<s>", "</s>"],
    )
    from tokenizers import processors

    raw.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", raw.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    return build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
