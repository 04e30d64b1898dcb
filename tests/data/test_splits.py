"""The splits are deterministic, disjoint, complete, and stratified where they say so."""

import numpy as np
import pytest

from replab_fast.data.splits import check_split, contiguous_split, holdout_split, stratified_split


def test_holdout_is_a_seeded_partition():
    kept, held = holdout_split(100, 12, seed=3)
    assert len(held) == 12 and len(kept) == 88
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(100))
    assert np.all(np.diff(kept) > 0) and np.all(np.diff(held) > 0)  # sorted
    np.testing.assert_array_equal(held, holdout_split(100, 12, seed=3)[1])
    assert not np.array_equal(held, holdout_split(100, 12, seed=4)[1])
    assert held.tolist() != list(range(12))  # not the first examples


@pytest.mark.parametrize("holdout", [0, 100, -1])
def test_holdout_needs_something_on_both_sides(holdout):
    with pytest.raises(ValueError, match="0 < holdout < n"):
        holdout_split(100, holdout, seed=0)


def test_stratified_keeps_class_proportions():
    labels = np.repeat(np.arange(4), [50, 100, 150, 100])  # 400, unbalanced
    parts = stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    assert [len(parts[s]) for s in ("train", "val", "test")] == [320, 40, 40]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(400))
    for split in ("val", "test"):
        assert np.bincount(labels[parts[split]]).tolist() == [5, 10, 15, 10]
    again = stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    assert all(np.array_equal(parts[s], again[s]) for s in parts)


def test_contiguous_cuts_in_order():
    assert contiguous_split(1000, (0.9, 0.05, 0.05)) == {"train": (0, 900), "val": (900, 950), "test": (950, 1000)}


@pytest.mark.parametrize("fractions", [(0.9, 0.1), (0.9, 0.1, 0.1), (1.0, 0.0, 0.0)])
def test_fractions_are_checked(fractions):
    with pytest.raises(ValueError, match="fractions are"):
        contiguous_split(10, fractions)


def test_split_names_are_checked():
    assert check_split("val") == "val"
    with pytest.raises(ValueError, match="train, val, test"):
        check_split("validation")
