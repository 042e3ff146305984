"""Every method option runs the whole recipe on the tiny world, and resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch

from lifelong.config import CONF_DIR
from lifelong.train import train
from tests.conftest import crashed_copy, losses, make_config
from tests.methods.conftest import checkpoint_at, migu_targets, rows_moved_only_by_weight_decay

METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
STEPS = 6  # the smoke experiment's steps per stage


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_end_to_end_and_resumes_mid_last_stage(tmp_path, method, monkeypatch):
    """A crash in the last stage (LoRA's adapters exist by then, EWC holds Fisher terms, ...):
    the run resumed from the checkpoint before it logs the same losses and ends the same."""
    overrides = [f"method={method}", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=100"]
    with monkeypatch.context() as patch:
        stages, fed = record_training_batches(patch)
        reference = train(make_config(tmp_path / "reference", *overrides))
    if method in ("replay", "joint"):
        check_earlier_stages_blocks_are_trained_on(stages, fed)
    for probe_set in ("changed", "unchanged", "new"):
        assert math.isfinite(reference["probe_sets"][probe_set]["final"])
    if method == "migu":
        check_migu_masked_rows(tmp_path / "reference")
    if method == "ewc":
        check_ewc_pulls_towards_its_anchor(tmp_path, overrides)

    crash_step = (len(reference["stages"]) - 1) * STEPS + 2  # two steps into the last stage
    run_dir = crashed_copy(tmp_path / "reference", tmp_path / "crashed", crash_step)
    resumed = train(make_config(run_dir, *overrides))
    logged, expected = losses(run_dir), losses(tmp_path / "reference")
    assert [step for step, _ in logged] == [step for step, _ in expected]  # every step logged once, in order
    assert dict(logged) == pytest.approx(dict(expected), abs=1e-6)
    for name, probe_set in reference["probe_sets"].items():
        assert resumed["probe_sets"][name]["final"] == pytest.approx(probe_set["final"], rel=1e-5)


def check_migu_masked_rows(run_dir):
    """MIGU masks in a real run: over a later stage's first two steps (a stage builds a fresh AdamW, so a
    row masked in both moves by weight decay alone) a share of every block weight's rows up to
    mask_fraction (0.5) stands still; in stage 0, plain fine-tuning, none does."""
    start, two_in = checkpoint_at(run_dir, 2)["model"], checkpoint_at(run_dir, 4)["model"]
    keys = migu_targets(start)
    assert len(keys) == 8 and [rows_moved_only_by_weight_decay(start, two_in, key) for key in keys] == [0.0] * 8
    for stage in (1, 2):
        start, two_in = (checkpoint_at(run_dir, stage * STEPS + step)["model"] for step in (0, 2))
        for key in keys:
            share = rows_moved_only_by_weight_decay(start, two_in, key)
            assert 0.2 <= share <= 0.5, (stage, key, share)


def check_ewc_pulls_towards_its_anchor(tmp_path, overrides):
    """EWC's gradient term acts in a real run: the same run under finetune has the same stage 0 (no
    term yet), and ends stage 1 further from stage 0's anchor, in the Fisher-weighted distance EWC penalizes."""
    finetune_dir = tmp_path / "finetune"
    train(make_config(finetune_dir, "method=finetune", *(o for o in overrides if not o.startswith("method="))))
    ewc_dir = tmp_path / "reference"
    assert all(torch.equal(value, checkpoint_at(finetune_dir, STEPS)["model"][key])
               for key, value in checkpoint_at(ewc_dir, STEPS)["model"].items())
    terms = checkpoint_at(ewc_dir, STEPS + 2)["hooks"][0]  # stage 0's Fisher and anchor, in force in stage 1
    assert terms["fisher"]

    def distance(run_dir):
        model = checkpoint_at(run_dir, 2 * STEPS)["model"]
        return sum((fisher * (model[name] - terms["anchor"][name]).square()).sum().item()
                   for name, fisher in terms["fisher"].items())

    assert distance(ewc_dir) < 0.75 * distance(finetune_dir)


def record_training_batches(patch):
    """Record, for the run that follows, each stage's packed blocks and every micro-batch of rows the
    trainer's loop turns into model inputs (lm_inputs, which only that loop calls in lifelong.train)."""
    import lifelong.data.corpus
    import lifelong.train

    stages, fed = [], []
    stage_blocks, lm_inputs = lifelong.data.corpus.stage_blocks, lifelong.train.lm_inputs
    patch.setattr(lifelong.data.corpus, "stage_blocks", lambda *args: stages.append(stage_blocks(*args)) or stages[-1])
    patch.setattr(lifelong.train, "lm_inputs", lambda rows, *args: fed.append(rows.clone()) or lm_inputs(rows, *args))
    return stages, fed


def check_earlier_stages_blocks_are_trained_on(stages, fed):
    """Replay's and joint's stage data reaches the trainer: from stage 1 on, some trained rows are
    blocks of earlier stages only, and every row is a block of this stage or an earlier one."""
    rows_of = [{tuple(row.tolist()) for row in blocks} for blocks in stages]
    per_stage = len(fed) // len(stages)
    assert len(stages) == 3 and len(fed) == 3 * STEPS  # one micro-batch a step
    for t in range(len(stages)):
        trained = [tuple(row.tolist()) for batch in fed[t * per_stage : (t + 1) * per_stage] for row in batch]
        earlier = set().union(*rows_of[:t]) - rows_of[t]
        assert all(row in rows_of[t] or row in earlier for row in trained), t
        replayed = sum(row in earlier for row in trained)
        assert (replayed > 0) if t > 0 else (replayed == 0), (t, replayed, len(trained))
