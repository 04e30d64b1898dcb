"""The IDX reader: every element type round-trips, and each kind of damaged file is a clear error."""

import gzip
import struct

import numpy as np
import pytest

from replab_fast.data.idx import IDX_DTYPES, IdxFormatError, read_idx, write_idx


@pytest.mark.parametrize("code", sorted(IDX_DTYPES))
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_every_element_type_round_trips_raw_and_gzip(tmp_path, code, suffix):
    dtype = IDX_DTYPES[code].newbyteorder("=")
    array = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    path = write_idx(tmp_path / f"a{suffix}", array)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if suffix else b"\x00\x00")
    back = read_idx(path, ndim=3)
    assert back.dtype == dtype and back.dtype.isnative and back.shape == (2, 3, 5)
    np.testing.assert_array_equal(back, array)
    back[0, 0, 0] = 1  # writable


def test_the_header_is_big_endian_as_in_mnist(tmp_path):
    path = write_idx(tmp_path / "labels", np.array([3, 1, 4], dtype=np.uint8))
    assert path.read_bytes() == b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([3, 1, 4])


def test_compression_is_told_from_the_content_not_the_name(tmp_path):
    path = tmp_path / "images-idx3-ubyte"  # no .gz, but compressed
    write_idx(path, np.zeros((2, 2, 2), np.uint8), compress=True)
    assert read_idx(path).shape == (2, 2, 2)


def _raw(tmp_path, content: bytes, name="bad-idx"):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def _error(path, **kwargs) -> str:
    with pytest.raises(IdxFormatError) as info:
        read_idx(path, **kwargs)
    message = str(info.value)
    assert str(path) in message  # every message names the file
    return message


def test_bad_magic_number(tmp_path):
    assert "bad magic number 0x01000801" in _error(_raw(tmp_path, b"\x01\x00\x08\x01" + b"\x00" * 8))


def test_unknown_element_type(tmp_path):
    assert "unknown element type code 0x07" in _error(_raw(tmp_path, b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"x"))


def test_zero_dimensions(tmp_path):
    assert "0 dimensions" in _error(_raw(tmp_path, b"\x00\x00\x08\x00"))


def test_too_short_for_a_header(tmp_path):
    assert "too short" in _error(_raw(tmp_path, b"\x00\x00"))


def test_truncated_header(tmp_path):
    message = _error(_raw(tmp_path, b"\x00\x00\x08\x03" + struct.pack(">I", 60000)))
    assert "truncated header" in message and "16 header bytes" in message


def test_truncated_data_names_the_shape_and_both_sizes(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((4, 28, 28), np.uint8)).read_bytes()
    message = _error(_raw(tmp_path, good[:-100]))
    assert "truncated" in message and "(4, 28, 28)" in message and "3,152" in message and "3,052" in message


def test_trailing_bytes_are_an_error_too(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros(5, np.uint8)).read_bytes()
    assert "too long" in _error(_raw(tmp_path, good + b"\x00"))


def test_a_compressed_file_is_checked_after_decompression(tmp_path):
    good = write_idx(tmp_path / "good", np.zeros((3, 2, 2), np.uint8)).read_bytes()
    message = _error(_raw(tmp_path, gzip.compress(good[:-1]), "short.gz"))
    assert "truncated" in message and "decompressed file" in message


def test_truncated_gzip_stream(tmp_path):
    whole = write_idx(tmp_path / "good.gz", np.arange(4000, dtype=np.int32)).read_bytes()
    assert "gzip stream is truncated" in _error(_raw(tmp_path, whole[: len(whole) // 2], "cut.gz"))


def test_corrupt_gzip_stream(tmp_path):
    whole = bytearray(write_idx(tmp_path / "good.gz", np.arange(4000, dtype=np.int32)).read_bytes())
    whole[20:40] = b"\xff" * 20
    assert "gzip" in _error(_raw(tmp_path, bytes(whole), "corrupt.gz"))


def test_the_expected_number_of_dimensions_is_checked(tmp_path):
    path = write_idx(tmp_path / "labels", np.zeros(5, np.uint8))
    assert "expected 3-d" in _error(path, ndim=3)


def test_a_missing_file(tmp_path):
    assert "cannot be read" in _error(tmp_path / "nowhere")


def test_write_refuses_what_idx_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="no element type"):
        write_idx(tmp_path / "x", np.zeros(3, np.uint16))
