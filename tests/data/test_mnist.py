"""MNIST and Fashion-MNIST: the search path, the not-found error, loading a split, and the real files."""

import numpy as np
import pytest

from replab_fast.data.idx import IdxFormatError, write_idx
from replab_fast.data.mnist import (
    ALL_FILES,
    DEBIAN_FASHION_MNIST,
    MNIST_FORMAT_DATASETS,
    DatasetNotFoundError,
    cache_dir,
    find_dataset,
    load_idx_split,
    search_path,
)


def test_the_search_path_is_replab_data_then_debian_then_the_cache(isolated_search_path, monkeypatch, tmp_path):
    monkeypatch.setenv("REPLAB_DATA", str(tmp_path / "root"))
    assert search_path("fashion-mnist") == [
        tmp_path / "root" / "fashion-mnist",
        DEBIAN_FASHION_MNIST,
        tmp_path / "cache" / "replab_fast" / "fashion-mnist",
    ]
    assert search_path("mnist") == [tmp_path / "root" / "mnist", tmp_path / "cache" / "replab_fast" / "mnist"]


def test_the_cache_defaults_to_home_dot_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir("mnist") == tmp_path / ".cache" / "replab_fast" / "mnist"


def test_an_explicit_folder_is_the_only_place_looked_in(isolated_search_path, tmp_path, write_idx_folder):
    write_idx_folder(cache_dir("mnist"))  # would be found on the search path
    assert search_path("mnist", tmp_path / "mine") == [tmp_path / "mine"]
    with pytest.raises(DatasetNotFoundError, match=r"the folder given as data=.*\n.*mine \(no such folder\)"):
        find_dataset("mnist", tmp_path / "mine")
    (tmp_path / "images.gz").write_bytes(b"")
    with pytest.raises(DatasetNotFoundError, match="a file, not a folder"):
        find_dataset("mnist", tmp_path / "images.gz")


def test_the_first_complete_folder_wins(isolated_search_path, monkeypatch, tmp_path, write_idx_folder):
    monkeypatch.setenv("REPLAB_DATA", str(tmp_path / "root"))
    write_idx_folder(cache_dir("mnist"))
    assert find_dataset("mnist") == cache_dir("mnist")
    write_idx_folder(tmp_path / "root" / "mnist", compress=False)  # raw files count too
    assert find_dataset("mnist") == tmp_path / "root" / "mnist"


def test_a_missing_dataset_names_every_place_and_the_command(isolated_search_path, tmp_path, write_idx_folder):
    partial = cache_dir("mnist")
    write_idx_folder(partial)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetNotFoundError) as info:
        find_dataset("mnist")
    message = str(info.value)
    assert "MNIST not found" in message and "REPLAB_DATA is not set" in message
    assert f"{partial} (missing: t10k-labels-idx1-ubyte[.gz])" in message
    assert "python -m replab_fast.data.download mnist" in message and "data=" in message


def test_the_fashion_mnist_error_names_make_data_and_the_debian_package(isolated_search_path, monkeypatch):
    import dataclasses

    spec = MNIST_FORMAT_DATASETS["fashion-mnist"]
    monkeypatch.setitem(MNIST_FORMAT_DATASETS, "fashion-mnist", dataclasses.replace(spec, system_folders=()))
    with pytest.raises(DatasetNotFoundError) as info:
        find_dataset("fashion-mnist")
    assert "`make data`" in str(info.value) and "apt-get install dataset-fashion-mnist" in str(info.value)


def test_load_a_split(tmp_path, write_idx_folder):
    folder = write_idx_folder(tmp_path / "d", n_train=24, n_test=10)
    images, labels = load_idx_split("mnist", "train", folder)
    assert images.shape == (24, 28, 28) and images.dtype == np.uint8
    assert labels.dtype == np.int64 and labels.tolist() == [i % 10 for i in range(24)]
    assert load_idx_split("mnist", "test", folder)[0].shape == (10, 28, 28)
    with pytest.raises(ValueError, match="validation is carved from train"):
        load_idx_split("mnist", "val", folder)


def test_images_and_labels_must_belong_together(tmp_path, write_idx_folder):
    folder = write_idx_folder(tmp_path / "d")
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(23, np.uint8))
    with pytest.raises(IdxFormatError, match="24 images but train-labels-idx1-ubyte.gz 23 labels"):
        load_idx_split("mnist", "train", folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(24, 10, np.uint8))
    with pytest.raises(IdxFormatError, match="label 10 out of range"):
        load_idx_split("mnist", "train", folder)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros((24, 1), np.uint8))
    with pytest.raises(IdxFormatError, match="expected 1-d"):
        load_idx_split("mnist", "train", folder)


def test_every_dataset_has_a_checksum_for_each_of_its_four_files():
    for spec in MNIST_FORMAT_DATASETS.values():
        assert sorted(spec.sha256) == sorted(f"{name}.gz" for name in ALL_FILES)
        assert all(len(s) == 64 and int(s, 16) >= 0 for s in spec.sha256.values())
        assert spec.mirrors and len(spec.classes) == 10


REAL = pytest.mark.skipif(
    not all((DEBIAN_FASHION_MNIST / f"{n}.gz").is_file() for n in ALL_FILES),
    reason=f"Fashion-MNIST is not installed in {DEBIAN_FASHION_MNIST} (`make data`, or apt-get install dataset-fashion-mnist)",
)


@REAL
def test_the_real_fashion_mnist_files(monkeypatch):
    monkeypatch.delenv("REPLAB_DATA", raising=False)
    assert find_dataset("fashion-mnist") == DEBIAN_FASHION_MNIST
    for split, n in (("train", 60_000), ("test", 10_000)):
        images, labels = load_idx_split("fashion-mnist", split, DEBIAN_FASHION_MNIST)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8 and images.max() == 255
        assert np.bincount(labels).tolist() == [n // 10] * 10  # balanced, as published
