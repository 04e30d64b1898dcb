"""Any folder of labelled images (ImageNet's layout, or one subfolder per class) for AlexNet.

Two layouts, read with Pillow (JPEG, PNG, BMP, GIF, WebP, PPM, TIFF; any size, grey or colour):

- ``ROOT/train/<class>/*`` and ``ROOT/val/<class>/*`` (ImageNet's, and ``torchvision``'s
  ``ImageFolder`` per split): ``val`` is the test split (ImageNet's test labels are not public,
  and the paper reports its validation set), ``ROOT/test/<class>/*`` where it exists; the
  validation split is carved from ``train``: ``VALIDATION_FRACTION`` of it, at most
  ``VALIDATION_MAX`` images, by a seeded permutation;
- ``ROOT/<class>/*``: a seeded, stratified 80/10/10 split, as for the digits.

Classes are the subfolder names in sorted order (label = index). Preprocessing follows
Krizhevsky et al. 2012, Section 2 and 4.1, at the model's input side ``S`` (227 for AlexNet):

1. rescale so that the shorter side is ``B = round(S * 256 / 227)`` (256 at S = 227), then crop
   the central ``B x B`` square;
2. subtract the mean image (``B x B``, per pixel and channel, 0..255) of the training split. The
   paper averages all 1.2M images; here it is the mean of ``MEAN_SAMPLE`` training images drawn
   by a seeded permutation (all of them in a smaller folder), so a run starts in seconds;
3. training split: a random ``S x S`` crop and a horizontal flip with probability 1/2. The draw
   of image ``i`` in epoch ``e`` comes from a generator seeded with (seed, i, e): items are
   looked up as ``dataset[(i, e)]`` (``BatchStream(keyed=True)``), so an interrupted run resumed
   from its checkpoint draws the same crops, with or without loader workers;
   validation and test: the central ``S x S`` crop (the paper averages ten crops, Sec. 4.1).

Items: ``(image, label)``, image float32 (C, S, S) in 0..255 minus the mean, C = 3 (RGB) or
1 (the model's ``in_channels``: grey), label an int64 scalar tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .splits import SPLITS, holdout_split, stratified_split

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "ImageFolderSplits", "image_folder_datasets", "is_image_folder",
           "scan_image_folder"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
FOLDER_FRACTIONS = (0.8, 0.1, 0.1)  # the one-folder-per-class layout: train, val, test
VALIDATION_FRACTION, VALIDATION_MAX = 0.02, 10_000  # carved from train/ in the ImageNet layout
MEAN_SAMPLE = 1024  # training images averaged into the mean image
PAPER_SIDE, PAPER_BASE = 227, 256  # AlexNet's crop inside the 256 x 256 rescaled image


@dataclass
class ImageFolderSplits:
    """The files of each split, their labels, the class names and where they came from."""

    files: dict[str, list[Path]]  # split -> image paths
    labels: dict[str, np.ndarray]  # split -> (N,) int64
    classes: tuple[str, ...]
    layout: str  # how the splits were made, in words


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_classes(root: Path, classes: Optional[tuple[str, ...]] = None) -> tuple[tuple[str, ...], list[Path], np.ndarray]:
    """(class names, files, labels) of ``root/<class>/*``; ``classes``: the names train/ defined."""
    folders = {p.name: p for p in _class_folders(root)}
    names = tuple(folders) if classes is None else classes
    unknown = sorted(set(folders) - set(names))
    if unknown:
        raise ValueError(f"{root} has class folders that train/ lacks: {', '.join(unknown[:5])}")
    files, labels = [], []
    for label, name in enumerate(names):
        found = _images_in(folders[name]) if name in folders else []
        if not found and classes is None:
            raise ValueError(f"class folder {folders[name]} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
    if len(names) < 2:
        raise ValueError(f"{root} needs at least two class folders (ROOT/<class>/image files), found {len(names)}")
    if not files:
        raise ValueError(f"{root} holds no image file in its class folders")
    return names, files, np.asarray(labels, dtype=np.int64)


def is_image_folder(path: Union[str, Path]) -> bool:
    """Whether ``path`` is a folder in one of the two layouts (it has subfolders and no IDX file)."""
    path = Path(path)
    if not path.is_dir() or any("ubyte" in p.name for p in path.iterdir()):
        return False
    return bool(_class_folders(path))


def scan_image_folder(root: Union[str, Path], seed: int = 0) -> ImageFolderSplits:
    """The splits of the image folder ``root`` (see the module docstring for the two layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist: give ROOT/<class>/* or ROOT/train/<class>/* "
                                "with ROOT/val/<class>/*")  # fmt: skip
    if (root / "train").is_dir():
        if not (root / "val").is_dir():
            raise ValueError(f"{root} has train/ but no val/: the ImageNet layout needs both (val/ is the test split)")
        classes, train_files, train_labels = _read_classes(root / "train")
        _, test_files, test_labels = _read_classes(root / ("test" if (root / "test").is_dir() else "val"), classes)
        n_val = min(VALIDATION_MAX, max(1, round(VALIDATION_FRACTION * len(train_files))))
        kept, held = holdout_split(len(train_files), n_val, seed)
        files = {"train": [train_files[i] for i in kept], "val": [train_files[i] for i in held], "test": test_files}
        labels = {"train": train_labels[kept], "val": train_labels[held], "test": test_labels}
        test = "test/" if (root / "test").is_dir() else "val/"
        layout = f"train/ ({len(held)} images held out for validation, seeded) and {test} as the test split"
        return ImageFolderSplits(files, labels, classes, layout)
    classes, all_files, all_labels = _read_classes(root)
    smallest = min(round(f * len(all_files)) for f in FOLDER_FRACTIONS)
    if smallest < len(classes) or np.bincount(all_labels).min() < 3:
        raise ValueError(f"{root}: {len(all_files)} images in {len(classes)} classes are too few for a stratified "
                         "80/10/10 split (every split needs every class: at least 10 images per class); add "
                         "images, or give ROOT/train/<class>/* and ROOT/val/<class>/*")  # fmt: skip
    index = stratified_split(all_labels, FOLDER_FRACTIONS, seed)
    files = {s: [all_files[i] for i in index[s]] for s in SPLITS}
    return ImageFolderSplits(files, {s: all_labels[index[s]] for s in SPLITS}, classes,
                             "one folder per class, split 80/10/10 stratified (seeded)")  # fmt: skip


def base_side(size: int) -> int:
    """The side the images are rescaled and centre-cropped to before the S x S crop."""
    return max(size, round(size * PAPER_BASE / PAPER_SIDE))


def load_base_image(path: Path, base: int, channels: int) -> Tensor:
    """``path`` as float32 (C, B, B) in 0..255: shorter side rescaled to ``base``, centre-cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB" if channels == 3 else "L")
            width, height = image.size
            scale = base / min(width, height)
            size = (max(base, round(width * scale)), max(base, round(height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
            left, top = (size[0] - base) // 2, (size[1] - base) // 2
            pixels = np.asarray(image.crop((left, top, left + base, top + base)), dtype=np.float32)
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot read image {path}: {error}; remove or replace the file") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)  # (C, B, B)


def mean_base_image(files: list[Path], base: int, channels: int, seed: int) -> Tensor:
    """The mean of up to MEAN_SAMPLE of ``files`` (a seeded sample), each as ``load_base_image``."""
    chosen = np.sort(np.random.default_rng(seed).permutation(len(files))[:MEAN_SAMPLE])
    total = torch.zeros(channels, base, base, dtype=torch.float64)
    for i in chosen:
        total += load_base_image(files[i], base, channels)
    return (total / len(chosen)).to(torch.float32)  # (C, B, B)


class ImageFolderDataset(Dataset):
    """One split of an image folder as AlexNet's inputs (see the module docstring).

    ``augment``: the training split's random crops and flips, drawn per (seed, index, epoch);
    ``dataset[i]`` is ``dataset[(i, 0)]``. Without it: the central crop.
    """

    keyed_by_epoch = True  # BatchStream(keyed=True) passes (index, epoch)

    def __init__(self, files: list[Path], labels: np.ndarray, size: int, mean: Tensor, *, augment: bool,
                 seed: int = 0) -> None:  # fmt: skip
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files, self.labels = list(files), torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.size, self.base, self.mean = size, mean.shape[-1], mean  # mean (C, B, B)
        self.augment, self.seed = augment, seed
        if self.base < size:
            raise ValueError(f"the mean image is {self.base}x{self.base}, smaller than the {size}x{size} crop")

    def __len__(self) -> int:
        return len(self.files)

    def _crop_and_flip(self, index: int, epoch: int) -> tuple[int, int, bool]:
        room = self.base - self.size
        if not self.augment:
            return room // 2, room // 2, False
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + index) * 1_000_033 + epoch)
        top, left = (int(v) for v in torch.randint(0, room + 1, (2,), generator=g))
        return top, left, bool(torch.rand((), generator=g) < 0.5)

    def __getitem__(self, key: Union[int, tuple[int, int]]) -> tuple[Tensor, Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        index = range(len(self))[index]  # negative indices count from the end; out of range: IndexError
        image = load_base_image(self.files[index], self.base, self.mean.shape[0]) - self.mean  # (C, B, B)
        top, left, flip = self._crop_and_flip(index, epoch)
        image = image[:, top : top + self.size, left : left + self.size]  # (C, S, S)
        if flip:
            image = image.flip(-1)
        return image.contiguous(), self.labels[index]


def image_folder_datasets(scanned: ImageFolderSplits, size: int, channels: int, seed: int = 0
                          ) -> dict[str, ImageFolderDataset]:  # fmt: skip
    """The three ImageFolderDatasets of a scanned folder (the mean image from its training split)."""
    if channels not in (1, 3):
        raise ValueError(f"image folders give grey (1) or RGB (3) images, the model takes {channels} channels")
    mean = mean_base_image(scanned.files["train"], base_side(size), channels, seed)
    datasets = {s: ImageFolderDataset(scanned.files[s], scanned.labels[s], size, mean, augment=s == "train", seed=seed)
                for s in SPLITS}  # fmt: skip
    return datasets
