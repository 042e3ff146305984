"""Training-step overhead: lifelong's recipe vs. a bare PyTorch loop vs. the HF Trainer.

    python benchmarks/overhead.py [--steps 60] [--repeats 3] [--threads 1]

Same model (the tiny GPT-2 preset), same packed blocks of the synthetic stream, same batch,
AdamW, warmup + cosine and clipping in all three. The three run interleaved, `--repeats`
times, in one process; a run's step time is the median over its steady-state steps (the
first `--skip` steps are left out). lifelong's time comes from its own metrics.jsonl windows,
so it includes its logging at the default rate. Writes benchmarks/results/overhead.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, lifelong_step_times, steady_median

from lifelong.config import compose_train_config
from lifelong.data.tokens import lm_inputs, pack, train_tokenizer
from lifelong.models import build_model
from lifelong.optim import build_scheduler, default_param_groups
from lifelong.train import seed_everything, stage_batches


def _setup(steps: int):
    cfg = compose_train_config([f"trainer.steps_per_stage={steps}", "data.num_stages=2"])
    stream = cfg.data.build()
    tokenizer = train_tokenizer(stream.all_text(), cfg.data.vocab_size)
    blocks = pack(tokenizer, stream.stages[0].train, cfg.data.seq_len)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, tokenizer)
    return cfg, blocks, model


def bare_step_times(steps: int) -> list[float]:
    """The loop a researcher would write by hand."""
    cfg, blocks, model = _setup(steps)
    tc = cfg.trainer
    optimizer = torch.optim.AdamW(default_param_groups(model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas))
    scheduler = build_scheduler(tc, optimizer)
    order = stage_batches(blocks, steps, tc.micro_batch_size, 0)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        batch = blocks[order[step * tc.micro_batch_size : (step + 1) * tc.micro_batch_size]]
        ids, labels = lm_inputs(batch)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % tc.log_every == 0:
            loss.item()
        times.append(time.perf_counter() - start)
    return times


def hf_trainer_step_times(steps: int, workdir: Path) -> list[float]:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    cfg, blocks, model = _setup(steps)
    tc = cfg.trainer
    stamps: list[float] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    ids, labels = lm_inputs(blocks)
    dataset = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels, strict=True)]
    args = TrainingArguments(
        output_dir=str(workdir / "hf"), per_device_train_batch_size=tc.micro_batch_size, max_steps=steps,
        learning_rate=tc.lr, weight_decay=tc.weight_decay, adam_beta1=tc.betas[0], adam_beta2=tc.betas[1],
        max_grad_norm=tc.max_grad_norm, lr_scheduler_type="cosine", warmup_steps=round(tc.warmup_fraction * steps),
        logging_steps=tc.log_every, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=cfg.seed,
    )
    Trainer(model=model, args=args, train_dataset=dataset, callbacks=[StepClock()]).train()
    # from one step's start to the next one's: includes data loading and logging, as lifelong's windows do
    begins = stamps[0::2]
    return [b - a for a, b in zip(begins, begins[1:], strict=False)]


def median_step(times: list[float], skip: int) -> float:
    return statistics.median(times[skip:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip", type=int, default=10, help="warm-up steps left out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    runs: dict[str, list[float]] = {"bare": [], "lifelong": [], "hf_trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            runs["bare"].append(median_step(bare_step_times(args.steps), args.skip))
            # lifelong logs windows of log_every steps: skip the windows inside the warm-up
            overrides = [f"trainer.steps_per_stage={args.steps}", f"trainer.num_threads={args.threads}",
                         "data.num_stages=2"]
            windows = lifelong_step_times(overrides, Path(tmp) / f"lifelong_{repeat}", stage=0)
            runs["lifelong"].append(steady_median(windows))
            runs["hf_trainer"].append(median_step(hf_trainer_step_times(args.steps, Path(tmp)), args.skip))
            print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1] * 1e3:.1f} ms" for k, v in runs.items()), flush=True)

    median = {name: statistics.median(times) for name, times in runs.items()}
    result = {
        "what": "median step time (s), tiny GPT-2 preset, batch 8x128, CPU",
        "threads": args.threads,
        "steps": args.steps,
        "repeats": args.repeats,
        "step_time_s": median,
        "spread_s": {name: [min(t), max(t)] for name, t in runs.items()},
        "ratio_lifelong_vs_bare": median["lifelong"] / median["bare"],
        "ratio_lifelong_vs_hf_trainer": median["lifelong"] / median["hf_trainer"],
        "targets": {"ratio_lifelong_vs_bare": "<= 1.03", "ratio_lifelong_vs_hf_trainer": "<= 1.0"},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
