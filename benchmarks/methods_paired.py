"""Each method's step relative to full fine-tuning, paired within one process.

    python benchmarks/methods_paired.py [--micro-batch 8] [--rounds 100] [--steps 10] [--stage 1]
                                        [--name methods_paired]

methods.py times whole runs in turn, each in its own process, and on this shared 2-core machine
a run's speed drifts by 10-20% over minutes: more than the 5% MIGU is allowed. Here every method
gets its own model (built from the same seed) and optimizer, prepared as for `--stage` (1, where
every method is active; a later one gives EWC more finished stages), all in one process; each
round runs `--steps` steps of every method back to back (in a rotating order), so the steps a
ratio compares are a fraction of a second apart. A method's ratio is the median over rounds of
its round time / finetune's round time in the same round. The step is the trainer's
(common.method_step), without the per-window logging, which does not depend on the method.
Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator

import torch
from common import method_step, quartiles, rotated, save_result, synchronize

from lifelong.config import TrainerConfig
from lifelong.train import apply_process_settings

METHODS = ["finetune", "ewc", "migu"]  # the methods with a target; methods.py times all
TARGETS = {"migu": 1.05, "ewc": 1.10}


def paired_step_times(overrides: list[str], methods: list[str], micro_batch: int, rounds: int,
                      steps: int, stage: int = 1) -> dict:
    """Step times of `methods` (the first is the reference) in paired rounds, and their ratios."""
    return paired_rounds({m: method_step([*overrides, f"method={m}"], micro_batch, stage) for m in methods},
                         rounds, steps)


def paired_rounds(prepared: dict[str, tuple[Callable[[], None], torch.device]], rounds: int, steps: int) -> dict:
    """Time prepared steps (name -> (step, device), the first the reference) in paired rounds:
    each round runs `steps` steps of each in a rotating order. Median times, median ratios and
    the ratios' quartiles."""
    names = list(prepared)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in rotated(names, round_index):
            step, device = prepared[name]
            synchronize(device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / steps)
    ratios = {name: [a / b for a, b in zip(times[name], times[names[0]], strict=True)] for name in names}
    return {
        "rounds": rounds,
        "steps_per_round": steps,
        "step_time_s": {name: statistics.median(t) for name, t in times.items()},
        "ratio_vs_finetune": {name: statistics.median(r) for name, r in ratios.items()},
        "ratio_quartiles": {name: quartiles(r) for name, r in ratios.items()},
    }


@contextlib.contextmanager
def patched(target: object, name: str, value: object) -> Iterator[None]:
    """`target.name` set to `value` inside the block."""
    original = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, original)


Variants = dict[str, tuple[list[str], Callable[[], contextlib.AbstractContextManager]]]


def paired_variants(variants: Variants, micro_batch: int, rounds: int, steps: int) -> dict:
    """Candidate code side by side: each variant's step is prepared (method_step) from its
    overrides inside its context (a patch the prepared method keeps, e.g. a kernel it chose when
    it was built), then all are timed in paired rounds, the first the reference. A variant that
    cannot be prepared here (a kernel that does not compile) is left out with its error printed.
    Prints each variant's median step time and median ratio."""
    prepared = {}
    for name, (overrides, context) in variants.items():
        with context():
            try:
                prepared[name] = method_step(overrides, micro_batch)
            except Exception as error:
                print(f"{name}: left out: {type(error).__name__}: {str(error)[:300]}", flush=True)
    measured = paired_rounds(prepared, rounds, steps)
    for name in prepared:
        low, high = measured["ratio_quartiles"][name]
        print(f"{name:14s} {measured['step_time_s'][name] * 1e3:8.2f} ms  {measured['ratio_vs_finetune'][name]:.3f}x "
              f"(quartiles {low:.3f}-{high:.3f})", flush=True)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--steps", type=int, default=10, help="steps of each method per round")
    parser.add_argument("--stage", type=int, default=1, help="the stage each method is prepared for (>= 1)")
    parser.add_argument("--name", default="methods_paired", help="results/<name>.json")
    args = parser.parse_args()
    if args.stage < 1:
        parser.error(f"--stage: {args.stage}; allowed: an integer >= 1 (stage 0 is plain fine-tuning for every method)")
    apply_process_settings(TrainerConfig(num_threads=1))  # as the trainer does, on one thread
    measured = paired_step_times([], METHODS, args.micro_batch, args.rounds, args.steps, args.stage)
    ratio = measured["ratio_vs_finetune"]
    result = {
        "what": f"step time (s) per method, paired rounds in one process, tiny GPT-2 preset, "
                f"batch {args.micro_batch}x128, stage {args.stage}, CPU, 1 thread",
        "micro_batch": args.micro_batch,
        "stage": args.stage,
        **measured,
        "targets": TARGETS,
        "met": {m: ratio[m] <= target for m, target in TARGETS.items()},
    }
    save_result(args.name, result)


if __name__ == "__main__":
    main()
