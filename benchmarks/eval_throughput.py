"""Evaluation throughput: lifelong's probe perplexity vs. a bare batched loop (tokens/s).

    python benchmarks/eval_throughput.py [--probes 2000] [--repeats 30] [--threads 1]

Both score the same encoded probes with the same model and batch size, in the same batches: the
bare loop sorts the probes by length as lifelong does (in input order it would pad 18% more
tokens, and the figure would measure the sorting), pads each batch and computes the same span
NLL. Interleaved repetitions in a rotating order (neither always runs first); the ratio is the
median of the repetitions' own ratios, with its quartiles. Writes
benchmarks/results/eval_throughput.json.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import quartiles, rotated, save_result

from lifelong.config import compose_train_config
from lifelong.data.tokens import train_tokenizer
from lifelong.eval.perplexity import EncodedProbes, encode_probes, perplexity
from lifelong.models import build_model

RESULTS = Path(__file__).parent / "results"


@torch.no_grad()
def bare_perplexity(model, probes: EncodedProbes, batch_size: int, pad_id: int) -> float:
    model.eval()
    total = 0.0
    order = sorted(range(len(probes)), key=lambda i: len(probes.ids[i]))
    for first in range(0, len(probes), batch_size):
        rows = order[first : first + batch_size]
        ids_list = [probes.ids[i] for i in rows]
        masks = [probes.targets[i] for i in rows]
        width = max(map(len, ids_list))
        ids = torch.tensor([i + [pad_id] * (width - len(i)) for i in ids_list])
        mask = torch.tensor([m + [False] * (width - len(m)) for m in masks])
        attention = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids_list])
        logits = model(input_ids=ids, attention_mask=attention).logits
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
        target = mask[:, 1:].float()
        total += ((nll * target).sum(1) / target.sum(1)).sum().item()
    return float(torch.exp(torch.tensor(total / len(probes))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = compose_train_config(["data.probes_per_set=100000"])
    stream = cfg.data.build()
    tokenizer = train_tokenizer(stream.all_text(), cfg.data.vocab_size)
    probes = [p for stage in stream.stages for ps in stage.probes.values() for p in ps][: args.probes]
    encoded = encode_probes(tokenizer, probes, cfg.data.seq_len)
    tokens = sum(map(len, encoded.ids))
    model = build_model(cfg.model, tokenizer)
    batch, pad, cpu = cfg.trainer.eval_batch_size, tokenizer.pad_token_id, torch.device("cpu")

    runs = {"lifelong": lambda: perplexity(model, encoded, batch, cpu, pad),
            "bare": lambda: bare_perplexity(model, encoded, batch, pad)}
    rates: dict[str, list[float]] = {name: [] for name in runs}
    values = {}
    for repeat in range(args.repeats):
        for name in rotated(list(runs), repeat):
            start = time.perf_counter()
            values[name] = runs[name]()
            rates[name].append(tokens / (time.perf_counter() - start))
    median = {name: statistics.median(r) for name, r in rates.items()}
    ratios = [a / b for a, b in zip(rates["lifelong"], rates["bare"], strict=True)]
    result = {
        "what": "probe perplexity tokens/s, tiny GPT-2 preset, CPU",
        "probes": len(encoded),
        "tokens": tokens,
        "threads": args.threads,
        "repeats": args.repeats,
        "tokens_per_s": median,
        "spread": {name: [min(r), max(r)] for name, r in rates.items()},
        "ratio_lifelong_vs_bare": statistics.median(ratios),
        "ratio_quartiles": quartiles(ratios),
        "same_value": abs(values["lifelong"] - values["bare"]) < 1e-3 * values["bare"],
        "target": ">= 0.95",
    }
    save_result("eval_throughput", result)


if __name__ == "__main__":
    main()
