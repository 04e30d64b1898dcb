"""Grey-level images in the shape and scale each image model takes, as torch datasets.

An :class:`ImageFormat` says what a model's input looks like; :class:`ImageDataset` turns stored
grey images (uint8, any size, 0 = background) into it, one item at a time:

1. scale to [0, 1] (divide by the source's top grey level: 255 for IDX files, 16 for the digits);
2. resize to ``size - 2 * pad`` with ``torch.nn.functional.interpolate`` (bilinear,
   ``align_corners=False``, ``antialias=True``: a weighted mean of neighbouring pixels, so
   values stay in [0, 1]);
3. pad with background to ``size`` (LeNet-5: 28x28 digits centred in 32x32, as the paper pads
   MNIST, Section II-B);
4. map to the model's scale (``ImageFormat.scale``):
   - ``"unit"``: [0, 1], the autoencoders' pixel intensities (their cross-entropy targets);
   - ``"lenet"``: background -0.1, foreground 1.175, LeNet-5's normalization (Section II-B:
     "mean input roughly 0, and the variance roughly 1"), i.e. -0.1 + 1.275 x;
   - ``"centered255"``: AlexNet's "(centered) raw RGB values": 255 x minus the mean image of
     the training split (Section 2), no division by a standard deviation;
5. repeat the grey channel to ``channels`` (AlexNet: 3), and flatten for the MLPs.

Items are float32: images (C, S, S), or (C * S * S,) flattened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["IMAGE_SCALES", "ImageDataset", "ImageFormat", "mean_image", "to_model_input"]

IMAGE_SCALES = ("unit", "lenet", "centered255")
LENET_BACKGROUND, LENET_FOREGROUND = -0.1, 1.175  # LeCun et al. 1998, Section II-B


@dataclass(frozen=True)
class ImageFormat:
    """What a model's image input looks like."""

    size: int  # side S of the model's (square) input
    channels: int = 1  # C; a grey image is repeated on every channel
    pad: int = 0  # background border: the image is resized to S - 2 * pad, then padded
    scale: str = "unit"  # one of IMAGE_SCALES (see the module docstring)
    flatten: bool = False  # items (C * S * S,) instead of (C, S, S)

    def __post_init__(self) -> None:
        if self.scale not in IMAGE_SCALES:
            raise ValueError(f"scale must be one of {', '.join(IMAGE_SCALES)}, got {self.scale!r}")
        if self.channels < 1 or self.pad < 0 or self.size - 2 * self.pad < 1:
            raise ValueError(f"ImageFormat needs channels >= 1, pad >= 0 and size > 2 * pad, got {self}")

    @property
    def content(self) -> int:
        """The side the source image is resized to, before padding."""
        return self.size - 2 * self.pad

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one item."""
        if self.flatten:
            return (self.channels * self.size * self.size,)
        return (self.channels, self.size, self.size)

    def describe(self) -> str:
        resize = f"resized to {self.content}x{self.content}" + (f", padded to {self.size}x{self.size}" if self.pad else "")
        return f"{'x'.join(map(str, self.shape))} float32 ({resize}, scale {self.scale!r})"


def _resized_unit(pixels: Tensor, levels: int, fmt: ImageFormat) -> Tensor:
    """uint8 (N, H, W) -> float32 (N, 1, S, S) in [0, 1], resized and padded."""
    x = pixels.to(torch.float32).unsqueeze(1) / levels  # (N, 1, H, W)
    if tuple(x.shape[-2:]) != (fmt.content, fmt.content):
        x = F.interpolate(x, size=(fmt.content, fmt.content), mode="bilinear", align_corners=False, antialias=True)
    if fmt.pad:
        x = F.pad(x, (fmt.pad,) * 4, value=0.0)  # background
    return x  # (N, 1, S, S)


def mean_image(pixels: np.ndarray, levels: int, fmt: ImageFormat) -> Tensor:
    """The mean over ``pixels`` (N, H, W) of the images at the model's size, times 255: (1, S, S).

    Computed at the source size, then resized: resizing and padding are linear, so this equals
    the mean of the resized images without resizing all of them.
    """
    mean = torch.from_numpy(np.asarray(pixels, dtype=np.float64).mean(axis=0))  # (H, W), in grey levels
    return 255.0 * _resized_unit(mean[None], levels, fmt)[0].to(torch.float32)  # (1, S, S)


def to_model_input(pixels: Tensor, levels: int, fmt: ImageFormat, mean: Optional[Tensor] = None) -> Tensor:
    """Grey images ``pixels`` (N, H, W), 0..levels, as a batch of model inputs (N, *fmt.shape), float32.

    ``mean``: the training split's ``mean_image``, needed by (only) the "centered255" scale.
    """
    x = _resized_unit(pixels, levels, fmt)  # (N, 1, S, S)
    if fmt.scale == "lenet":
        x = LENET_BACKGROUND + (LENET_FOREGROUND - LENET_BACKGROUND) * x
    elif fmt.scale == "centered255":
        if mean is None:
            raise ValueError("the 'centered255' scale subtracts the training split's mean image: pass mean=")
        x = 255.0 * x - mean
    if fmt.channels > 1:
        x = x.repeat(1, fmt.channels, 1, 1)  # (N, C, S, S)
    return x.flatten(1) if fmt.flatten else x


class ImageDataset(Dataset):
    """Stored grey images as model inputs; items ``(image, label)`` or, with
    ``target="image"``, ``(image, image)`` (the autoencoders reconstruct their input).

    ``pixels`` (N, H, W) uint8 in 0..``levels``; ``labels`` (N,) int64 (needed for
    ``target="label"``); ``mean``: the training split's ``mean_image`` for the "centered255" scale.
    Items: image float32 ``fmt.shape``, label an int64 scalar tensor.
    """

    def __init__(
        self,
        pixels: np.ndarray,
        levels: int,
        fmt: ImageFormat,
        *,
        labels: Optional[np.ndarray] = None,
        target: str = "label",
        mean: Optional[Tensor] = None,
    ) -> None:
        if target not in ("label", "image"):
            raise ValueError(f"target must be 'label' or 'image', got {target!r}")
        if pixels.ndim != 3 or pixels.dtype != np.uint8:
            raise ValueError(f"pixels must be (N, H, W) uint8, got {pixels.shape} {pixels.dtype}")
        if target == "label" and (labels is None or len(labels) != len(pixels)):
            raise ValueError("target='label' needs one label per image")
        if fmt.scale == "centered255" and mean is None:
            raise ValueError("the 'centered255' scale subtracts the training split's mean image: pass mean=")
        self.pixels = torch.from_numpy(np.ascontiguousarray(pixels))  # (N, H, W) uint8
        self.labels = None if labels is None else torch.from_numpy(np.asarray(labels, dtype=np.int64))  # (N,)
        self.levels, self.format, self.target, self.mean = levels, fmt, target, mean

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        index = range(len(self))[index]  # negative indices count from the end; out of range: IndexError
        image = to_model_input(self.pixels[index : index + 1], self.levels, self.format, self.mean)[0]
        if self.target == "image":
            return image, image
        return image, self.labels[index]
