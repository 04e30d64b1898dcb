"""Fixtures of the data tests: small MNIST-format folders written on the spot, an isolated
search path (no $REPLAB_DATA, the cache in a temporary folder)."""

import numpy as np
import pytest

from replab_fast.data.idx import write_idx
from replab_fast.data.mnist import FILE_NAMES


def _write_idx_folder(folder, n_train=24, n_test=10, *, side=28, compress=True, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = FILE_NAMES[split]
        write_idx(folder / f"{images_name}{suffix}", rng.integers(0, 256, (n, side, side), dtype=np.uint8))
        write_idx(folder / f"{labels_name}{suffix}", (np.arange(n) % 10).astype(np.uint8))
    return folder


@pytest.fixture
def write_idx_folder():
    """``write_idx_folder(folder, n_train=24, n_test=10, *, side=28, compress=True, seed=0)``:
    the four MNIST-format files in ``folder`` (random uint8 images, labels cycling 0-9)."""
    return _write_idx_folder


@pytest.fixture
def isolated_search_path(tmp_path, monkeypatch):
    """REPLAB_DATA unset and XDG_CACHE_HOME in tmp_path: only what a test writes is found
    (besides Debian's Fashion-MNIST folder, which tests of a missing dataset avoid with MNIST)."""
    monkeypatch.delenv("REPLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path
