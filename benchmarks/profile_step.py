"""Where a method's training step spends its time: torch.profiler over stage-1 steps.

    python benchmarks/profile_step.py [--steps 10] [--micro-batch 8] [--top 15] [OVERRIDES...]
    python benchmarks/profile_step.py method=migu trainer=gpu model=gpt2_100m data.seq_len=512

The step is common.method_step (the trainer's step, the method prepared as for stage 1). Prints
the wall time per step, the host time the ops' dispatch takes (self CPU time), on CUDA the time
kernels keep the GPU busy (if it is well below the wall time, the step is launch-bound: extra
Python or extra small ops cost their full host time), and the top ops by device time.
"""

from __future__ import annotations

import argparse
import time

from common import method_step, synchronize
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from lifelong.config import TrainerConfig
from lifelong.train import apply_process_settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the run's config")
    args = parser.parse_args()
    apply_process_settings(TrainerConfig())  # as the trainer does
    step, device = method_step(args.overrides, args.micro_batch)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    synchronize(device)
    wall = (time.perf_counter() - start) / args.steps  # unprofiled: the profiler adds host time
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        synchronize(device)
    events = prof.key_averages()
    host = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps
    ops = sum(e.count for e in events if e.key.startswith("aten::")) / args.steps
    print(f"{' '.join(args.overrides) or 'defaults'}: wall {wall * 1e3:.2f} ms/step, "
          f"ops' host time {host:.2f} ms/step (profiled), {ops:.0f} aten calls/step")
    if device.type == "cuda":
        # kernels only: an op's row repeats its kernels' time
        busy = sum(e.self_device_time_total for e in events if e.device_type != DeviceType.CPU) / 1e3 / args.steps
        print(f"  GPU busy {busy:.2f} ms/step = {busy / (wall * 1e3):.0%} of the wall time")
        sort = "self_device_time_total"
    else:
        sort = "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=args.top, max_name_column_width=48))


if __name__ == "__main__":
    main()
