"""Replay's mix ratio as measured on the batches the trainer produces; joint's data."""

from __future__ import annotations

import pytest
import torch

from lifelong.methods.joint import Joint
from lifelong.methods.replay import Replay, ReplayConfig
from lifelong.train import stage_batches
from tests.methods.conftest import context


def tagged(stage: int, rows: int) -> torch.Tensor:
    """Blocks whose first token names their stage and second their row."""
    out = torch.full((rows, 8), 100 + stage)
    out[:, 1] = torch.arange(rows)
    return out


def replayed_share(data: torch.Tensor, stage: int, batch_size: int) -> float:
    order = stage_batches(data, steps=len(data) * 2 // batch_size, batch_size=batch_size, seed=0)
    return (data[order][:, 0] != 100 + stage).float().mean().item()


def test_mix_ratio_and_decay_measured_on_batches(tmp_path):
    replay = Replay(ReplayConfig(mix_ratio=1.0, decay=0.5, buffer_size=1000))
    stages = [tagged(0, 40), tagged(1, 40), tagged(2, 40)]
    assert torch.equal(replay.stage_data(context(0, stages[:1], None, tmp_path)), stages[0])
    replay.after_stage(context(0, stages[:1], None, tmp_path))
    data = replay.stage_data(context(1, stages[:2], None, tmp_path))
    # ratio 1: one replayed block per new block -> half of every epoch's batches
    assert replayed_share(data, 1, batch_size=8) == 0.5
    replay.after_stage(context(1, stages[:2], None, tmp_path))
    data = replay.stage_data(context(2, stages, None, tmp_path))
    # ratio 0.5 at the next stage: 20 replayed of 60 blocks
    assert replayed_share(data, 2, batch_size=6) == pytest.approx(20 / 60)
    assert set(data[40:, 0].tolist()) <= {100, 101}


def test_buffer_is_a_bounded_uniform_reservoir(tmp_path):
    replay = Replay(ReplayConfig(buffer_size=50))
    for stage in range(4):
        replay.after_stage(context(stage, [tagged(s, 100) for s in range(stage + 1)], None, tmp_path))
    assert replay.buffer.shape == (50, 8) and replay.seen == 400
    counts = torch.bincount(replay.buffer[:, 0] - 100, minlength=4)
    assert counts.min() >= 5  # every stage is represented (expected 12.5 each)
    state = replay.state_dict()
    clone = Replay(ReplayConfig(buffer_size=50))
    clone.load_state_dict(state)
    ctx = context(4, [tagged(s, 100) for s in range(5)], None, tmp_path)
    assert torch.equal(clone.stage_data(ctx), replay.stage_data(ctx))


def test_joint_trains_on_every_stage_so_far(tmp_path):
    stages = [tagged(0, 10), tagged(1, 20), tagged(2, 30)]
    data = Joint().stage_data(context(2, stages, None, tmp_path))
    assert sorted(set(data[:, 0].tolist())) == [100, 101, 102] and len(data) == 60
