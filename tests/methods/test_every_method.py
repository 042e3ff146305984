"""Every method option runs the whole recipe on the tiny world."""

from __future__ import annotations

import math

import pytest

from lifelong.config import CONF_DIR
from lifelong.train import train
from tests.conftest import make_config

METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_end_to_end(tmp_path, method):
    results = train(make_config(tmp_path / method, f"method={method}"))
    for probe_set in ("changed", "unchanged", "new"):
        assert math.isfinite(results["probe_sets"][probe_set]["final"])
