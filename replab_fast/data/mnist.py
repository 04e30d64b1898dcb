"""MNIST and Fashion-MNIST: their files, where they are looked up, and loading a split.

Both datasets are four IDX files of the same names (60,000 training and 10,000 test images of
28x28 uint8 pixels, 0 = background, and their labels 0-9). Where a dataset's folder is looked
for, in order (``search_path``):

1. the folder the caller names (``data=``, the command line's ``--data``): only there, if given;
2. ``$REPLAB_DATA/<dataset>/``, when ``REPLAB_DATA`` is set;
3. ``/usr/share/datasets/fashion-mnist/`` for Fashion-MNIST: where Debian's package
   ``dataset-fashion-mnist`` installs it (``apt-get install dataset-fashion-mnist``);
4. the user cache, ``${XDG_CACHE_HOME:-~/.cache}/replab_fast/<dataset>/``, where
   ``python -m replab_fast.data.download <dataset>`` puts it.

A folder holds the dataset when it has all four files, each gzip-compressed (``<name>.gz``) or
raw (``<name>``). None found: :class:`DatasetNotFoundError` names every place looked in and the
command that gets the files (``make data``).

Checksums (SHA-256 of each ``.gz`` file as the official mirrors serve it; ``download`` checks
them):

- Fashion-MNIST: the two label files' sums were computed here from the copies in the upstream
  repository (github.com/zalandoresearch/fashion-mnist, data/fashion/), whose MD5s equal the
  official MD5s of upstream's README. The two image files were absent from the copy of the
  repository at hand (large files left out), so their sums are taken from torchvision's dataset
  table (pytorch/vision, torchvision/prototype/datasets/_builtin/mnist.py), which agrees on the
  label files, and were not recomputed here. Debian's package holds the same data recompressed
  (other gzip headers; the decompressed label files were checked here to be identical), so its
  .gz files have other sums: they are read where installed, not downloaded, and not checked.
- MNIST: torchvision's table (the same file); not verified here: no copy of MNIST was at hand.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from .idx import IdxFormatError, read_idx

__all__ = [
    "DatasetNotFoundError",
    "IdxDataset",
    "MNIST_FORMAT_DATASETS",
    "cache_dir",
    "find_dataset",
    "load_idx_split",
    "search_path",
]

PathLike = Union[str, Path]
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FILE_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = tuple(name for pair in FILE_NAMES.values() for name in pair)


@dataclass(frozen=True)
class IdxDataset:
    """An MNIST-format dataset: its name, classes, where it is installed, its mirrors and sums."""

    name: str  # "fashion-mnist", "mnist"
    title: str  # for messages
    classes: tuple[str, ...]  # class names, index = label
    system_folders: tuple[Path, ...]  # where a system package installs it
    install_hint: str  # the command that gets it
    mirrors: tuple[str, ...]  # base URLs, tried in order
    sha256: dict[str, str]  # .gz file name -> SHA-256 as served (see the module docstring)


FASHION_MNIST = IdxDataset(
    name="fashion-mnist",
    title="Fashion-MNIST",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    system_folders=(DEBIAN_FASHION_MNIST,),
    install_hint="`make data` (as root with apt: `apt-get install dataset-fashion-mnist`; otherwise it runs "
    "`python -m replab_fast.data.download fashion-mnist`)",
    mirrors=(
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",  # the download links of upstream's README
    ),
    sha256={
        # computed here from the upstream repository's copies (MD5 = the README's official MD5):
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        # from torchvision's table, not recomputed here (upstream MD5s 8d4fb7e6..., bef4ecab...):
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    },
)

MNIST = IdxDataset(
    name="mnist",
    title="MNIST",
    classes=tuple(str(d) for d in range(10)),
    system_folders=(),  # Debian packages no MNIST
    install_hint="`python -m replab_fast.data.download mnist`",
    mirrors=(
        "https://ossci-datasets.s3.amazonaws.com/mnist",  # torchvision's mirror
        "http://yann.lecun.com/exdb/mnist",  # the original site
    ),
    sha256={
        # from torchvision's table, not verified here (no copy of MNIST was at hand):
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
)

MNIST_FORMAT_DATASETS: dict[str, IdxDataset] = {d.name: d for d in (FASHION_MNIST, MNIST)}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset in none of the places looked in; the message lists them and how to get it."""


