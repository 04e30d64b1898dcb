"""Deterministic train/validation/test splits: seeded holdout, seeded stratified, contiguous.

Every split here is a pure function of its inputs and a seed, so the same call gives the same
indices on every machine (numpy's PCG64 generator; scikit-learn's ``train_test_split`` seeded
through ``random_state``):

- ``holdout_split``: a dataset that comes with train and test (the IDX files) gets its
  validation set carved from train by a seeded permutation;
- ``stratified_split``: a dataset with no split of its own (scikit-learn's digits) is cut into
  three with each class in the same proportions;
- ``contiguous_split``: a stream (text) is cut by position, so no window straddles two splits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["SPLITS", "check_split", "contiguous_split", "holdout_split", "stratified_split"]

SPLITS = ("train", "val", "test")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions are (train, val, test), each > 0, summing to 1; got {tuple(fractions)}")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def holdout_split(n: int, holdout: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) indices of range(n): ``holdout`` of them, drawn by a seeded permutation.

    Both are sorted, so the kept set keeps the file's order.
    """
    if not 0 < holdout < n:
        raise ValueError(f"cannot hold out {holdout} of {n} examples: need 0 < holdout < n")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[holdout:]), np.sort(order[:holdout])


def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> dict[str, np.ndarray]:
    """Indices of each split ("train", "val", "test"), every class in about the same proportions.

    Sizes: test = round(fractions[2] * n), val = round(fractions[1] * n), train the rest. Each
    index array is sorted.
    """
    from sklearn.model_selection import train_test_split

    _, val_fraction, test_fraction = _check_fractions(fractions)
    n = len(labels)
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    indices = np.arange(n)
    rest, test = train_test_split(indices, test_size=n_test, stratify=labels, random_state=seed)
    train, val = train_test_split(rest, test_size=n_val, stratify=labels[rest], random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def contiguous_split(length: int, fractions: Sequence[float]) -> dict[str, tuple[int, int]]:
    """[start, stop) of each split of a stream of ``length`` items, in order: train, val, test."""
    train_fraction, val_fraction, _ = _check_fractions(fractions)
    train_end = round(train_fraction * length)
    val_end = round((train_fraction + val_fraction) * length)
    return {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, length)}
