"""MIGU's candidates in benchmarks/migu_sums.py that claim MIGU's semantics train exactly as the
shipped MIGU: a candidate's step time is only worth comparing if it does the same work."""

from __future__ import annotations

import importlib
from types import ModuleType

import pytest
import torch

from tests.conftest import REPO

SAME_AS_MIGU = ["migu_hook_sums", "migu_hook_masks", "migu_skip_masked_rows"]


@pytest.fixture
def benchmarks(monkeypatch) -> tuple[ModuleType, ModuleType]:
    """benchmarks/common.py and benchmarks/migu_sums.py, imported as the scripts import them."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("common"), importlib.import_module("migu_sums")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_candidates_train_exactly_as_migu(benchmarks, monkeypatch, precision):
    """Four steps (method_step's three warm-up steps and one) at batch 2x128 from the same seed leave
    every parameter equal to MIGU's; migu_no_masks, which leaves the masks out, does not."""
    common, migu_sums = benchmarks
    built, build_model = [], common.build_model
    monkeypatch.setattr(common, "build_model", lambda *args, **kwargs: built.append(build_model(*args, **kwargs))
                        or built[-1])
    overrides = ["trainer.device=cpu", "model=tiny_gpt2", "method=migu", f"trainer.precision={precision}"]
    trained = {}
    for name in ["migu", *SAME_AS_MIGU, "migu_no_masks"]:
        with migu_sums.VARIANTS[name]():
            step, _ = common.method_step([*overrides, *migu_sums.OVERRIDES.get(name, [])], micro_batch=2)
        step()
        trained[name] = [param.detach().clone() for param in built[-1].parameters()]
        assert all(param.requires_grad for param in built[-1].parameters()), name
    for name in SAME_AS_MIGU:
        assert all(torch.equal(a, b) for a, b in zip(trained["migu"], trained[name], strict=True)), name
    assert not all(torch.equal(a, b) for a, b in zip(trained["migu"], trained["migu_no_masks"], strict=True))
