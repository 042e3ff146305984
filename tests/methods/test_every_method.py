"""Every method option runs the whole recipe on the tiny world, and resumes exactly."""

from __future__ import annotations

import math

import pytest

from lifelong.config import CONF_DIR
from lifelong.train import train
from tests.conftest import crashed_copy, losses, make_config

METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))
STEPS = 6  # the smoke experiment's steps per stage


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_end_to_end_and_resumes_mid_last_stage(tmp_path, method):
    """A crash in the last stage (LoRA's adapters exist by then, EWC holds Fisher terms, ...):
    the run resumed from the checkpoint before it logs the same losses and ends the same."""
    overrides = [f"method={method}", "trainer.checkpoint_every=2", "trainer.keep_checkpoints=100"]
    reference = train(make_config(tmp_path / "reference", *overrides))
    for probe_set in ("changed", "unchanged", "new"):
        assert math.isfinite(reference["probe_sets"][probe_set]["final"])

    crash_step = (len(reference["stages"]) - 1) * STEPS + 2  # two steps into the last stage
    run_dir = crashed_copy(tmp_path / "reference", tmp_path / "crashed", crash_step)
    resumed = train(make_config(run_dir, *overrides))
    logged, expected = losses(run_dir), losses(tmp_path / "reference")
    assert [step for step, _ in logged] == [step for step, _ in expected]  # every step logged once, in order
    assert dict(logged) == pytest.approx(dict(expected), abs=1e-6)
    for name, probe_set in reference["probe_sets"].items():
        assert resumed["probe_sets"][name]["final"] == pytest.approx(probe_set["final"], rel=1e-5)
