"""Data path vs. training step: does producing tokens ever starve the step?

    python benchmarks/data_path.py [--data synthetic_large] [--steps 20] [--threads 1]

Measures tokens/s of the whole data path (generating the synthetic world, training the
tokenizer, tokenizing and packing every stage) and tokens/s consumed by training steps of the
tiny GPT-2 preset, in one run. The ratio says how many times faster data is produced than
consumed (> 1: the step is never starved; the stream is built once per run in any case).
Writes benchmarks/results/data_path.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import save_result

from lifelong.config import compose_train_config
from lifelong.data.tokens import PAD, lm_inputs, pack, train_tokenizer
from lifelong.models import build_model

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="synthetic_large")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = compose_train_config([f"data={args.data}", "data.seq_len=128"])

    start = time.perf_counter()
    stream = cfg.data.build()
    generated = time.perf_counter()
    tokenizer = train_tokenizer(stream.all_text(), cfg.data.vocab_size)
    tokenized = time.perf_counter()
    blocks = [pack(tokenizer, stage.train, cfg.data.seq_len) for stage in stream.stages]
    packed = time.perf_counter()
    data_tokens = sum(int((b != PAD).sum()) for b in blocks)

    model = build_model(cfg.model, tokenizer)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch_size = cfg.trainer.micro_batch_size
    for step in range(args.steps + 3):
        if step == 3:  # after warm-up
            step_start = time.perf_counter()
        batch = blocks[0][step * batch_size : (step + 1) * batch_size]
        ids, labels = lm_inputs(batch)
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step_rate = args.steps * batch_size * cfg.data.seq_len / (time.perf_counter() - step_start)

    data_rate = data_tokens / (packed - start)
    result = {
        "data": args.data,
        "stages": len(stream.stages),
        "data_tokens": data_tokens,
        "seconds": {"generate": generated - start, "train_tokenizer": tokenized - generated,
                    "tokenize_and_pack": packed - tokenized},
        "data_path_tokens_per_s": data_rate,
        "train_step_tokens_per_s": step_rate,
        "ratio_data_vs_step": data_rate / step_rate,
        "threads": args.threads,
    }
    save_result("data_path", result)


if __name__ == "__main__":
    main()
