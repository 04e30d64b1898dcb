"""The checked download: through file:// URLs and a counting opener, never the network."""

import dataclasses
import hashlib
import urllib.request

import pytest

from replab_fast.data import download
from replab_fast.data.download import ChecksumError, DownloadError, download_dataset, download_file, sha256_of
from replab_fast.data.mnist import MNIST_FORMAT_DATASETS, find_dataset, load_idx_split


def _sum(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_url_is_fetched_and_kept_when_its_sum_matches(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 3_000_000)  # more than one chunk
    dest = download_file(source.as_uri(), tmp_path / "out" / "file.bin", _sum(source))
    assert dest.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]  # no temporary file left


def test_a_wrong_sum_keeps_nothing_not_even_the_old_file_is_touched(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"new content")
    dest = tmp_path / "out" / "file.bin"
    dest.parent.mkdir()
    dest.write_bytes(b"old content")
    with pytest.raises(ChecksumError, match="SHA-256 .* expected 0{64}; the file was not kept"):
        download_file(source.as_uri(), dest, "0" * 64)
    assert dest.read_bytes() == b"old content"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]


def test_a_failed_transfer_leaves_no_temporary_file(tmp_path):
    class Broken:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        download_file("http://mirror.invalid/f", tmp_path / "f", "0" * 64, opener=lambda url, timeout: Broken())
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_mnist(tmp_path, monkeypatch, write_idx_folder):
    """MNIST's spec pointed at a file:// mirror of small files, with their sums."""
    mirror = write_idx_folder(tmp_path / "mirror", n_train=12, n_test=5)
    sums = {p.name: _sum(p) for p in mirror.iterdir()}
    spec = dataclasses.replace(MNIST_FORMAT_DATASETS["mnist"], sha256=sums, mirrors=(mirror.as_uri(),))
    monkeypatch.setitem(MNIST_FORMAT_DATASETS, "mnist", spec)
    return mirror


def test_download_dataset_fills_the_cache_where_the_search_path_finds_it(isolated_search_path, small_mnist):
    messages = []
    dest = download_dataset("mnist", log=messages.append)
    assert find_dataset("mnist") == dest == isolated_search_path / "cache" / "replab_fast" / "mnist"
    assert load_idx_split("mnist", "train")[0].shape == (12, 28, 28)
    assert sum(m.startswith("downloading file://") for m in messages) == 4


def test_verified_files_are_not_fetched_again_and_a_damaged_one_is(tmp_path, small_mnist):
    calls = []

    def counting_opener(url, timeout):
        calls.append(url)
        return urllib.request.urlopen(url, timeout=timeout)

    dest = tmp_path / "dest"
    download_dataset("mnist", dest, opener=counting_opener, log=lambda m: None)
    assert len(calls) == 4
    (dest / "train-images-idx3-ubyte.gz").write_bytes(b"damaged")
    download_dataset("mnist", dest, opener=counting_opener, log=lambda m: None)
    assert len(calls) == 5 and calls[-1].endswith("/train-images-idx3-ubyte.gz")
    assert sha256_of(dest / "train-images-idx3-ubyte.gz") == _sum(small_mnist / "train-images-idx3-ubyte.gz")


def test_mirrors_are_tried_in_order_and_all_failures_are_reported(tmp_path, small_mnist):
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    (bad / "train-images-idx3-ubyte.gz").write_bytes(b"not the file")
    dest = download_dataset("mnist", tmp_path / "dest", mirrors=[bad.as_uri(), small_mnist.as_uri()], log=lambda m: None)
    assert find_dataset("mnist", dest) == dest
    with pytest.raises(DownloadError) as info:
        download_dataset("mnist", tmp_path / "dest2", mirrors=[bad.as_uri(), (tmp_path / "none").as_uri()], log=lambda m: None)
    message = str(info.value)
    assert "no mirror delivered train-images-idx3-ubyte.gz" in message
    assert "expected" in message and "No such file" in message  # the checksum and the missing-file failures


def test_the_command_line_reports_a_failure_as_an_error(tmp_path, small_mnist, monkeypatch, capsys):
    assert download.main(["mnist", "--dest", str(tmp_path / "ok")]) == 0
    monkeypatch.setitem(MNIST_FORMAT_DATASETS, "mnist",
                        dataclasses.replace(MNIST_FORMAT_DATASETS["mnist"], mirrors=((tmp_path / "none").as_uri(),)))  # fmt: skip
    assert download.main(["mnist", "--dest", str(tmp_path / "ko")]) == 1
    assert "error: no mirror delivered" in capsys.readouterr().err


def test_an_unknown_dataset(tmp_path):
    with pytest.raises(KeyError, match="known: fashion-mnist, mnist"):
        download_dataset("cifar10", tmp_path)
