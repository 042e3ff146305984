"""Packing with document boundaries, and corpora on disk through datasets' Arrow cache."""

from __future__ import annotations

import json
import os

import datasets
import numpy as np
import pytest
import torch

from lifelong.data.corpus import (
    PACKING_VERSION,
    CorpusFormatError,
    load_corpus,
    pack_corpus,
    stage_blocks,
    tokenize_corpus,
)
from lifelong.data.jsonl import DataFormatError
from lifelong.data.stream import TextFiles
from lifelong.data.tokens import PAD, lm_inputs, pack, pack_documents, train_tokenizer

TEXTS = [f"Entity {i} lives in city {i % 7} since {1990 + i % 30}." * (1 + i % 5) for i in range(2500)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS[:200], 400)


def write_jsonl(path, texts):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def test_layout_by_hand():
    # seq_len 5; documents of 3, 4, 2 and 7 tokens, arriving in two chunks of whole documents
    tokens = np.arange(1, 17, dtype=np.int32)
    out = pack_documents(np.array([3, 4, 2, 7]), [tokens[:7], tokens[7:]], 5, lambda shape: np.empty(shape, np.int32))
    _ = PAD
    # best-fit decreasing over the pieces 5 (the 7-token document's first block), 4, 3, 2, 2 (its tail)
    assert out.tolist() == [
        [10, 11, 12, 13, 14],
        [4, 5, 6, 7, _],
        [1, 2, 3, 8, 9],  # the 2-token document fills the 3-token one's block
        [15, 16, _, _, _],
    ]


def test_every_document_that_fits_a_block_lies_in_one(tokenizer):
    texts = TEXTS[:300]
    blocks = pack(tokenizer, texts, 32)
    docs = [[tokenizer.eos_token_id, *ids] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    rows = [[t for t in row if t != PAD] for row in blocks.tolist()]
    assert sum(map(len, rows)) == sum(map(len, docs))  # nothing dropped
    flat_rows = [tuple(r) for r in rows]
    for doc in (d for d in docs if len(d) <= 32):
        assert any(_contains(row, doc) for row in flat_rows)
    assert all(row == sorted(row, key=lambda t: t == PAD) for row in blocks.tolist())  # padding only at the end


def _contains(row: tuple, doc: list) -> bool:
    return any(list(row[i : i + len(doc)]) == doc for i in range(len(row) - len(doc) + 1))


def test_padding_is_ignored_by_the_loss():
    blocks = torch.tensor([[3, 4, PAD]], dtype=torch.int32)
    ids, labels = lm_inputs(blocks)
    assert ids.tolist() == [[3, 4, 0]] and labels.tolist() == [[3, 4, -100]] and ids.dtype == torch.long


def test_arrow_path_equals_in_memory_packing_and_is_cached(tmp_path, tokenizer):
    files = TextFiles((write_jsonl(tmp_path / "s0" / "train.jsonl", TEXTS),), cache_dir=str(tmp_path / "cache"))
    tokenized = tokenize_corpus(load_corpus(files), tokenizer)
    assert tokenized.data.column("input_ids").num_chunks > 1  # packing crosses Arrow chunks
    blocks = pack_corpus(tokenized, 48)
    assert torch.equal(blocks, pack(tokenizer, TEXTS, 48))
    packed = next((tmp_path / "cache").rglob(f"*.packed48.v{PACKING_VERSION}.npy"))
    written = packed.stat().st_mtime_ns

    again = tokenize_corpus(load_corpus(files), tokenizer)  # same tokenizer: datasets' cache
    assert again.cache_files == tokenized.cache_files
    assert torch.equal(stage_blocks(files, tokenizer, 48), blocks)
    assert packed.stat().st_mtime_ns == written  # mapped, not packed again
    other = tokenize_corpus(load_corpus(files), train_tokenizer(TEXTS[:200], 450))
    assert other.cache_files != tokenized.cache_files  # a cache per tokenizer
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_an_in_memory_dataset_is_packed_in_memory(tokenizer):
    tokenized = tokenize_corpus(datasets.Dataset.from_dict({"text": TEXTS[:50]}), tokenizer)
    assert tokenized.cache_files == []  # nothing on disk to map
    assert torch.equal(pack_corpus(tokenized, 32), pack(tokenizer, TEXTS[:50], 32))


def test_empty_lines_and_blank_texts_are_skipped(tmp_path, tokenizer):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "Ana lives in Rome."}\n\n{"text": "   "}\n{"text": "Bo was born."}\n')
    blocks = stage_blocks(TextFiles((path,), cache_dir=str(tmp_path / "c")), tokenizer, 64)
    assert torch.equal(blocks, pack(tokenizer, ["Ana lives in Rome.", "Bo was born."], 64))


def test_a_map_batch_of_blank_texts_only_is_dropped_and_a_blank_corpus_named(tmp_path, tokenizer):
    """datasets tokenizes 1000 rows at a time: a last batch of one blank row gave the tokenizer []."""
    path = tmp_path / "train.jsonl"
    texts = [f"Document number {i} is here." for i in range(1000)]
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in [*texts, ""]))
    blocks = stage_blocks(TextFiles((path,), cache_dir=str(tmp_path / "c")), tokenizer, 64)
    assert torch.equal(blocks, pack(tokenizer, texts, 64))
    blank = tmp_path / "blank.csv"
    blank.write_text('text\n" "\n\n')
    with pytest.raises(CorpusFormatError, match=rf"{blank} has no text"):
        stage_blocks(TextFiles((blank,), cache_dir=str(tmp_path / "c")), tokenizer, 64)


def test_malformed_corpus_line_names_file_and_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(DataFormatError, match=rf"{path}:2: not valid JSON"):
        load_corpus(TextFiles((path,), cache_dir=str(tmp_path / "c")))
    path.write_text('{"body": "no text"}\n')
    with pytest.raises(ValueError, match=rf"{path}: no `text` field"):
        load_corpus(TextFiles((path,), cache_dir=str(tmp_path / "c2")))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent.jsonl")):
        load_corpus(TextFiles((tmp_path / "absent.jsonl",)))


@pytest.mark.parametrize("bad_line", ['{"txt": "Rome is a city."}', '{"text": null}'])
def test_a_record_without_text_names_its_line_rather_than_vanishing(tmp_path, bad_line):
    # datasets reads the missing field as null, and tokenizing would drop that record unseen
    path = tmp_path / "train.jsonl"
    path.write_text(f'{{"text": "Paris is a city."}}\n{bad_line}\n{{"text": "Oslo is a city."}}\n')
    with pytest.raises(ValueError, match=rf"{path}:2: (missing field|`text` is None)"):
        load_corpus(TextFiles((path,), cache_dir=str(tmp_path / "c")))


def test_csv_corpus(tmp_path, tokenizer):
    path = tmp_path / "diffset.csv"
    path.write_text('text\nAna lives in Rome.\n"Bo said ""hi"", then left."\n')
    corpus = load_corpus(TextFiles((path,), cache_dir=str(tmp_path / "c")))
    assert corpus["text"] == ["Ana lives in Rome.", 'Bo said "hi", then left.']
    assert os.path.exists(corpus.cache_files[0]["filename"])  # memory-mapped from the Arrow cache
