"""Training-step overhead: lifelong's recipe vs. a bare PyTorch loop vs. the HF Trainer.

    python benchmarks/overhead.py [--steps 100] [--repeats 15] [--threads 1] [--micro-batch 8] [--name overhead]

Same model (the tiny GPT-2 preset), same packed blocks of the synthetic stream, same batch,
fused AdamW (the HF Trainer's default optimizer too), warmup + cosine and clipping in all three
(the Trainer without its per-step NaN/inf check, FLOP count and printing, which lifelong lacks),
and the same process settings in every arm (lifelong.train.apply_process_settings: glibc keeps
freed host memory, subnormal floats are zero), so the figures are what the framework itself
adds. The three run interleaved, `--repeats` times, each run in a fresh interpreter, the order
rotated each repetition (no arm always runs first). Each is timed the same way: the mean step
time of each window of `log_every` steps (lifelong's own metrics.jsonl windows; stamps at the
same boundaries in the bare loop and in a Trainer callback, whose windows hold their logging),
the median over windows after the first (warm-up), then the median over repetitions; a ratio is
the median of the repetitions' own ratios (see `summary`). Writes
benchmarks/results/<name>.json.

At the default batch (8x128) the model's own kernels are nearly all of a CPU step, so the three
differ by little more than noise: one repetition's ratio moves by +-7% on this shared machine
(its slow spells last about as long as a run), so 15 repetitions, and the paired ratios' quartiles
are reported with their median. `--micro-batch 1` makes the step small enough that what each
framework adds per step (its Python, its optimizer and clipping calls) shows, as on a GPU."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import (
    in_fresh_interpreter,
    lifelong_step_times,
    quartiles,
    rotated,
    save_result,
    steady_median,
    synchronize,
)

from lifelong.config import Precision, compose_train_config
from lifelong.data.tokens import lm_inputs, pack, train_tokenizer
from lifelong.models import build_model
from lifelong.optim import build_optimizer, build_scheduler, default_param_groups
from lifelong.train import AUTOCAST, apply_process_settings, resolve_device, seed_everything, stage_batches


def _setup(overrides: list[str]):
    cfg = compose_train_config(["data.num_stages=2", *overrides])
    apply_process_settings(cfg.trainer)  # as lifelong's train() does: the same process in every arm
    stream = cfg.data.build()
    tokenizer = train_tokenizer(stream.all_text(), cfg.data.vocab_size)
    blocks = pack(tokenizer, stream.stages[0].train, cfg.data.seq_len)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    return cfg, blocks, build_model(cfg.model, tokenizer).to(device), device


def window_means(stamps: list[float], every: int) -> list[float]:
    """Mean step time of each window of `every` steps, from the windows' boundary stamps."""
    return [(b - a) / every for a, b in zip(stamps, stamps[1:], strict=False)]


