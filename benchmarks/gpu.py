"""The CUDA path with bf16 autocast on one GPU: issue 9's figures 1-3 and 6 there.

    python benchmarks/gpu.py [--steps 100] [--repeats 3] [--overhead-repeats 5] [--logging-repeats 3]
                             [--model gpt2_100m] [--device cuda]

On `trainer=gpu` (bf16 autocast), model gpt2_100m, batch 16 x 512 unless a figure says so:
1-2. lifelong vs. a bare loop vs. the HF Trainer (bf16), timed as in overhead.py;
3.   per-layer grad-norm logging every step vs. every steps/4 (--logging-repeats pairs of runs,
     the order rotated, median of their ratios; both arms' medians over windows of steps/4);
     MIGU and EWC vs. finetune, each step as in stage 1, in 10 x --repeats paired rounds of 10
     steps (methods_paired.py); the same at paper scale (`methods_paper_scale`: --paper-model,
     gpt2_large, 8 x 512 as TemporalWiki's GPT-2 runs per GPU), where the GPU rather than the
     host bounds the step;
6.   tokens/s and MFU of tiny_gpt2, tiny_llama (16 x 128) and gpt2_100m.
MFU = (6 N + 12 L d s) x tokens/s / the GPU's dense bf16 peak (nanoGPT's estimate; N all
parameters, s the sequence length). Writes benchmarks/results/cuda_bf16.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from common import (
    RESULTS,
    code_version,
    in_windows_of,
    lifelong_step_times,
    model_parameters,
    quartiles,
    rotated,
    steady_median,
)
from methods_paired import METHODS, TARGETS, paired_step_times
from overhead import compare, summary

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense, SXM


PARTS = ("overhead", "logging", "methods", "methods_paper_scale", "throughput")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="10 x this many paired rounds per methods part")
    parser.add_argument("--overhead-repeats", type=int, default=5,
                        help="runs of each loop (fresh interpreters) in the overhead part: one run moves by several "
                             "percent on an H200, so more settle the ratio (gpu_check.sh passes 3 to fit its deadline)")
    parser.add_argument("--logging-repeats", type=int, default=3,
                        help="pairs of runs in the logging part, the order rotated (at least 2)")
    parser.add_argument("--model", default="gpt2_100m")
    parser.add_argument("--paper-model", default="gpt2_large", help="methods_paper_scale's model")
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of this script's code paths")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help="measure only these; the others are kept from the existing JSON")
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    large = ["trainer=gpu", f"trainer.device={args.device}", f"model={args.model}", "data.seq_len=512",
             "model.max_seq_len=512", "trainer.micro_batch_size=16",
             "data.num_stages=2", f"trainer.steps_per_stage={args.steps}", "trainer.log_every=10"]
    path = RESULTS / f"{args.device}_bf16.json"
    result: dict = json.loads(path.read_text()) if path.exists() else {}

    def window_times(overrides: list[str], stage: int, tag: str) -> list[float]:
        with tempfile.TemporaryDirectory() as tmp:
            return lifelong_step_times([*large, *overrides], Path(tmp) / tag, stage)

    def step_time(overrides: list[str], stage: int, tag: str) -> float:
        return steady_median(window_times(overrides, stage, tag))

    parts = args.parts.split(",")
    if unknown := [part for part in parts if part not in PARTS]:  # before any part spends device time
        parser.error(f"--parts: unknown {', '.join(unknown)}; allowed: {', '.join(PARTS)}")
    if args.logging_repeats < 2:
        parser.error(f"--logging-repeats: {args.logging_repeats}; allowed: an integer >= 2 (quartiles need two)")
    for part in parts:  # each part's ratios come from one run on one machine
        measured: dict = {"device": name, "steps": args.steps, "commit": code_version()}
        if part == "overhead":
            measured.update(summary(compare(large, args.overhead_repeats)), repeats=args.overhead_repeats)
        elif part == "logging":  # one pair of runs read 1.054x on an H200 where three more read 0.97-0.99
            rarely_every = args.steps // 4
            arms = {"every_step": ["trainer.log_every=1"], "rarely": [f"trainer.log_every={rarely_every}"]}
            runs: dict[str, list[float]] = {arm: [] for arm in arms}
            for repeat in range(args.logging_repeats):
                for arm in rotated(list(arms), repeat):  # both over windows of rarely_every steps
                    times = window_times(arms[arm], 0, arm)
                    windows = in_windows_of(times, rarely_every) if arm == "every_step" else times
                    runs[arm].append(steady_median(windows))
            ratios = [every / rarely for every, rarely in zip(runs["every_step"], runs["rarely"], strict=True)]
            measured.update(runs_s=runs, rarely_every=rarely_every, ratio=statistics.median(ratios),
                            ratio_quartiles=quartiles(ratios), repeats=args.logging_repeats, target="<= 1.03")
        elif part == "methods":  # paired rounds in this process, as methods_paired.py (3 models on the GPU)
            measured.update(paired_step_times(large, METHODS, 16, args.repeats * 10, 10), targets=TARGETS)
        elif part == "methods_paper_scale":
            paper = [*large, f"model={args.paper_model}", "trainer.micro_batch_size=8"]
            measured.update(paired_step_times(paper, METHODS, 8, args.repeats * 10, 10), targets=TARGETS,
                            model=args.paper_model, batch=[8, 512])
        elif part == "throughput":
            measured.update(peak_bf16_flops=peak, presets=throughput(large, args.model, peak, step_time))
        result[part] = measured
        print(json.dumps({part: measured}, indent=2), flush=True)
        RESULTS.mkdir(exist_ok=True)
        path.write_text(json.dumps(result, indent=2))  # after each part: a part cut off loses only itself


def throughput(large: list[str], model: str, peak: float | None, step_time) -> dict:
    from lifelong.config import compose_train_config

    presets = {}
    for preset, seq_len in {"tiny_gpt2": 128, "tiny_llama": 128, model: 512}.items():
        overrides = [f"model={preset}", f"data.seq_len={seq_len}", f"model.max_seq_len={seq_len}"]
        cfg = compose_train_config([*large, *overrides])
        parameters = model_parameters(cfg)
        seconds = step_time(overrides, 0, preset)
        tokens_per_s = 16 * seq_len / seconds
        flops_per_token = 6 * parameters + 12 * cfg.model.n_layer * cfg.model.d_model * seq_len
        presets[preset] = {
            "parameters": parameters, "batch": [16, seq_len], "step_s": seconds, "tokens_per_s": tokens_per_s,
            "mfu": flops_per_token * tokens_per_s / peak if peak else None,
        }
    return presets


if __name__ == "__main__":
    main()
