"""Step time of every baseline relative to full fine-tuning, side by side in one run.

    python benchmarks/methods.py [--steps 60] [--repeats 5] [--threads 1] [--micro-batch 8] [--name methods]

Each method trains the same two-stage synthetic stream with the same model and batch; the
times are those of stage 1, where every method is fully active (MIGU masks, EWC's penalty
applies, replay mixes, LoRA adapters train). Methods run interleaved, `--repeats` times, in an
order rotated each repetition, each run in a fresh interpreter (in one process, in a fixed
order, joint, whose step is finetune's, measured 0.96x and 1.13x of it); a ratio is the median
of each repetition's own. Whole runs still drift by 10-20% on this machine: for 5% targets see
methods_paired.py. Targets (issue 4): MIGU <= 1.05x, EWC <= 1.10x,
replay <= 1.02x per token (a replay step holds as many tokens as any other step). Writes benchmarks/results/<name>.json.
`--micro-batch 1` shrinks the model's share of the step so that each method's own ops (hooks,
masks, penalty) weigh as they do in a launch-bound GPU step.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import in_fresh_interpreter, lifelong_step_times, save_result, steady_median

METHODS = ["finetune", "replay", "ewc", "migu", "lora", "lora_migu", "joint"]
TARGETS = {"migu": 1.05, "ewc": 1.10, "replay": 1.02}


def stage1_step_time(overrides: list[str], run_dir: Path) -> float:
    return steady_median(lifelong_step_times(overrides, run_dir, stage=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--name", default="methods", help="results/<name>.json")
    args = parser.parse_args()

    times: dict[str, list[float]] = {m: [] for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            shift = repeat % len(METHODS)
            for method in METHODS[shift:] + METHODS[:shift]:
                overrides = [f"method={method}", "data.num_stages=2", f"trainer.steps_per_stage={args.steps}",
                             f"trainer.num_threads={args.threads}", f"trainer.micro_batch_size={args.micro_batch}"]
                run_dir = Path(tmp) / f"{method}_{repeat}"
                times[method].append(in_fresh_interpreter(stage1_step_time, overrides, run_dir))
            print(f"repeat {repeat}: " + ", ".join(f"{m} {t[-1] * 1e3:.1f} ms" for m, t in times.items()), flush=True)

    median = {m: statistics.median(t) for m, t in times.items()}
    # each repetition's own ratios, as in overhead.py: a slow spell moves one repetition's runs together
    ratio = {m: statistics.median(a / b for a, b in zip(times[m], times["finetune"], strict=True)) for m in METHODS}
    result = {
        "what": f"stage-1 step time (s) per method, tiny GPT-2 preset, batch {args.micro_batch}x128, CPU",
        "micro_batch": args.micro_batch,
        "threads": args.threads,
        "steps": args.steps,
        "repeats": args.repeats,
        "step_time_s": median,
        "spread_s": {m: [min(t), max(t)] for m, t in times.items()},
        "ratio_vs_finetune": ratio,
        "targets": TARGETS,
        "met": {m: ratio[m] <= target for m, target in TARGETS.items()},
    }
    save_result(args.name, result)


if __name__ == "__main__":
    main()
