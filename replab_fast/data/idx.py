"""Reading IDX files (the MNIST file format), raw or gzip-compressed, with every field checked.

The format (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"), all integers big-endian:

    bytes 0-1   0x00 0x00
    byte  2     the element type: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
                0x0E float64
    byte  3     the number of dimensions n
    then        n unsigned 32-bit sizes, then the elements in C order (the last index fastest)

``read_idx(path)`` returns the array in native byte order and raises :class:`IdxFormatError`,
naming the file and what is wrong, for a file that is not IDX, a truncated or over-long one, or
a gzip stream that is corrupt or cut short. Whether a file is compressed is told from its first
bytes (the gzip magic 0x1f 0x8b), not from its name.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np

__all__ = ["IDX_DTYPES", "IdxFormatError", "read_idx", "write_idx"]

PathLike = Union[str, Path]

# Element type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
GZIP_MAGIC = b"\x1f\x8b"


class IdxFormatError(ValueError):
    """A file that is not a well-formed IDX file; the message names the file and the fault."""


def _file_bytes(path: Path) -> tuple[bytes, bool]:
    """The file's content, decompressed when it is a gzip stream, and whether it was one."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise IdxFormatError(f"{path}: cannot be read ({error.strerror or error})") from None
    if not raw.startswith(GZIP_MAGIC):
        return raw, False
    try:
        return gzip.decompress(raw), True
    except EOFError:
        raise IdxFormatError(
            f"{path}: the gzip stream is truncated (the file ends before the end of the compressed data; "
            f"{len(raw):,} bytes on disk): download or install it again"
        ) from None
    except (gzip.BadGzipFile, zlib.error, OSError) as error:
        raise IdxFormatError(f"{path}: not a valid gzip stream ({error}): download or install it again") from None


def _parse_header(content: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, dims, offset of the first element) from the header; raises on a malformed one."""
    if len(content) < 4:
        raise IdxFormatError(f"{path}: {len(content)} bytes, too short for an IDX header (4 bytes at least)")
    zero, code, ndim = content[:2], content[2], content[3]
    if zero != b"\x00\x00":
        raise IdxFormatError(
            f"{path}: bad magic number 0x{content[:4].hex()}: an IDX file starts with two zero bytes "
            f"(MNIST's images start 0x00000803, its labels 0x00000801)"
        )
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise IdxFormatError(f"{path}: unknown element type code 0x{code:02X} in the magic number (known: {known})")
    if ndim == 0:
        raise IdxFormatError(f"{path}: the magic number says 0 dimensions; an IDX array has at least one")
    offset = 4 + 4 * ndim
    if len(content) < offset:
        raise IdxFormatError(
            f"{path}: truncated header: {ndim} dimensions need {offset} header bytes, the file has {len(content)}"
        )
    dims = struct.unpack(f">{ndim}I", content[4:offset])
    return IDX_DTYPES[code], tuple(dims), offset


def read_idx(path: PathLike, *, ndim: Optional[int] = None) -> np.ndarray:
    """The array stored in the IDX file ``path`` (gzip or raw), native byte order, writable.

    ``ndim``: the number of dimensions the caller expects (3 for images, 1 for labels), checked.
    Raises IdxFormatError for a bad magic number, an unknown type code, a file size that does
    not match its dimensions, or a corrupt or truncated gzip stream.
    """
    path = Path(path)
    content, compressed = _file_bytes(path)
    dtype, dims, offset = _parse_header(content, path)
    if ndim is not None and len(dims) != ndim:
        raise IdxFormatError(f"{path}: holds a {len(dims)}-d array of shape {dims}, expected {ndim}-d")
    expected = offset + math.prod(dims) * dtype.itemsize
    if len(content) != expected:
        what = "truncated" if len(content) < expected else "too long"
        raise IdxFormatError(
            f"{path}: {what}: the header says shape {dims} of {dtype.newbyteorder('=').name}, which needs "
            f"{expected:,} bytes (header included), the {'decompressed ' if compressed else ''}file has "
            f"{len(content):,}"
        )
    array = np.frombuffer(content, dtype=dtype, count=math.prod(dims), offset=offset).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a native-order copy (frombuffer's view is read-only)


def write_idx(path: PathLike, array: np.ndarray, *, compress: Optional[bool] = None) -> Path:
    """Write ``array`` as an IDX file (gzip when ``compress``, default: when the name ends in .gz)."""
    path = Path(path)
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX has no element type for {array.dtype}; use one of {sorted(d.name for d in codes)}")
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"an IDX array has 1 to 255 dimensions, got {array.ndim}")
    header = bytes([0, 0, codes[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    content = header + np.ascontiguousarray(array, dtype=native.newbyteorder(">")).tobytes()
    compress = path.name.endswith(".gz") if compress is None else compress
    path.write_bytes(gzip.compress(content, mtime=0) if compress else content)
    return path
