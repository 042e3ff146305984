"""End-to-end wall times of the commands a user runs.

    python benchmarks/end_to_end.py [--skip-paper]

- `lifelong-train` with no arguments (the README's first command, after installation);
- `lifelong-train -m experiment=paper_main_cpu` (63 runs: 7 methods x 3 TGL variants x 3 seeds)
  followed by `lifelong-report` on its sweep: the miniature paper reproduction.
Each runs as a subprocess in a temp dir, as a user would run it. Writes
benchmarks/results/end_to_end.json and the sweep's table, benchmarks/results/paper_main_cpu_table.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from common import RESULTS, save_result


def timed(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "offline"})
    if done.returncode:
        raise RuntimeError(f"{command} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-paper", action="store_true", help="only the default run (the sweep takes ~10 min)")
    args = parser.parse_args()
    train, report = shutil.which("lifelong-train"), shutil.which("lifelong-report")
    result: dict = {"cpu_cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        result["default_run_s"] = timed([train], Path(tmp))
        if not args.skip_paper:
            sweep = Path(tmp) / "paper"
            result["paper_main_cpu_sweep_s"] = timed([train, "-m", "experiment=paper_main_cpu",
                                                      f"hydra.sweep.dir={sweep}"], Path(tmp))
            result["paper_main_cpu_runs"] = len(list(sweep.rglob("results.json")))
            result["report_s"] = timed([report, str(sweep)], Path(tmp))
            shutil.copy(sweep / "report" / "main.md", RESULTS / "paper_main_cpu_table.md")
    save_result("end_to_end", result)


if __name__ == "__main__":
    main()
