"""Offline tokenizer (a byte-level BPE trained in-process) and packing documents into blocks.

Blocks are int32 [N, seq_len] arrays. Packing respects document boundaries: a document is never
split across blocks unless it is longer than one (then it is cut into whole blocks plus a tail
placed like a document), and documents are placed best-fit decreasing. The unused end of a
block holds PAD, which `lm_inputs` turns into ignored labels.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

EOS = "<|endoftext|>"
PAD = -100  # the label value the LM loss ignores; never a token id


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
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


def block_layout(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Where each piece of each document goes: (piece sizes, piece destinations as flat positions
    in the [blocks, seq_len] output, number of blocks). A document longer than a block is cut into
    whole blocks and a tail; pieces are then placed best-fit decreasing (each into the fullest
    block it fits), which leaves far less padding than filling blocks in order. Pieces are listed
    in source order: piece i starts at source position sum(sizes[:i])."""
    sizes = []
    for length in lengths.tolist():
        sizes += [seq_len] * (length // seq_len) + ([length % seq_len] if length % seq_len else [])
    destinations = np.empty(len(sizes), dtype=np.int64)
    rooms: list[tuple[int, int]] = []  # (free tokens, block) of the blocks not yet full, sorted
    num_blocks = 0
    for piece in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        size = sizes[piece]
        fit = bisect_left(rooms, (size, -1))
        if fit < len(rooms):
            room, block = rooms.pop(fit)
        else:
            room, block = seq_len, num_blocks
            num_blocks += 1
        destinations[piece] = block * seq_len + seq_len - room
        if room > size:
            insort(rooms, (room - size, block))
    return np.array(sizes, dtype=np.int64), destinations, num_blocks


def scatter_pieces(out: np.ndarray, tokens: np.ndarray, sizes: np.ndarray, destinations: np.ndarray) -> None:
    """Copy `tokens` into the flat `out` by the pieces that exactly cover them, in order."""
    starts = np.cumsum(sizes) - sizes
    out[np.repeat(destinations - starts, sizes) + np.arange(len(tokens))] = tokens


def pack(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """In-memory [N, seq_len] int32 blocks of the documents (see the module docstring)."""
    docs = encode_documents(tokenizer, texts)
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    tokens = np.fromiter(chain.from_iterable(docs), dtype=np.int32, count=int(lengths.sum()))
    sizes, destinations, num_blocks = block_layout(lengths, seq_len)
    out = np.full(num_blocks * seq_len, PAD, dtype=np.int32)
    if len(tokens):
        scatter_pieces(out, tokens, sizes, destinations)
    return torch.from_numpy(out.reshape(num_blocks, seq_len))


def lm_inputs(blocks: torch.Tensor, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of a batch of blocks: PAD positions read token 0 (they come after every
    real token of their block, so causal attention never lets them change a real token's loss)
    and are ignored by the loss."""
    labels = blocks.to(device, dtype=torch.long, non_blocking=True)
    return labels.clamp_min(0), labels
