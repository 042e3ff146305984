"""TGL costs: per-layer grad-norm logging at every step vs. rarely, and tracing vs. stage time.

    python benchmarks/tgl.py [--steps 60] [--repeats 9] [--threads 1]

1. The trainer's step with its per-layer norms logged every step (to metrics.jsonl, through the
   trainer's DeferredMetrics, flushed at the end) and only at the stage's last step: wall time of
   the steps with their logging, interleaved in a rotating order (neither always runs first); the
   median of the repetitions' own ratios. Target <= 1.03x.
2. `tgl=freeze`: the time of its hook before stage 1 (trace, select, trace JSON and plot; median
   of 3) as a fraction of a default stage's training time (its steps at the step time
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
from common import quartiles, rotated, save_result

from lifelong.config import compose_train_config
from lifelong.data.tokens import lm_inputs, pack, train_tokenizer
from lifelong.methods.base import StageContext
from lifelong.models import build_model
from lifelong.optim import LayerGradNorms, build_optimizer, default_param_groups
from lifelong.track.deferred import DeferredMetrics
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
    metrics = DeferredMetrics(logger)
    keys = ["loss", "grad_norm", *(f"grad_norm/{n}" for n in norms.layers)]
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
        if (step + 1) % log_every == 0 or step + 1 == steps + 5:
            metrics.log({"step": step}, keys, torch.cat([loss.detach().reshape(1), total.reshape(1), layer_norms]))
    metrics.flush()
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
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    log_every = {"every_step": 1, "rarely": 10_000}
    times: dict[str, list[float]] = {name: [] for name in log_every}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name in rotated(list(log_every), repeat):
                times[name].append(stage_time(log_every[name], args.steps, Path(tmp)))
        trace_times = tracing_seconds(3, Path(tmp))
    median = {k: statistics.median(v) for k, v in times.items()}
    ratios = [a / b for a, b in zip(times["every_step"], times["rarely"], strict=True)]
    default_steps = compose_train_config([]).trainer.steps_per_stage
    trace_s = statistics.median(trace_times)
    result = {
        "threads": args.threads,
        "step_time_s": median,
        "spread_s": {k: [min(v), max(v)] for k, v in times.items()},
        "ratio_log_every_step_vs_rarely": statistics.median(ratios),
        "ratio_quartiles": quartiles(ratios),
        "target": "<= 1.03",
        # the stage's steps are the default run's: its step (logging rarely) times steps_per_stage
        "tracing": {"trace_s": trace_s, "trace_spread_s": [min(trace_times), max(trace_times)],
                    "step_s": median["rarely"], "stage_steps": default_steps,
                    "fraction_of_stage": trace_s / (median["rarely"] * default_steps)},
    }
    save_result("tgl", result)


if __name__ == "__main__":
    main()
