"""2-process torchrun on gloo gives the losses of one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lifelong.track.jsonl import read_jsonl_metrics
from tests.conftest import REPO

pytestmark = pytest.mark.slow
COMMON = ["experiment=smoke", "trainer.steps_per_stage=4", "data.num_stages=2"]


def run(run_dir, launcher: list[str], overrides: list[str]):
    done = subprocess.run([*launcher, *COMMON, *overrides, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [r["loss"] for r in read_jsonl_metrics(run_dir / "metrics.jsonl")]


def test_torchrun_two_ranks_match_one_process(tmp_path):
    single = run(tmp_path / "single", [sys.executable, "-m", "lifelong.train"], ["trainer.micro_batch_size=4"])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                "-m", "lifelong.train"]
    double = run(tmp_path / "ddp", torchrun, ["trainer.micro_batch_size=2"])
    assert len(single) == len(double) == 8
    # same global batch of 4 rows: 2 ranks x 2 rows, gradients averaged by DDP; float sums differ in order
    assert double == pytest.approx(single, rel=1e-5, abs=1e-6)
    assert (tmp_path / "ddp" / "results.json").exists()
