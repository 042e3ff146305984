"""Checkpoint / resume with real processes: SIGKILL, SIGUSR2, a truncated checkpoint."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from lifelong.config import ConfigError
from lifelong.launch.checkpoint import checkpoint_dir, load_latest_checkpoint, save_checkpoint
from lifelong.track.jsonl import read_jsonl_metrics
from lifelong.train import train
from tests.conftest import REPO, crashed_copy, losses, make_config

OVERRIDES = ["experiment=smoke", "trainer.steps_per_stage=40", "trainer.checkpoint_every=4"]
pytestmark = pytest.mark.slow


def command(run_dir) -> list[str]:
    return [sys.executable, "-m", "lifelong.train", *OVERRIDES, f"hydra.run.dir={run_dir}"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    run_dir = tmp_path_factory.mktemp("reference")
    results = train(make_config(run_dir, *OVERRIDES[1:]))
    return losses(run_dir), results


def start_and_interrupt(run_dir, signum: int, after_step: int) -> subprocess.Popen:
    process = subprocess.Popen(command(run_dir), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if metrics.exists() and any(r["global_step"] >= after_step for r in read_jsonl_metrics(metrics)):
            process.send_signal(signum)
            break
        time.sleep(0.005)
    process.wait(timeout=120)
    return process


def assert_resumes_to_reference(run_dir, reference):
    done = subprocess.run(command(run_dir), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    resumed = losses(run_dir)
    expected, results = reference
    assert [s for s, _ in resumed] == [s for s, _ in expected]  # every step logged exactly once
    for (_, ours), (_, theirs) in zip(resumed, expected, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-6)
    ours = json.loads((run_dir / "results.json").read_text())
    for name, probe_set in results["probe_sets"].items():
        for row, other in zip(ours["probe_sets"][name]["matrix"], probe_set["matrix"], strict=True):
            for value, expected in zip(row, other, strict=True):  # None: an empty probe set
                assert value == expected if expected is None else value == pytest.approx(expected, rel=1e-5)


def test_sigkill_mid_stage_then_restart_gives_the_same_losses(tmp_path, reference):
    run_dir = tmp_path / "run"
    process = start_and_interrupt(run_dir, signal.SIGKILL, after_step=10)
    assert process.returncode == -signal.SIGKILL
    state = load_latest_checkpoint(run_dir)
    assert state is not None and state["stage"] == 0 and 0 < state["step"] < 40  # mid-stage
    assert not (run_dir / "results.json").exists()
    first_launch = (run_dir / "run_info.json").read_text()
    assert_resumes_to_reference(run_dir, reference)
    # the first launch's record stays; the resume's has its own, named by the step it resumed at
    assert (run_dir / "run_info.json").read_text() == first_launch
    assert (run_dir / f"run_info_resume_{state['global_step']:08d}.json").exists()


def test_sigusr2_checkpoints_then_exits_and_the_run_resumes(tmp_path, reference):
    run_dir = tmp_path / "run"
    process = start_and_interrupt(run_dir, signal.SIGUSR2, after_step=6)
    assert process.returncode == -signal.SIGUSR2, process.stderr.read()[-2000:]
    state = load_latest_checkpoint(run_dir)
    logged = max(s for s, _ in losses(run_dir))
    assert state["global_step"] >= logged  # the checkpoint came after the last logged step
    assert state["stage"] == 0 and 6 <= state["step"] < 40  # written at the signal, mid-stage
    assert_resumes_to_reference(run_dir, reference)


def test_truncated_latest_checkpoint_falls_back_to_the_previous(tmp_path, reference):
    run_dir = tmp_path / "run"
    train(make_config(run_dir, *OVERRIDES[1:], "trainer.keep_checkpoints=3"))
    (run_dir / "results.json").unlink()
    newest, previous = sorted(checkpoint_dir(run_dir).glob("step_*.pt"), reverse=True)[:2]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with pytest.warns(UserWarning, match="unreadable.*falling back"):
        state = load_latest_checkpoint(run_dir)
    assert f"step_{state['global_step']:08d}.pt" == previous.name
    assert newest.with_name(newest.name + ".corrupt").exists()  # set aside: pruning keeps the resumed run's
    results = train(make_config(run_dir, *OVERRIDES[1:], "trainer.keep_checkpoints=3"))
    assert results == reference[1]


@pytest.mark.parametrize(("last_step", "dropped"), [(40, "scaler"), (8, "window_loss")])
def test_a_checkpoint_an_older_lifelong_wrote_is_refused_naming_what_it_lacks(tmp_path, last_step, dropped):
    finished = tmp_path / "finished"
    train(make_config(finished, *OVERRIDES[1:], "trainer.keep_checkpoints=100", "data.num_stages=2"))
    run_dir = crashed_copy(finished, tmp_path / "run", last_step)  # 40: a stage's end; 8: mid-stage
    path = checkpoint_dir(run_dir) / f"step_{last_step:08d}.pt"
    state = torch.load(path, weights_only=True)
    del state[dropped]
    path.unlink()
    save_checkpoint(run_dir, last_step, state, keep=100)
    with pytest.raises(ValueError, match=f"lacks {dropped}: an older lifelong"):
        train(make_config(run_dir, *OVERRIDES[1:], "trainer.keep_checkpoints=100", "data.num_stages=2"))


def test_only_the_last_k_checkpoints_are_kept(tmp_path):
    run_dir = tmp_path / "run"
    train(make_config(run_dir, *OVERRIDES[1:], "trainer.keep_checkpoints=2"))
    kept = sorted(p.name for p in checkpoint_dir(run_dir).glob("*"))
    assert kept == ["step_00000116.pt", "step_00000120.pt"]  # 3 stages x 40 steps; no temp files left


def test_fp16_resume_at_a_stage_boundary_keeps_the_loss_scale(tmp_path):
    """GradScaler's scale carries across stages. A steep lr makes steps overflow (and the model
    diverge), so a resume that restarted the scale would skip other steps and log other losses."""
    overrides = ["trainer.precision=fp16", "trainer.lr=1.0", "trainer.max_grad_norm=0", "data.num_stages=2",
                 "trainer.checkpoint_every=2", "trainer.keep_checkpoints=100"]
    reference = train(make_config(tmp_path / "reference", *overrides))
    run_dir = crashed_copy(tmp_path / "reference", tmp_path / "crashed", 6)  # at the end of stage 0 (6 steps)
    resumed = train(make_config(run_dir, *overrides))
    # as JSON, where NaN equals NaN
    assert json.dumps(losses(run_dir)) == json.dumps(losses(tmp_path / "reference"))
    assert json.dumps(resumed) == json.dumps(reference)


SIGNAL_DURING_EVALUATION = """
import os, signal, sys
from lifelong.track.jsonl import JsonlLogger
from lifelong.train import train
from tests.conftest import make_config

