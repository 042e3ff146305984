"""CL metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from lifelong.eval.metrics import backward_transfer, final_perplexity, forgetting, summarize

MATRIX = [
    [10.0, 50.0, None],
    [20.0, 5.0, None],
    [40.0, 8.0, 4.0],
]


def test_final_is_mean_of_last_row_ignoring_empty():
    assert final_perplexity(MATRIX) == pytest.approx((40 + 8 + 4) / 3)
    assert final_perplexity([[1.0, None], [None, None]]) is None


def test_forgetting_uses_best_earlier_log_perplexity():
    # stage 0: best 10 (after stage 0), final 40; stage 1: best 5, final 8
    expected = (math.log(40 / 10) + math.log(8 / 5)) / 2
    assert forgetting(MATRIX) == pytest.approx(expected)


def test_backward_transfer_sign():
    expected = (math.log(10 / 40) + math.log(5 / 8)) / 2
    assert backward_transfer(MATRIX) == pytest.approx(expected)
    assert backward_transfer(MATRIX) < 0  # forgetting shows as negative transfer


def test_summarize_keys():
    assert set(summarize(MATRIX)) == {"final", "forgetting", "backward_transfer"}
