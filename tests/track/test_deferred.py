"""Device metrics reach the metrics file in order, each once, by the next log or a flush; a torn file resumes."""

from __future__ import annotations

import json

import pytest
import torch

from lifelong.track.deferred import DeferredMetrics
from lifelong.track.jsonl import JsonlLogger, read_jsonl_metrics
from lifelong.train import keep_metrics_until


def test_records_arrive_in_order_with_their_values(tmp_path):
    logger = JsonlLogger(tmp_path / "metrics.jsonl")
    metrics = DeferredMetrics(logger)
    keys = ["loss", "grad_norm/block_0"]
    metrics.log({"global_step": 1}, keys, torch.tensor([2.5, 0.25]))
    assert read_jsonl_metrics(tmp_path / "metrics.jsonl") == []  # held until the values are on the host
    metrics.log({"global_step": 2}, keys, torch.tensor([1.5, 0.5]))
    assert [r["global_step"] for r in read_jsonl_metrics(tmp_path / "metrics.jsonl")] == [1]
    metrics.flush()
    metrics.flush()  # nothing left: nothing written twice
    assert read_jsonl_metrics(tmp_path / "metrics.jsonl") == [
        {"global_step": 1, "loss": 2.5, "grad_norm/block_0": 0.25},
        {"global_step": 2, "loss": 1.5, "grad_norm/block_0": 0.5},
    ]


def test_a_metrics_file_cut_mid_write_resumes_without_its_torn_line(tmp_path):
    """A node crash or a full disk can cut the last append short; the resume drops it and goes on."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"global_step": 1, "loss": 2.5}\n{"global_step": 2, "loss": 1.5}\n{"global_step": 3, "lo')
    with pytest.warns(UserWarning, match="last line is cut short"):
        keep_metrics_until(path, 2)
    assert path.read_text() == '{"global_step": 1, "loss": 2.5}\n{"global_step": 2, "loss": 1.5}\n'
    path.write_text('{"global_step": 1}\n{"global_st\n{"global_step": 3}\n')  # not a torn end: corrupt
    with pytest.raises(json.JSONDecodeError):
        read_jsonl_metrics(path)
