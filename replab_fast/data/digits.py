"""scikit-learn's bundled handwritten digits: the image data that needs no download.

``sklearn.datasets.load_digits()``: 1,797 images of 8x8 pixels with 17 grey levels (0-16,
0 = background) from the UCI "Optical Recognition of Handwritten Digits" set, labels 0-9,
shipped inside scikit-learn. It has no split of its own; ``load_digits_split`` cuts a seeded,
stratified 80/10/10 (1,437 / 180 / 180 images).
"""

from __future__ import annotations

import numpy as np

from .splits import check_split, stratified_split

__all__ = ["DIGITS_FRACTIONS", "DIGITS_LEVELS", "load_digits_split"]

DIGITS_FRACTIONS = (0.8, 0.1, 0.1)  # train, val, test
DIGITS_LEVELS = 16  # pixel values are 0..16


def _load_all() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.uint8), bunch.target.astype(np.int64)  # (1797, 8, 8) in 0..16, (1797,)


def load_digits_split(split: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 8, 8) uint8 in 0..16 and labels (N,) int64 of ``split`` ("train", "val", "test")."""
    check_split(split)
    images, labels = _load_all()
    index = stratified_split(labels, DIGITS_FRACTIONS, seed)[split]
    return images[index], labels[index]