def bare_step_times(overrides: list[str]) -> list[float]:
    """The loop a researcher would write by hand; window means as lifelong logs them."""
    cfg, blocks, model, device = _setup(overrides)
    tc = cfg.trainer
    optimizer = build_optimizer(tc, default_param_groups(model, tc.weight_decay))  # fused, as lifelong's
    scheduler = build_scheduler(tc, optimizer)
    order = stage_batches(blocks, tc.steps_per_stage, tc.micro_batch_size, 0)
    dtype = AUTOCAST[tc.precision]
    stamps = []
    for step in range(tc.steps_per_stage):
        if step % tc.log_every == 0:
            synchronize(device)
            stamps.append(time.perf_counter())
        ids, labels = lm_inputs(blocks[order[step * tc.micro_batch_size : (step + 1) * tc.micro_batch_size]], device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % tc.log_every == 0:
            loss.item()
    synchronize(device)
    return window_means([*stamps, time.perf_counter()], tc.log_every)


def hf_trainer_step_times(overrides: list[str], workdir: Path) -> list[float]:
    """The Trainer's steps, without the per-step work it does by default and lifelong does not: a
    NaN/inf check of every step's loss (a host sync on a GPU), a FLOP count (num_parameters every
    step), and printing each log line."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    class PlainTrainer(Trainer):
        def floating_point_ops(self, inputs: dict) -> int:
            return 0

    cfg, blocks, model, device = _setup(overrides)
    tc = cfg.trainer
    stamps: list[float] = []

    class WindowClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 0:
                synchronize(device)
                stamps.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):  # global_step counts this step already
            if state.global_step % tc.log_every == 0:
                synchronize(device)
                stamps.append(time.perf_counter())

    # the rows the other two loops train on, in their order: a stream of fewer blocks than a
    # batch (16 x 512 on a GPU) repeats them, as lifelong's stage_batches does
    order = stage_batches(blocks, tc.steps_per_stage, tc.micro_batch_size, 0)
    ids, labels = lm_inputs(blocks[order])
    dataset = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels, strict=True)]
    args = TrainingArguments(
        output_dir=str(workdir / "hf"), per_device_train_batch_size=tc.micro_batch_size,
        max_steps=tc.steps_per_stage, learning_rate=tc.lr, weight_decay=tc.weight_decay, adam_beta1=tc.betas[0],
        adam_beta2=tc.betas[1], max_grad_norm=tc.max_grad_norm, lr_scheduler_type="cosine",
        warmup_steps=round(tc.warmup_fraction * tc.steps_per_stage), logging_steps=tc.log_every,
        save_strategy="no", report_to=[], use_cpu=device.type == "cpu", bf16=tc.precision is Precision.bf16,
        disable_tqdm=True, dataloader_num_workers=0, seed=cfg.seed, optim="adamw_torch_fused",
        dataloader_drop_last=True,  # every step a full batch, as in the other two
        logging_nan_inf_filter=False,
    )
    trainer = PlainTrainer(model=model, args=args, train_dataset=dataset, callbacks=[WindowClock()])
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    return window_means(stamps, tc.log_every)


def measure(loop: str, overrides: list[str], workdir: str, threads: int) -> float:
    """Steady median step time of one of the three loops."""
    torch.set_num_threads(threads)
    if loop == "bare":
        return steady_median(bare_step_times(overrides))
    if loop == "lifelong":
        # the stream of the other two (_setup): the same tokenizer and blocks
        return steady_median(lifelong_step_times(["data.num_stages=2", *overrides], Path(workdir) / "lifelong", 0))
    return steady_median(hf_trainer_step_times(overrides, Path(workdir)))


def compare(overrides: list[str], repeats: int) -> dict[str, list[float]]:
    """Steady median step time of the three, interleaved, `repeats` times, each run in a fresh
    interpreter (no arm inherits another's warm caches or allocator state)."""
    runs: dict[str, list[float]] = {"bare": [], "lifelong": [], "hf_trainer": []}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(repeats):
            for loop in rotated(list(runs), repeat):
                runs[loop].append(in_fresh_interpreter(measure, loop, overrides, f"{tmp}/{loop}_{repeat}", threads))
            print(f"repeat {repeat}: " + ", ".join(f"{k} {v[-1] * 1e3:.2f} ms" for k, v in runs.items()), flush=True)
    return runs


def summary(runs: dict[str, list[float]]) -> dict:
    """Ratios as the median of each repetition's own ratio: the three of one repetition ran back to
    back, so a slow spell of a shared machine moves them together. The ratio of medians is kept too."""
    median = {name: statistics.median(times) for name, times in runs.items()}
    ratios = {other: [a / b for a, b in zip(runs["lifelong"], runs[other], strict=True)]
              for other in ("bare", "hf_trainer")}

    return {
        "step_time_s": median,
        "spread_s": {name: [min(t), max(t)] for name, t in runs.items()},
        "runs_s": runs,
        "ratio_lifelong_vs_bare": statistics.median(ratios["bare"]),
        "ratio_lifelong_vs_hf_trainer": statistics.median(ratios["hf_trainer"]),
        "ratio_quartiles": {"vs_bare": quartiles(ratios["bare"]), "vs_hf_trainer": quartiles(ratios["hf_trainer"])},
        "ratio_of_medians": {"vs_bare": median["lifelong"] / median["bare"],
                             "vs_hf_trainer": median["lifelong"] / median["hf_trainer"]},
        "targets": {"ratio_lifelong_vs_bare": "<= 1.03", "ratio_lifelong_vs_hf_trainer": "<= 1.0"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--name", default="overhead", help="results/<name>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = [f"trainer.steps_per_stage={args.steps}", f"trainer.num_threads={args.threads}",
                 f"trainer.micro_batch_size={args.micro_batch}"]
    result = {
        "what": f"median step time (s), tiny GPT-2 preset, batch {args.micro_batch}x128, CPU",
        "micro_batch": args.micro_batch,
        "threads": args.threads,
        "steps": args.steps,
        "repeats": args.repeats,
        **summary(compare(overrides, args.repeats)),
    }
    save_result(args.name, result)


if __name__ == "__main__":
    main()
