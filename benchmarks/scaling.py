"""Scaling: step time and tokens/s per model preset, and 2-process DDP (gloo) vs. one process.

    python benchmarks/scaling.py [--steps 20] [--large-steps 4]

Every figure comes from real `lifelong-train` runs (their metrics.jsonl windows, logged every
step here; the first window is warm-up and left out):
- presets: tiny_gpt2, tiny_llama and gpt2_100m, batch 8 x 128, 2 torch threads;
- DDP: the tiny GPT-2 preset on the same global batch of 8 rows: one process with 1 thread,
  one process with 2 threads, and torchrun with 2 processes x 1 thread on gloo (this machine
  has 2 cores, so 2 ranks are the most it can hold).
Writes benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from common import model_parameters, save_result

from lifelong.config import compose_train_config
from lifelong.track.jsonl import read_jsonl_metrics

BASE = ["data=synthetic_tiny", "data.num_stages=2", "trainer.log_every=1", "trainer.progress=false",
        "trainer.micro_batch_size=8", "data.seq_len=128"]


def run(launcher: list[str], overrides: list[str], run_dir: Path) -> dict:
    """Median step time and tokens/s over a run's steady windows (both stages)."""
    done = subprocess.run([*launcher, "-m", "lifelong.train", *BASE, *overrides, f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    records = [r for r in read_jsonl_metrics(run_dir / "metrics.jsonl") if r["step"] > 1]
    rate = statistics.median(r["tokens_per_s"] for r in records)
    return {"tokens_per_s": rate, "step_s": 8 * 128 / rate, "steps_measured": len(records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--large-steps", type=int, default=4)
    args = parser.parse_args()
    python = [sys.executable]
    result: dict = {"what": "lifelong-train step time and tokens/s, batch 8 x 128, CPU", "presets": {}, "ddp": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for preset, steps in (("tiny_gpt2", args.steps), ("tiny_llama", args.steps), ("gpt2_100m", args.large_steps)):
            figures = run(python, [f"model={preset}", f"trainer.steps_per_stage={steps}", "trainer.num_threads=2"],
                          Path(tmp) / preset)
            parameters = model_parameters(compose_train_config([f"model={preset}", *BASE]))
            result["presets"][preset] = {"parameters": parameters, **figures}
            print(preset, result["presets"][preset], flush=True)
        common = ["model=tiny_gpt2", f"trainer.steps_per_stage={args.steps}"]
        result["ddp"]["1_process_1_thread"] = run(python, [*common, "trainer.num_threads=1"], Path(tmp) / "p1t1")
        result["ddp"]["1_process_2_threads"] = run(python, [*common, "trainer.num_threads=2"], Path(tmp) / "p1t2")
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533"]
        result["ddp"]["2_processes_gloo"] = run(
            torchrun, [*common, "trainer.num_threads=1", "trainer.micro_batch_size=4"], Path(tmp) / "ddp")
        rates = {setup: figures["tokens_per_s"] for setup, figures in result["ddp"].items()}
        result["ddp_speedup_vs_1_thread"] = rates["2_processes_gloo"] / rates["1_process_1_thread"]
        result["ddp_speedup_vs_2_threads"] = rates["2_processes_gloo"] / rates["1_process_2_threads"]
    save_result("scaling", result)


if __name__ == "__main__":
    main()
