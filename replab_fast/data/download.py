"""Downloading a dataset's files into the user cache, each checked against its SHA-256.

Each file is written to a temporary file beside its destination, its SHA-256 computed while it
streams in, and renamed into place only when the sum matches, so the destination holds either
nothing or a verified file (never a partial one). A file already present with the right sum
is not downloaded again. Mirrors are tried in order; when all fail, the error lists what each
one answered.

    python -m replab_fast.data.download fashion-mnist      # into ~/.cache/replab_fast/fashion-mnist
    python -m replab_fast.data.download mnist --dest DIR

``make data`` installs Debian's ``dataset-fashion-mnist`` where apt and root are available, and
runs the first command otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Optional, Sequence

from .mnist import ALL_FILES, MNIST_FORMAT_DATASETS, IdxDataset, cache_dir

__all__ = ["ChecksumError", "DownloadError", "download_dataset", "download_file", "sha256_of"]

Opener = Callable[..., object]  # urllib.request.urlopen's signature: (url, timeout=...) -> a readable response
CHUNK = 1 << 20


class ChecksumError(ValueError):
    """A downloaded or cached file whose SHA-256 is not the expected one."""


class DownloadError(OSError):
    """No mirror delivered a file with the expected SHA-256."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_file(
    url: str, dest: Path, sha256: str, *, opener: Opener = urllib.request.urlopen, timeout: float = 60.0
) -> Path:
    """Fetch ``url`` to ``dest``: through a temporary file, renamed only once its SHA-256 is ``sha256``.

    Raises ChecksumError for a wrong sum (nothing is left behind) and whatever ``opener`` raises
    (urllib.error.URLError, OSError) for a failed transfer.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, opener(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != sha256:
            raise ChecksumError(f"{url}: SHA-256 {actual}, expected {sha256}; the file was not kept")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _fetch_one(name: str, sha256: str, dest: Path, mirrors: Sequence[str], opener: Opener, log) -> None:
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        log(f"downloading {url}")
        try:
            download_file(url, dest, sha256, opener=opener)
            return
        except (ChecksumError, urllib.error.URLError, OSError, ValueError) as error:
            failures.append(f"  {url}: {error}")
    raise DownloadError(f"no mirror delivered {name} with SHA-256 {sha256}:\n" + "\n".join(failures))


def download_dataset(
    dataset: str,
    dest: Optional[Path] = None,
    *,
    mirrors: Optional[Sequence[str]] = None,
    opener: Opener = urllib.request.urlopen,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> Path:
    """Download the four IDX files of ``dataset`` ("fashion-mnist" or "mnist") into ``dest``
    (default: the user cache, see ``mnist.cache_dir``), each checked against its SHA-256.

    Files already there with the right sum are kept; a file with a wrong sum is replaced.
    ``mirrors`` overrides the dataset's list of base URLs (tests use file:// URLs). Returns ``dest``.
    """
    spec: IdxDataset = MNIST_FORMAT_DATASETS.get(dataset)  # type: ignore[assignment]
    if spec is None:
        raise KeyError(f"no download for dataset {dataset!r}; known: {', '.join(MNIST_FORMAT_DATASETS)}")
    dest = Path(dest) if dest is not None else cache_dir(dataset)
    for name in (f"{file}.gz" for file in ALL_FILES):  # train images, train labels, test images, test labels
        sha256, target = spec.sha256[name], dest / name
        if target.is_file():
            if sha256_of(target) == sha256:
                log(f"{target}: present, SHA-256 verified")
                continue
            log(f"{target}: SHA-256 does not match; downloading it again")
        _fetch_one(name, sha256, target, mirrors or spec.mirrors, opener, log)
    return dest


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m replab_fast.data.download", description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=sorted(MNIST_FORMAT_DATASETS))
    parser.add_argument("--dest", type=Path, default=None, help="folder for the files (default: the user cache)")
    args = parser.parse_args(argv)
    try:
        dest = download_dataset(args.dataset, args.dest)
    except (DownloadError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"{args.dataset}: {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
