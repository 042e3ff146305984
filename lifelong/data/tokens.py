"""Offline tokenizer (a byte-level BPE trained in-process) and packing documents into blocks.

Blocks are int32 [N, seq_len] arrays. Packing respects document boundaries: a document is never
split across blocks unless it is longer than one (then it is cut into whole blocks plus a tail
placed like a document), and documents are placed best-fit decreasing. A tail placed after
another document has no document_start token before it, so its first token is trained as that document's next
token: one noisy label per long document. Opening a block for every tail instead (a block's
first token is never a label) measured 7% padding on documents averaging 1.8 blocks, against
0.02% now. The unused end of a
block holds PAD, which `lm_inputs` turns into ignored labels. `ConcatBlocks` joins several
stages' blocks without reading them into memory.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable, Iterable
from functools import reduce
from itertools import accumulate, chain
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
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


def document_start(tokenizer) -> int:
    """The token every document and probe starts with: the tokenizer's BOS (Llama's <s>), else its EOS
    (GPT-2's and the in-process tokenizer's BOS is their EOS, <|endoftext|>)."""
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each document, each preceded by document_start as its boundary."""
    start = document_start(tokenizer)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [[start, *doc] for doc in ids]


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


def pack_documents(lengths: np.ndarray, chunks: Iterable[np.ndarray], seq_len: int,
                   allocate: Callable[[tuple[int, int]], np.ndarray]) -> np.ndarray:
    """[N, seq_len] int32 blocks of documents given by their token lengths and their tokens, which
    arrive in `chunks` that each hold whole documents, in order. The layout comes from the lengths
    alone, so a corpus on disk is copied one chunk at a time into `allocate`'s array (a memmap)."""
    sizes, destinations, num_blocks = block_layout(lengths, seq_len)
    out = allocate((num_blocks, seq_len))
    flat = out.reshape(-1)
    flat[:] = PAD
    piece_starts = np.cumsum(sizes) - sizes
    source = 0
    for tokens in chunks:
        # the chunk's pieces are the ones starting in it
        first, end = np.searchsorted(piece_starts, [source, source + len(tokens)])
        offsets = destinations[first:end] - (piece_starts[first:end] - source)
        flat[np.repeat(offsets, sizes[first:end]) + np.arange(len(tokens))] = tokens
        source += len(tokens)
    return out


def pack(tokenizer, texts: list[str], seq_len: int) -> torch.Tensor:
    """In-memory [N, seq_len] int32 blocks of the documents (see the module docstring)."""
    docs = encode_documents(tokenizer, texts)
    lengths = np.fromiter(map(len, docs), dtype=np.int64, count=len(docs))
    tokens = np.fromiter(chain.from_iterable(docs), dtype=np.int32, count=int(lengths.sum()))
    return torch.from_numpy(pack_documents(lengths, [tokens], seq_len, lambda shape: np.empty(shape, np.int32)))


def sample_rows(num_rows: int, samples: int, seed: int) -> torch.Tensor:
    """`samples` distinct row indices out of `num_rows` (all if there are fewer), drawn by their own
    generator: the same on every rank, and the global RNG is not drawn from. Packing puts the
    longest documents first, and streams list their kinds of sequences in turn, so the first rows
    are no sample (EWC's Fisher, TGL's trace)."""
    return torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))[:samples]


def lm_inputs(blocks: torch.Tensor, device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, labels) of a batch of blocks: PAD positions read token 0 (they come after every
    real token of their block, so causal attention never lets them change a real token's loss)
    and are ignored by the loss."""
    labels = blocks.to(device, dtype=torch.long, non_blocking=True)
    return labels.clamp_min(0), labels


def scored_tokens(labels: torch.Tensor) -> int:
    """Tokens a batch is scored on: every position after the first whose label is not PAD."""
    return int((labels[:, 1:] != PAD).sum())


def labelled_tokens(blocks: torch.Tensor) -> int:
    """scored_tokens, at least 1: what a batch's summed loss is divided by."""
    return max(1, scored_tokens(blocks))


def summed_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the next-token cross-entropies over the labelled tokens (PAD ignored)."""
    # shift the labels, not the logits: slicing [B, T, vocab] logits copies them, and again in backward
    targets = F.pad(labels[:, 1:], (0, 1), value=PAD)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=PAD, reduction="sum")


class PickedRows:
    """Rows `picks` of a block tensor, read only where indexed (a ConcatBlocks part): indexing
    `blocks[picks]` up front would copy every pick, and picks may repeat rows many times."""

    def __init__(self, blocks: torch.Tensor, picks: torch.Tensor):
        self.blocks, self.picks = blocks, picks
        self.dtype, self.device = blocks.dtype, blocks.device

    def __len__(self) -> int:
        return len(self.picks)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.picks), *self.blocks.shape[1:]))

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.blocks[self.picks[rows]]


class ConcatBlocks:
    """The rows of several [N_i, seq_len] block tensors as one [sum N_i, seq_len] table, read only
    where indexed: torch.cat would copy every part, reading memory-mapped corpora whole. Indexing
    with row indices (a tensor, an int or a slice) returns what indexing their torch.cat would."""

    def __init__(self, parts: list[torch.Tensor | PickedRows]):
        if len({p.shape[1:] for p in parts}) != 1:
            raise ValueError(f"parts must share their block shape, got {[tuple(p.shape) for p in parts]}")
        self.parts = list(parts)
        self.starts = torch.tensor([0, *accumulate(len(p) for p in parts)])  # part i: rows starts[i]..starts[i+1]
        self.dtype = reduce(torch.promote_types, (p.dtype for p in parts))  # as torch.cat promotes

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.parts[0].shape[1:]))

    def __getitem__(self, index: torch.Tensor | slice | int) -> torch.Tensor:
        if isinstance(index, tuple):  # as_tensor would read blocks[i, j] as rows i and j
            raise IndexError("ConcatBlocks indexes rows only: take columns of the result, blocks[rows][:, j]")
        rows = torch.arange(*index.indices(len(self))) if isinstance(index, slice) else torch.as_tensor(index)
        if rows.dtype not in (torch.int64, torch.int32):  # a bool mask would silently read as rows 0 and 1
            raise IndexError(f"ConcatBlocks takes integer row indices, got {rows.dtype}")
        rows = rows.long()
        if rows.numel() and (rows.min() < -len(self) or rows.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} blocks")
        rows = torch.where(rows < 0, rows + len(self), rows)
        part = torch.searchsorted(self.starts, rows, right=True) - 1  # the last part starting at or before
        out = torch.empty((*rows.shape, *self.shape[1:]), dtype=self.dtype, device=self.parts[0].device)
        for i, blocks in enumerate(self.parts):
            mine = part == i
            if mine.any():
                out[mine] = blocks[rows[mine] - self.starts[i]].to(self.dtype)
        return out
