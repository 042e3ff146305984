"""Loading + tokenizing + packing a large jsonl corpus through datasets' Arrow cache.

    python benchmarks/corpus.py [--mb 100] [--seq-len 512] [--vocab 8192]

Writes a `--mb` MB jsonl corpus (paragraphs of synthetic-world sentences) to a temp dir,
then times, in one run: the cold path (jsonl -> Arrow, tokenize, pack into a memory-mapped
.npy) and the warm path (a second run finding both caches), with peak RSS. Tokens are real
tokens (padding not counted). Writes benchmarks/results/corpus.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from pathlib import Path

from common import save_result

from lifelong.config import compose_train_config
from lifelong.data.corpus import load_corpus, pack_corpus, tokenize_corpus
from lifelong.data.stream import TextFiles
from lifelong.data.tokens import PAD, train_tokenizer

RESULTS = Path(__file__).parent / "results"


def write_corpus(path: Path, megabytes: int, seed: int = 0) -> int:
    """Paragraphs of 5-40 sentences from the large synthetic world, until the file has `megabytes` MB."""
    sentences = list(compose_train_config(["data=synthetic_large", "model.max_seq_len=512"]).data.build().all_text())
    rng = random.Random(seed)
    written = documents = 0
    with path.open("w", encoding="utf-8") as file:
        while written < megabytes * 1_000_000:
            line = json.dumps({"text": " ".join(rng.choices(sentences, k=rng.randint(5, 40)))}) + "\n"
            written += file.write(line)
            documents += 1
    return documents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=8192)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        documents = write_corpus(path, args.mb)
        files = TextFiles((path,), cache_dir=str(Path(tmp) / "cache"))
        with path.open(encoding="utf-8") as sample:
            texts = [json.loads(line)["text"] for _, line in zip(range(2000), sample, strict=False)]
        start = time.perf_counter()
        tokenizer = train_tokenizer(texts, args.vocab)
        tokenizer_seconds = time.perf_counter() - start

        times = {}
        for run in ("cold", "warm"):
            start = time.perf_counter()
            corpus = load_corpus(files)
            loaded = time.perf_counter()
            tokenized = tokenize_corpus(corpus, tokenizer)
            tokenized_at = time.perf_counter()
            blocks = pack_corpus(tokenized, args.seq_len)
            packed = time.perf_counter()
            times[run] = {"load": loaded - start, "tokenize": tokenized_at - loaded, "pack": packed - tokenized_at,
                          "total": packed - start}
        tokens = int((blocks != PAD).sum())
    result = {
        "corpus_mb": args.mb,
        "documents": documents,
        "tokens": tokens,
        "blocks": list(blocks.shape),
        "padding_fraction": 1 - tokens / blocks.numel(),
        "vocab": args.vocab,
        "tokenizer_training_seconds_on_2000_docs": tokenizer_seconds,
        "seconds": times,
        "cold_tokens_per_s": tokens / times["cold"]["total"],
        "cold_mb_per_s": args.mb / times["cold"]["total"],
        "warm_tokens_per_s": tokens / times["warm"]["total"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    save_result("corpus", result)


if __name__ == "__main__":
    main()