def _spec(dataset: str) -> IdxDataset:
    try:
        return MNIST_FORMAT_DATASETS[dataset]
    except KeyError:
        raise KeyError(f"unknown MNIST-format dataset {dataset!r}; known: {', '.join(MNIST_FORMAT_DATASETS)}") from None


def cache_dir(dataset: str) -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/replab_fast/<dataset>``."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "replab_fast" / dataset


def search_path(dataset: str, data: Optional[PathLike] = None) -> list[Path]:
    """The folders looked in for ``dataset``, in order: only ``data`` when it is given."""
    spec = _spec(dataset)
    if data is not None:
        return [Path(data).expanduser()]
    folders = []
    if os.environ.get("REPLAB_DATA"):
        folders.append(Path(os.environ["REPLAB_DATA"]).expanduser() / dataset)
    folders.extend(spec.system_folders)
    folders.append(cache_dir(dataset))
    return folders


def _file_in(folder: Path, name: str) -> Optional[Path]:
    """``folder/name.gz`` or ``folder/name``, whichever exists (the .gz first)."""
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _missing(folder: Path) -> list[str]:
    return [name for name in ALL_FILES if _file_in(folder, name) is None]


def find_dataset(dataset: str, data: Optional[PathLike] = None) -> Path:
    """The first folder of ``search_path(dataset, data)`` that holds all four files.

    Raises DatasetNotFoundError naming every folder looked in (and, for one that holds some of
    the files, which are missing) and the command that gets the dataset.
    """
    spec = _spec(dataset)
    looked = []
    for folder in search_path(dataset, data):
        missing = _missing(folder)
        if not missing:
            return folder
        if not folder.is_dir():
            looked.append(f"  {folder} ({'a file, not a folder' if folder.is_file() else 'no such folder'})")
        else:
            looked.append(f"  {folder} (missing: {', '.join(m + '[.gz]' for m in missing)})")
    if data is not None:
        raise DatasetNotFoundError(
            f"{spec.title}: the folder given as data= does not hold the four IDX files:\n" + "\n".join(looked)
        )
    if not os.environ.get("REPLAB_DATA"):
        looked.insert(0, "  $REPLAB_DATA/<dataset> (REPLAB_DATA is not set)")
    raise DatasetNotFoundError(
        f"{spec.title} not found. Looked in, in order:\n" + "\n".join(looked) + f"\nGet it with {spec.install_hint}, "
        f"or pass the folder that holds {', '.join(ALL_FILES)} (.gz or raw) as data=."
    )


def load_idx_split(dataset: str, split: str, data: Optional[PathLike] = None) -> tuple[np.ndarray, np.ndarray]:
    """The ``split`` ("train" or "test") of ``dataset``: images (N, 28, 28) uint8 and labels (N,) int64.

    Raises DatasetNotFoundError when the files are nowhere, IdxFormatError when one is malformed
    or images and labels do not belong together.
    """
    spec = _spec(dataset)
    if split not in FILE_NAMES:
        raise ValueError(f"{spec.title} has the splits {', '.join(FILE_NAMES)} (validation is carved from train), got {split!r}")
    folder = find_dataset(dataset, data)
    images_name, labels_name = FILE_NAMES[split]
    images_path, labels_path = _file_in(folder, images_name), _file_in(folder, labels_name)
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise IdxFormatError(f"{folder}: {spec.title} stores uint8 images and labels, got {images.dtype} and {labels.dtype}")
    if len(images) != len(labels):
        raise IdxFormatError(f"{folder}: {images_path.name} holds {len(images)} images but {labels_path.name} {len(labels)} labels")
    if labels.size and int(labels.max()) >= len(spec.classes):
        raise IdxFormatError(f"{labels_path}: label {int(labels.max())} out of range for {len(spec.classes)} classes")
    return images, labels.astype(np.int64)
