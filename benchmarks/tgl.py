"""TGL costs: per-layer grad-norm logging at every step vs. rarely, and tracing vs. stage time.

    python benchmarks/tgl.py [--steps 60] [--repeats 3] [--threads 1]

1. The same finetune run with `trainer.log_every=1` (per-layer norms to metrics.jsonl every
   step) and `log_every=1000` (only the stage's last step), interleaved; step time from the run's
   own wall clock of stage 0. Target <= 1.03x.
2. `tgl=freeze`: the time of its hook before stage 1 (trace, select, trace JSON and plot; median
   of `--repeats`) as a fraction of a default stage's training time (its steps at the step time
   of part 1 with logging rare).
Writes benchmarks/results/tgl.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import save_result

from lifelong.config import compose_train_config
from lifelong.data.tokens import lm_inputs, pack, train_tokenizer
from lifelong.methods.base import StageContext
from lifelong.models import build_model
from lifelong.optim import LayerGradNorms, build_optimizer, default_param_groups
from lifelong.track.jsonl import JsonlLogger


def stage_time(log_every: int, steps: int, workdir: Path) -> float:
    """Seconds per step of the trainer's step loop body with logging at `log_every`."""
    cfg = compose_train_config([f"trainer.steps_per_stage={steps}"])
    stream = cfg.data.build()
    tokenizer = train_tokenizer(stream.all_text(), cfg.data.vocab_size)
    blocks = pack(tokenizer, stream.stages[0].train, cfg.data.seq_len)
    torch.manual_seed(0)
    model = build_model(cfg.model, tokenizer)
    optimizer = build_optimizer(cfg.trainer, default_param_groups(model, cfg.trainer.weight_decay))
    norms = LayerGradNorms(model)
    logger = JsonlLogger(workdir / f"metrics_{log_every}_{time.monotonic_ns()}.jsonl")
    batch = cfg.trainer.micro_batch_size
    for step in range(steps + 5):
        if step == 5:
            start = time.perf_counter()
        rows = blocks[(step * batch) % (len(blocks) - batch) :][:batch]
        ids, labels = lm_inputs(rows)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        layer_norms, total = norms.compute()
        norms.clip_(total, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % log_every == 0:
            record = {"step": step, "loss": loss.item(), "grad_norm": total.item()}
            record.update({f"grad_norm/{n}": v for n, v in zip(norms.layers, layer_norms.tolist(), strict=True)})
            logger.log(record)
    logger.close()
    return (time.perf_counter() - start) / steps


def tracing_seconds(repeats: int, workdir: Path) -> list[float]:
    """Wall time of `tgl=freeze`'s hook before stage 1, as the trainer calls it: encode the
    stage's knowledge, trace, select, write the trace's JSON and plot. A fresh hook each time."""
    cfg = compose_train_config(["tgl=freeze"])
    stream = cfg.data.build()
    tokenizer = train_tokenizer(stream.all_text(), cfg.data.vocab_size)
    blocks = [pack(tokenizer, stage.train, cfg.data.seq_len) for stage in stream.stages[:2]]
    model = build_model(cfg.model, tokenizer)
    ctx = StageContext(1, stream, blocks, model, tokenizer, torch.device("cpu"), workdir,
                       cfg.trainer.micro_batch_size, None)
    times = []
    for _ in range(repeats):
        hook = cfg.tgl.build()
        start = time.perf_counter()
        hook.before_stage(ctx)
        times.append(time.perf_counter() - start)
        hook.after_stage(ctx)  # releases the freeze
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    times: dict[str, list[float]] = {"every_step": [], "rarely": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            times["every_step"].append(stage_time(1, args.steps, Path(tmp)))
            times["rarely"].append(stage_time(10_000, args.steps, Path(tmp)))
        trace_times = tracing_seconds(args.repeats, Path(tmp))
    median = {k: statistics.median(v) for k, v in times.items()}
    default_steps = compose_train_config([]).trainer.steps_per_stage
    trace_s = statistics.median(trace_times)
    result = {
        "threads": args.threads,
        "step_time_s": median,
        "spread_s": {k: [min(v), max(v)] for k, v in times.items()},
        "ratio_log_every_step_vs_rarely": median["every_step"] / median["rarely"],
        "target": "<= 1.03",
        # the stage's steps are the default run's: its step (logging rarely) times steps_per_stage
        "tracing": {"trace_s": trace_s, "trace_spread_s": [min(trace_times), max(trace_times)],
                    "step_s": median["rarely"], "stage_steps": default_steps,
                    "fraction_of_stage": trace_s / (median["rarely"] * default_steps)},
    }
    save_result("tgl", result)


if __name__ == "__main__":
    main()
