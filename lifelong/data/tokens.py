"""Offline tokenizer (a byte-level BPE trained in-process) and packing text into blocks."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a GPT-2 style byte-level BPE on the stream: milliseconds, no download."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, pad_token=EOS)


def load_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def encode_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each document, each preceded by EOS as its boundary / BOS."""
    bos = tokenizer.eos_token_id
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [[bos, *doc] for doc in ids]


def pack(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """Concatenate documents and cut them into [N, seq_len] blocks (the remainder is dropped;
    a corpus shorter than one block is padded with EOS)."""
    flat = [tok for doc in encode_documents(tokenizer, texts) for tok in doc]
    if len(flat) < seq_len:
        flat += [tokenizer.eos_token_id] * (seq_len - len(flat))
    usable = len(flat) // seq_len * seq_len
    return torch.tensor(flat[:usable], dtype=torch.long).view(-1, seq_len)
