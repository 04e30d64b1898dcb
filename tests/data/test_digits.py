"""scikit-learn's digits: 1,797 images, a seeded stratified 80/10/10."""

import numpy as np

from replab_fast.data.digits import load_digits_split


def test_the_splits_partition_the_1797_images_stratified():
    parts = {s: load_digits_split(s, seed=0) for s in ("train", "val", "test")}
    assert {s: len(labels) for s, (_, labels) in parts.items()} == {"train": 1437, "val": 180, "test": 180}
    for images, labels in parts.values():
        assert images.shape[1:] == (8, 8) and images.dtype == np.uint8 and 0 <= images.min() and images.max() == 16
        assert labels.dtype == np.int64
    for split in ("val", "test"):
        assert set(np.bincount(parts[split][1]).tolist()) <= {17, 18, 19}  # every class, ~10% each
    rows = {s: {img.tobytes() + bytes([int(lab)]) for img, lab in zip(*parts[s])} for s in parts}
    assert not rows["train"] & rows["test"] and not rows["val"] & rows["test"]  # disjoint (no image repeats)


def test_the_split_is_seeded():
    a, b, c = (load_digits_split("test", seed) for seed in (0, 0, 1))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
