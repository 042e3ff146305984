"""Sweeps through the real submitit launchers: local processes and a local SLURM cluster."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from lifelong.track.jsonl import read_jsonl_metrics
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def sweep(sweep_dir, *overrides: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lifelong.train", "-m", "experiment=smoke", *overrides, f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )


def job_dirs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_submitit_local_two_job_sweep(tmp_path):
    done = sweep(tmp_path / "sweep", "hydra/launcher=submitit_local", "seed=0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = job_dirs(tmp_path / "sweep")
    assert len(runs) == 2 and all((run / "results.json").exists() for run in runs)
    assert (tmp_path / "sweep" / ".submitit").is_dir()  # it really went through submitit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A single-node SLURM cluster on localhost, started and stopped by the project's scripts."""
    if shutil.which("slurmctld") is None or shutil.which("munged") is None:
        pytest.skip("slurm-wlm and munge are not installed (.ci/run installs them)")
    directory = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "LIFELONG_SLURMCTLD_PORT": str(free_port()), "LIFELONG_SLURMD_PORT": str(free_port())}
    started = subprocess.run([str(REPO / "slurm" / "start_local_cluster.sh"), str(directory)], env=env,
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(directory / "slurm.conf")
    yield directory
    subprocess.run([str(REPO / "slurm" / "stop_local_cluster.sh"), str(directory)], timeout=60)
    if previous is None:
        del os.environ["SLURM_CONF"]
    else:
        os.environ["SLURM_CONF"] = previous


@pytest.mark.slurm
def test_submitit_slurm_two_job_sweep(tmp_path, slurm_cluster):
    done = sweep(tmp_path / "sweep", "hydra/launcher=submitit_slurm", "cluster=local", "seed=0,1")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = job_dirs(tmp_path / "sweep")
    assert len(runs) == 2 and all((run / "results.json").exists() for run in runs)
    # one SLURM job (an array task) each, with submitit's logs: it really went through sbatch
    assert len(list((tmp_path / "sweep" / ".submitit").glob("*_*/*_log.out"))) == 2


def release_requeued(job: str) -> None:
    """SLURM holds a requeued job back for ~2 minutes (reason BeginTime); let it start now."""
    for _ in range(600):
        reason = subprocess.run(["squeue", "-h", "-j", job, "-o", "%r"], capture_output=True, text=True).stdout
        if "BeginTime" in reason:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
            return
        time.sleep(0.05)


def wait_for_step(metrics, global_step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and any(r["global_step"] >= global_step for r in read_jsonl_metrics(metrics))):
        assert time.monotonic() < deadline, f"{metrics} never reached global step {global_step}"
        time.sleep(0.05)


@pytest.mark.slurm
def test_slurm_requeue_resumes_and_finishes(tmp_path, slurm_cluster):
    sweep_dir = tmp_path / "sweep"
    process = subprocess.Popen(
        [sys.executable, "-m", "lifelong.train", "-m", "experiment=smoke", "hydra/launcher=submitit_slurm",
         "cluster=local", "trainer.steps_per_stage=60", "trainer.checkpoint_every=4", "seed=0",
         f"hydra.sweep.dir={sweep_dir}"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline, requeued = time.monotonic() + 300, False
    while time.monotonic() < deadline and not requeued:
        metrics = list(sweep_dir.glob("*/metrics.jsonl"))
        if metrics and any(r["global_step"] >= 12 for r in read_jsonl_metrics(metrics[0])):
            jobs = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
            assert len(jobs) == 1
            subprocess.run(["scontrol", "requeue", jobs[0]], check=True)
            requeued = True
            release_requeued(jobs[0])
        time.sleep(0.05)
    assert requeued, "the job never got going"
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    run = job_dirs(sweep_dir)[0]
    assert (run / "results.json").exists()
    steps = [r["global_step"] for r in read_jsonl_metrics(run / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and len(steps) == 3 * 60  # resumed: every step once
    logs = "".join(p.read_text() for p in (sweep_dir / ".submitit").glob("*/*_log.out"))
    assert "Resuming" in logs  # the requeued job picked up its checkpoint


@pytest.mark.slurm
def test_the_plain_sbatch_script_requeues_itself_before_the_time_limit_and_resumes(tmp_path, slurm_cluster):
    """slurm/example.sbatch, its GPU settings overridden for the CPU cluster. USR2 to the job's tasks
    is what its --signal=USR2@120 sends two minutes before the time limit."""
    run_dir = tmp_path / "run"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--partition=debug", "--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1",
         f"--output={tmp_path}/slurm-%j.out", f"--export=ALL,VENV={sys.prefix}", str(REPO / "slurm" / "example.sbatch"),
         "experiment=smoke", "trainer=cpu", "trainer.steps_per_stage=60", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, check=True)
    job = submitted.stdout.strip().split(";")[0]
    wait_for_step(run_dir / "metrics.jsonl", 12)
    subprocess.run(["scancel", "--signal=USR2", job], check=True)
    log, deadline = tmp_path / f"slurm-{job}.out", time.monotonic() + 300
    # the tasks checkpoint and exit first (tens of seconds on a loaded host); then the script requeues
    while f"requeueing job {job}" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    release_requeued(job)
    deadline = time.monotonic() + 300
    while not (run_dir / "results.json").exists():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    steps = [r["global_step"] for r in read_jsonl_metrics(run_dir / "metrics.jsonl")]
    assert steps == list(range(1, 3 * 60 + 1))  # resumed: every step once
    assert "Resuming" in log.read_text()
