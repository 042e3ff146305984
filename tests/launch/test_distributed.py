"""2-process torchrun on gloo: the losses of one process with the same global batch, and a
preemption signal that reaches one rank stops both at one checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lifelong.launch.checkpoint import load_latest_checkpoint
from lifelong.track.jsonl import read_jsonl_metrics
from tests.conftest import REPO

pytestmark = pytest.mark.slow
COMMON = ["experiment=smoke", "trainer.steps_per_stage=4", "data.num_stages=2"]


def run(run_dir, launcher: list[str], overrides: list[str]):
    done = subprocess.run([*launcher, *COMMON, *overrides, f"hydra.run.dir={run_dir}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [r["loss"] for r in read_jsonl_metrics(run_dir / "metrics.jsonl")]


def torchrun(port: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
            "-m", "lifelong.train"]


# MIGU averages its output sums across ranks, so its masks, too, are those of one process (with
# skip_masked_rows as the last micro-batch's forward ends); EWC's ranks share its Fisher's sequences
# (3: unevenly) and sum their parts; TGL traces the same probes on every rank, so all ranks freeze
# the same layers, traced on batches of the global batch (each rank traces it whole, in its micro-batches)
@pytest.mark.parametrize(("method", "port"), [
    (["method=finetune"], 29517), (["method=migu"], 29521),
    (["method=ewc", "method.fisher_samples=3", "tgl=freeze"], 29525),
    (["method=lora_migu"], 29529), (["method=migu", "method.skip_masked_rows=true", "trainer.grad_accum=2"], 29533)])
def test_torchrun_two_ranks_match_one_process(tmp_path, method, port):
    single = run(tmp_path / "single", [sys.executable, "-m", "lifelong.train"], ["trainer.micro_batch_size=4", *method])
    double = run(tmp_path / "ddp", torchrun(port), ["trainer.micro_batch_size=2", *method])
    assert len(single) == len(double) == 8
    # same global batch of 4 rows: 2 ranks x 2 rows, gradients averaged by DDP; float sums differ in order
    assert double == pytest.approx(single, rel=1e-5, abs=1e-6)
    assert (tmp_path / "ddp" / "results.json").exists()
    if "tgl=freeze" in method:
        traces = [json.loads((tmp_path / d / "trace_stage_1.json").read_text()) for d in ("single", "ddp")]
        assert traces[1]["relative"] == pytest.approx(traces[0]["relative"], rel=1e-5)
        assert traces[1]["selected"] == traces[0]["selected"]


def worker_of_rank(agent: subprocess.Popen, rank: int) -> int:
    """The pid of torchrun's worker process with LOCAL_RANK=`rank`."""
    children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
    for pid in children:
        if f"LOCAL_RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
            return int(pid)
    raise AssertionError(f"no worker of rank {rank} among {children}")


def test_signal_to_one_rank_checkpoints_both_and_the_run_resumes(tmp_path):
    """Ranks poll for a signal every 10 steps and log every 7: the checkpoint falls mid-window, and
    the resumed window's loss is the mean over the ranks' shares, as uninterrupted."""
    overrides = ["trainer.micro_batch_size=2", "trainer.steps_per_stage=100", "trainer.log_every=7"]
    reference = run(tmp_path / "reference", torchrun(29518), overrides)
    run_dir = tmp_path / "run"
    agent = subprocess.Popen([*torchrun(29519), *COMMON, *overrides, f"hydra.run.dir={run_dir}"], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics, deadline = run_dir / "metrics.jsonl", time.monotonic() + 120
    while not (metrics.exists() and any(r["global_step"] >= 5 for r in read_jsonl_metrics(metrics))):
        assert time.monotonic() < deadline and agent.poll() is None
        time.sleep(0.005)
    os.kill(worker_of_rank(agent, 1), signal.SIGUSR2)  # rank 0, which writes checkpoints, is not told
    agent.wait(timeout=120)
    assert agent.returncode != 0
    state = load_latest_checkpoint(run_dir)
    assert state is not None and state["stage"] == 0 and 5 < state["step"] < 100  # stopped mid-stage
    assert state["step"] % 7  # mid-window
    assert not (run_dir / "results.json").exists()
    # the restarted run picks the checkpoint up and logs what the uninterrupted one did
    assert run(run_dir, torchrun(29520), overrides) == pytest.approx(reference, abs=1e-6)
