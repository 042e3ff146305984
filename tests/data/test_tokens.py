"""ConcatBlocks: several stages' blocks indexed as their torch.cat, without copying them."""

from __future__ import annotations

import pytest
import torch

from lifelong.data.tokens import ConcatBlocks, sample_rows


def parts(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(-100, 1000, (n, 6), generator=generator, dtype=torch.int32) for n in lengths]


@pytest.mark.parametrize("lengths", [[7], [5, 0, 7, 1, 3], [0, 4], [2, 9, 0]])
def test_rows_are_those_of_torch_cat(lengths):
    blocks = parts(lengths)
    view, cat = ConcatBlocks(blocks), torch.cat(blocks)
    assert len(view) == len(cat) and view.shape == cat.shape
    generator = torch.Generator().manual_seed(1)
    indices = [
        torch.randint(len(cat), (50,), generator=generator),  # repeats, out of order
        torch.randint(-len(cat), 0, (20,), generator=generator),  # negative, as a tensor takes them
        torch.randperm(len(cat), generator=generator),
        torch.randperm(len(cat), generator=generator).flip(0).to(torch.int32),
        torch.randint(len(cat), (3, 4), generator=generator),
        torch.tensor([len(cat) - 1, 0, len(cat) - 1, 0]),
        torch.tensor([], dtype=torch.long),
        slice(None), slice(1, None, 2), slice(-3, None),
        len(cat) - 1, -1,
    ]
    for index in indices:
        got, expected = view[index], cat[index]
        assert got.dtype == expected.dtype and torch.equal(got, expected), index


def test_parts_of_different_dtypes_promote_as_torch_cat():
    blocks = [torch.arange(6, dtype=torch.int32).view(2, 3), torch.arange(6, 12).view(2, 3)]
    rows = torch.tensor([3, 0, 2])
    assert torch.equal(ConcatBlocks(blocks)[rows], torch.cat(blocks)[rows])
    assert ConcatBlocks(blocks)[rows].dtype == torch.int64


def test_refuses_what_it_would_misread():
    view = ConcatBlocks(parts([3, 2]))
    for index in (torch.tensor([5]), torch.tensor([-6]), 5):
        with pytest.raises(IndexError, match="out of range"):
            view[index]
    with pytest.raises(IndexError, match="integer"):
        view[torch.tensor([True, False, True, False, True])]  # a mask, not rows 1 and 0
    with pytest.raises(IndexError, match="rows only"):
        view[1, 2]  # not rows 1 and 2
    with pytest.raises(ValueError, match="block shape"):
        ConcatBlocks([torch.zeros(2, 4), torch.zeros(2, 5)])


def test_sampled_rows_are_drawn_across_the_rows_by_their_own_generator():
    """EWC's Fisher and TGL's trace: packing puts the longest documents first, so the first blocks
    would be a few long documents."""
    rows = sample_rows(1000, 32, seed=0)
    assert len(set(rows.tolist())) == 32 and rows.max() >= 500  # not the first 32 blocks
    assert torch.equal(rows, sample_rows(1000, 32, seed=0)) and not torch.equal(rows, sample_rows(1000, 32, seed=1))
    assert sorted(sample_rows(5, 32, seed=0).tolist()) == list(range(5))  # a small stage: all its blocks
    rng = torch.get_rng_state()
    sample_rows(1000, 32, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)
