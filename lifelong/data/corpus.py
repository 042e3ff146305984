"""Training corpora larger than memory: files on disk -> datasets' Arrow cache -> packed blocks.

    load_corpus      jsonl / csv files into a memory-mapped Arrow dataset (datasets' cache)
    tokenize_corpus  token ids per document, cached by datasets per (corpus, tokenizer)
    pack_corpus      boundary-respecting [N, seq_len] int32 blocks in a memory-mapped .npy
                     next to the tokenized cache, so a rerun maps it instead of packing again

Every step shows a progress bar; none holds the corpus in memory (packing reads document
lengths first, then copies tokens one Arrow chunk at a time).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from lifelong.data.stream import TextFiles
from lifelong.data.tokens import document_start, pack, pack_documents

if TYPE_CHECKING:  # imported where used: a run on in-memory text never loads datasets
    import datasets


# part of a packed cache's name: raise it when the layout pack_documents writes changes
PACKING_VERSION = 1


class CorpusFormatError(ValueError):
    pass


def load_corpus(files: TextFiles) -> datasets.Dataset:
    """The files' `column` as an Arrow dataset, memory-mapped from datasets' cache."""
    import datasets

    for path in files.paths:
        if not path.exists():
            raise FileNotFoundError(f"missing corpus file: {path}")
    builder = "csv" if files.paths[0].suffix == ".csv" else "json"
    try:
        corpus = datasets.load_dataset(builder, data_files=[str(p) for p in files.paths], split="train",
                                       cache_dir=files.cache_dir)
    except datasets.exceptions.DatasetGenerationError as error:
        if builder == "json":
            raise_at_first_bad_line(files)
        names = ", ".join(map(str, files.paths))
        raise CorpusFormatError(f"{names}: not readable as {builder}: {error.__cause__}") from error
    if files.column not in corpus.column_names:
        raise CorpusFormatError(f"{files.paths[0]}: no `{files.column}` field (has {corpus.column_names})")
    # datasets reads a json record that lacks the field as null, which tokenizing would drop unseen;
    # in a csv an empty cell reads as null too, and is an empty document, dropped as json's "" is
    if builder == "json" and corpus.data.column(files.column).null_count:
        raise_at_first_bad_line(files)
    return corpus.select_columns([files.column])


def raise_at_first_bad_line(files: TextFiles) -> None:
    """A CorpusFormatError naming the first json line that is malformed or whose field is not a string."""
    from lifelong.data.jsonl import numbered_jsonl

    for path in files.paths:
        for number, record in numbered_jsonl(path, (files.column,)):
            if not isinstance(record[files.column], str):
                raise CorpusFormatError(f"{path}:{number}: `{files.column}` is {record[files.column]!r}, not text")


def _encode(batch: dict, tokenizer, column: str) -> dict:
    texts = [text for text in batch[column] if text and text.strip()]
    if not texts:  # a batch of blank lines only: a tokenizer given [] raises IndexError
        return {"input_ids": []}
    start = document_start(tokenizer)
    return {"input_ids": [[start, *ids] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]}


def tokenize_corpus(corpus: datasets.Dataset, tokenizer) -> datasets.Dataset:
    """Token ids of each non-empty document, each preceded by document_start. datasets fingerprints the
    tokenizer with the transform, so a second run with the same tokenizer reads the cache."""
    import datasets

    return corpus.map(
        _encode, batched=True, batch_size=1000, remove_columns=corpus.column_names,
        fn_kwargs={"tokenizer": tokenizer, "column": corpus.column_names[0]},
        features=datasets.Features({"input_ids": datasets.List(datasets.Value("int32"))}),
        desc="tokenizing",
    )


def pack_corpus(tokenized: datasets.Dataset, seq_len: int, source: str = "the corpus") -> torch.Tensor:
    """[N, seq_len] int32 blocks (see lifelong/data/tokens.py), memory-mapped from a .npy file
    cached beside the tokenized Arrow file and written atomically. `source` names the corpus in errors."""
    ids = tokenized.data.column("input_ids")
    if not tokenized.cache_files:  # an in-memory dataset (Dataset.from_dict, say): pack in memory
        return torch.from_numpy(_pack(ids, seq_len, lambda shape: np.empty(shape, dtype=np.int32), source))
    arrow_file = Path(tokenized.cache_files[0]["filename"])
    path = arrow_file.with_name(f"{arrow_file.stem}.packed{seq_len}.v{PACKING_VERSION}.npy")
    if not path.exists():  # ranks on several nodes may share the cache: the host is part of the name
        temporary = path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")
        out = _pack(ids, seq_len, lambda shape: np.lib.format.open_memmap(temporary, "w+", np.int32, shape), source)
        out.flush()
        del out
        os.replace(temporary, path)
    return torch.from_numpy(np.load(path, mmap_mode="c"))


def _pack(ids: pa.ChunkedArray, seq_len: int, allocate: Callable[[tuple[int, int]], np.ndarray],
          source: str) -> np.ndarray:
    lengths = pc.list_value_length(ids).to_numpy().astype(np.int64)
    if not lengths.sum():
        raise CorpusFormatError(f"{source} has no text (blank documents are dropped)")
    # an Arrow chunk never splits a document: its flattened tokens are whole documents
    chunks = (chunk.flatten().to_numpy() for chunk in tqdm(ids.chunks, desc="packing", unit="chunk"))
    return pack_documents(lengths, chunks, seq_len, allocate)


def stage_blocks(train: list[str] | TextFiles, tokenizer, seq_len: int) -> torch.Tensor:
    """A stage's training blocks: packed in memory for a list of texts, through the Arrow cache for files."""
    if isinstance(train, TextFiles):
        return pack_corpus(tokenize_corpus(load_corpus(train), tokenizer), seq_len, ", ".join(map(str, train.paths)))
    return pack(tokenizer, train, seq_len)
