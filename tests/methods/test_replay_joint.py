"""Replay's mix ratio as measured on the batches the trainer produces; joint's data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lifelong.config import compose_train_config
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
    assert set(data[40:][:, 0].tolist()) <= {100, 101}


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
    assert torch.equal(clone.stage_data(ctx)[:], replay.stage_data(ctx)[:])


def test_a_run_resumed_mid_stage_replays_the_same_blocks(tmp_path):
    replay = Replay(ReplayConfig(buffer_size=50))
    replay.after_stage(context(0, [tagged(0, 100)], None, tmp_path))
    ctx = context(1, [tagged(0, 100), tagged(1, 100)], None, tmp_path)
    trained = replay.stage_data(ctx)[:]
    resumed = Replay(ReplayConfig(buffer_size=50))
    resumed.load_state_dict(replay.state_dict())  # a mid-stage checkpoint: taken after the stage's draw
    assert torch.equal(resumed.stage_data(ctx)[:], trained)


def test_replayed_blocks_are_read_from_the_buffer_only_as_batches_take_them(tmp_path):
    """mix_ratio x a large stage of picks from a small buffer: no copy of the picks is made up front."""
    replay = Replay(ReplayConfig(mix_ratio=4.0, buffer_size=16))
    replay.after_stage(context(0, [tagged(0, 100)], None, tmp_path))
    data = replay.stage_data(context(1, [tagged(0, 100), tagged(1, 1000)], None, tmp_path))
    replayed = data.parts[1]
    assert len(data) == 5000 and len(replayed) == 4000
    assert replayed.blocks is replay.buffer and replayed.blocks.untyped_storage().nbytes() == 16 * 8 * 8
    rows = torch.tensor([1000, 4999, 2500])
    assert torch.equal(data[rows], replay.buffer[replayed.picks[rows - 1000]])


def test_each_run_seed_replays_its_own_draws(tmp_path):
    """The run's seed reaches replay: a sweep's seeds would otherwise share one buffer and its picks."""
    drawn = []
    for seed in (0, 1):
        cfg = compose_train_config(["method=replay", "method.buffer_size=50", f"seed={seed}"])
        replay = cfg.method.build()
        replay.after_stage(context(0, [tagged(0, 100)], None, tmp_path))
        drawn.append(replay.stage_data(context(1, [tagged(0, 100), tagged(1, 100)], None, tmp_path))[:])
    assert not torch.equal(*drawn)


def test_joint_trains_on_every_stage_so_far(tmp_path):
    stages = [tagged(0, 10), tagged(1, 20), tagged(2, 30)]
    data = Joint().stage_data(context(2, stages, None, tmp_path))
    assert sorted(set(data[:][:, 0].tolist())) == [100, 101, 102] and len(data) == 60


def mapped(tmp_path, stages: list[torch.Tensor]) -> list[torch.Tensor]:
    """The stages as pack_corpus returns a corpus on disk: tensors over copy-on-write memmaps."""
    for i, stage in enumerate(stages):
        np.save(tmp_path / f"stage_{i}.npy", stage.numpy())
    return [torch.from_numpy(np.load(tmp_path / f"stage_{i}.npy", mmap_mode="c")) for i in range(len(stages))]


def test_joint_leaves_memory_mapped_stages_in_place(tmp_path):
    stages = mapped(tmp_path, [tagged(0, 10).int(), tagged(1, 20).int(), tagged(2, 30).int()])
    data = Joint().stage_data(context(2, stages, None, tmp_path))
    # the batches the trainer draws are torch.cat's rows, in the same order
    order = stage_batches(data, steps=20, batch_size=8, seed=0)
    assert torch.equal(data[order], torch.cat(stages)[order])
    # no copy was made: a write to a mapped stage shows through the joint data
    stages[1][3, 0] = -7
    assert data[torch.tensor([10 + 3])][0, 0] == -7


def test_replay_leaves_the_memory_mapped_stage_in_place(tmp_path):
    stages = mapped(tmp_path, [tagged(0, 40).int(), tagged(1, 40).int()])
    replay = Replay(ReplayConfig(mix_ratio=1.0))
    replay.after_stage(context(0, stages[:1], None, tmp_path))
    data = replay.stage_data(context(1, stages, None, tmp_path))
    assert len(data) == 80 and torch.equal(data[:40], stages[1])
    buffer_rows = {tuple(row) for row in replay.buffer.tolist()}
    assert all(tuple(row) in buffer_rows for row in data[40:].tolist())  # the rest is replayed
    stages[1][5, 0] = -7
    assert data[torch.tensor([5])][0, 0] == -7
