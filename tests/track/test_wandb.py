"""A real offline wandb run, read back from disk."""

from __future__ import annotations

import struct
import time

import pytest
from google.protobuf.message import DecodeError

from lifelong.track.jsonl import read_jsonl_metrics
from lifelong.track.wandb_offline import read_offline_run, records
from lifelong.train import train
from tests.conftest import make_config


def run_files(run_dir):
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def finished_run(run_file, timeout: float = 60):
    """`read_offline_run` once wandb's service has written the run's last (exit) record: `finish()`
    can return before that process has flushed the file (read at once, a resumed run lacked its run
    record once, under CI load)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            complete = records(run_file)[-1].WhichOneof("record_type") == "exit"
        except (struct.error, ValueError, IndexError, DecodeError):  # still being written: a cut header or record
            complete = False
        if complete:
            return read_offline_run(run_file)
        assert time.monotonic() < deadline, f"{run_file} has no exit record {timeout} s after the run finished"
        time.sleep(0.1)


def test_offline_run_holds_per_layer_norms_and_a_resume_keeps_its_id(tmp_path):
    run_dir = tmp_path / "run"
    train(make_config(run_dir, "logger=wandb", "data.num_stages=2"))
    (first,) = run_files(run_dir)
    run_id, history = finished_run(first)
    metrics = read_jsonl_metrics(run_dir / "metrics.jsonl")
    steps = [row for row in history if "loss" in row]
    assert [row["global_step"] for row in steps] == [r["global_step"] for r in metrics]
    for row, record in zip(steps, metrics, strict=True):
        for key in ("grad_norm/layer_00", "grad_norm/layer_01", "grad_norm/embed", "loss", "lr"):
            assert row[key] == pytest.approx(record[key])
    assert any(key.startswith("perplexity/after_stage_1") for row in history for key in row)
    assert any(key.startswith("grad_norm_heatmap/stage_1") for row in history for key in row)

    (run_dir / "results.json").unlink()  # as if the job had been preempted after its last checkpoint
    # relaunched with what a relaunch may change (RELAUNCH_MAY_CHANGE): the same wandb run
    train(make_config(run_dir, "logger=wandb", "data.num_stages=2", "logger.tags=[requeued]", "trainer.num_threads=2"))
    files = run_files(run_dir)
    assert len(files) == 2 and finished_run(files[1])[0] == run_id

    other = tmp_path / "other"
    train(make_config(other, "logger=wandb", "data.num_stages=2", "seed=1"))
    assert finished_run(run_files(other)[0])[0] != run_id


def test_a_sweeps_runs_share_its_dirs_name_as_their_group_though_a_path_override_nests_them(tmp_path):
    sweep_dir = tmp_path / "my_sweep"
    sweep_dir.mkdir()
    (sweep_dir / "multirun.yaml").write_text("hydra: {}\n")  # as Hydra's sweeper writes it before any job
    run_dir = sweep_dir / "data.path=" / "data" / "stream,seed=0"  # the job dir of `data.path=/data/stream seed=0`
    train(make_config(run_dir, "logger=wandb", "data.num_stages=2", "trainer.steps_per_stage=2"))
    finished_run(run_files(run_dir)[0])
    [run] = [r.run for r in records(run_files(run_dir)[0]) if r.WhichOneof("record_type") == "run"]
    assert run.run_group == "my_sweep"