def log_table(self, *args, **kwargs):  # right after a stage's evaluation: SLURM's warning arrives
    os.kill(os.getpid(), signal.SIGUSR2)

JsonlLogger.log_table = log_table
train(make_config(sys.argv[1]))
"""


def test_a_signal_during_evaluation_hands_over_at_the_stage_boundary(tmp_path):
    """Not at the next stage's first poll, which may come after TGL's tracing (minutes on a big
    model) and, with several ranks, up to PREEMPTION_POLL_STEPS steps later."""
    done = subprocess.run([sys.executable, "-c", SIGNAL_DURING_EVALUATION, str(tmp_path / "run")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -signal.SIGUSR2, done.stderr[-2000:]
    state = load_latest_checkpoint(tmp_path / "run")
    assert (state["stage"], state["step"]) == (1, 0)


class HandedOver(Exception):
    """What the handler before the trainer's does with the signal it hands over, here."""


def test_tokens_per_s_counts_only_the_steps_timed_since_a_mid_window_resume(tmp_path, monkeypatch):
    """A clock reading 1 s later at every reading makes a record's tokens/s the number of steps timed
    in its window times the step's tokens. Preempted at step 6, in the window of steps 5-8, the
    resumed run times steps 7 and 8 only."""
    import lifelong.train

    class Clock:  # train.py reads it once as a stage starts and once per record
        readings = iter(range(1000))

        @staticmethod
        def perf_counter() -> float:
            return float(next(Clock.readings))

    polls, real_any_rank = iter(range(1, 1000)), lifelong.train.any_rank

    def signalled_at_step_6(flag: bool, device) -> bool:  # a single process polls once per step
        return next(polls) == 6 or real_any_rank(flag, device)

    def previous_handler(signum, frame):
        raise HandedOver

    monkeypatch.setattr(lifelong.train, "time", Clock)
    monkeypatch.setattr(lifelong.train, "any_rank", signalled_at_step_6)
    previous = signal.signal(signal.SIGUSR2, previous_handler)
    overrides = ["data.num_stages=2", "trainer.steps_per_stage=12", "trainer.log_every=4"]
    try:
        with pytest.raises(HandedOver):
            train(make_config(tmp_path / "run", *overrides))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert load_latest_checkpoint(tmp_path / "run")["step"] == 6
    cfg = make_config(tmp_path / "run", *overrides)
    train(cfg)
    step_tokens = cfg.trainer.micro_batch_size * cfg.data.seq_len
    per_step = [r["tokens_per_s"] / step_tokens for r in read_jsonl_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert per_step == [4, 2, 4, 4, 4, 4]  # steps 1-4 before the preemption; then 7-8, 9-12 and stage 1


def test_a_run_is_not_resumed_by_another_number_of_processes(tmp_path):
    """Checkpoints say how many processes wrote them: the ranks share the global batch."""
    finished = tmp_path / "finished"
    train(make_config(finished, *OVERRIDES[1:]))
    run_dir = crashed_copy(finished, tmp_path / "run", last_step=3 * 40)
    latest = max(checkpoint_dir(run_dir).glob("step_*.pt"))
    state = torch.load(latest, weights_only=True)
    assert state["world_size"] == 1
    save_checkpoint(run_dir, state["global_step"], {**state, "world_size": 2}, keep=10)  # as 2 ranks write it
    with pytest.raises(ValueError, match=r"trained by 2 processes and this launch has 1.*resume it with 2"):
        train(make_config(run_dir, *OVERRIDES[1:]))


def test_a_checkpoint_of_another_config_copied_into_a_run_dir_is_refused(tmp_path):
    """Checkpoints carry their run's identity: config.yaml guards a run dir, and this a checkpoint
    copied into one by hand (without it, the run would resume another config's training)."""
    other = tmp_path / "other"
    train(make_config(other, "trainer.steps_per_stage=4", "data.num_stages=2", "trainer.lr=0.01"))
    run_dir = tmp_path / "run"
    checkpoint_dir(run_dir).mkdir(parents=True)
    for path in checkpoint_dir(other).glob("step_*.pt"):
        shutil.copy(path, checkpoint_dir(run_dir))
    with pytest.raises(ConfigError, match=r"trainer.lr=0.001: allowed is 0.01, the value the latest checkpoint"):
        train(make_config(run_dir, "trainer.steps_per_stage=4", "data.num_stages=2", "trainer.lr=0.001"))
    assert not (run_dir / "config.yaml").exists()
