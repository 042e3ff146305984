"""CL metrics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from lifelong.eval.metrics import backward_transfer, final_perplexity, forgetting, forward_transfer, fuar, summarize

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
    # the best is not always right after the stage: stage 0's probes are best (6) after stage 1
    later_best = [[10.0, None], [6.0, None], [40.0, None]]
    assert forgetting(later_best) == pytest.approx(math.log(40 / 6))
    assert backward_transfer(later_best) == pytest.approx(math.log(40 / 10))  # from right after stage 0


def test_backward_transfer_is_a_change_in_log_perplexity():
    """Later minus right after, lower is better like forgetting and forward transfer (DESIGN.md 4)."""
    expected = (math.log(40 / 10) + math.log(8 / 5)) / 2
    assert backward_transfer(MATRIX) == pytest.approx(expected)
    assert backward_transfer(MATRIX) > 0  # later stages raised the earlier stages' perplexity
    assert backward_transfer([[10.0, None], [5.0, 3.0]]) == pytest.approx(math.log(5 / 10))  # < 0: it helped


def test_summarize_gives_each_metric():
    initial = [100.0, 80.0, 60.0]
    assert summarize(MATRIX, initial) == {
        "final": final_perplexity(MATRIX), "forgetting": forgetting(MATRIX),
        "backward_transfer": backward_transfer(MATRIX), "forward_transfer": forward_transfer(MATRIX, initial)}


def test_forward_transfer_against_the_untrained_model():
    initial = [100.0, 80.0, 60.0]
    # before training stage 1: 50 (vs 80 untrained); before stage 2: empty set (None), skipped
    expected = math.log(50 / 80)
    assert forward_transfer(MATRIX, initial) == pytest.approx(expected)


def test_fuar_by_hand():
    changed = [[None, 30.0, 9.0], [None, 10.0, 40.0], [None, 12.0, 20.0]]
    unchanged = [[None, 5.0, 6.0], [None, 10.0, 6.0], [None, 11.0, 3.0]]
    new = [[9.0, 50.0, 70.0], [8.0, 25.0, 35.0], [7.0, 30.0, 70.0]]
    # t=1: forgotten log(10/5), updated log(30/10), acquired log(50/25)
    # t=2: forgotten 0 (6 -> 3 fell), updated log(40/20), acquired 0 (35 -> 70 rose)
    expected = math.log(2) / (math.log(3) + math.log(2) + math.log(2))
    assert fuar(changed, unchanged, new) == pytest.approx(expected)
    flat = [[None, 1.0], [None, 1.0]]
    assert fuar(flat, flat, flat) is None
    # from a pretrained model stage 0 is an update too, measured from the perplexities before it
    # t=0: changed and unchanged have no stage-0 probes (None); new 12 -> 9 is acquired
    initial = ([None, 40.0, 9.0], [None, 5.0, 6.0], [12.0, 60.0, 70.0])
    assert fuar(changed, unchanged, new, initial) == pytest.approx(
        math.log(2) / (math.log(3) + math.log(2) + math.log(2) + math.log(12 / 9)))
    one_stage = ([[None]], [[5.0]], [[None]])
    assert fuar(*one_stage) is None and fuar(*one_stage, ([None], [4.0], [None])) is None  # forgot, gained nothing
    assert fuar([[2.0]], [[5.0]], [[None]], ([4.0], [4.0], [None])) == pytest.approx(math.log(5 / 4) / math.log(2))


def test_a_diverged_stage_gives_nan_not_a_clean_figure():
    nan = math.nan
    changed = [[None, 10.0, 10.0], [None, 5.0, 10.0], [None, 5.0, nan]]
    unchanged = [[None, 10.0, 10.0], [None, 10.0, 10.0], [None, 10.0, nan]]
    new = [[20.0, 20.0, 20.0], [20.0, 8.0, 20.0], [20.0, 8.0, nan]]
    assert math.isnan(fuar(changed, unchanged, new))  # max(0, nan) would count the blow-up as no change
    # wherever the NaN sits among the earlier rows (min keeps a NaN only when it comes first)
    assert math.isnan(forgetting([[5.0, 1.0, 1.0], [nan, 1.0, 1.0], [6.0, 1.0, 1.0]]))
    assert math.isnan(forgetting([[nan, 1.0, 1.0], [5.0, 1.0, 1.0], [6.0, 1.0, 1.0]]))
