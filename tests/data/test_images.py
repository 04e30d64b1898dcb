"""Images in each model's size and scale: resize, pad, LeNet-5's and AlexNet's scales, the mean image."""

import numpy as np
import pytest
import torch

from replab_fast.data.images import ImageDataset, ImageFormat, mean_image, to_model_input


def _pixels(n=6, side=8, levels=16, seed=0):
    return np.random.default_rng(seed).integers(0, levels + 1, (n, side, side), dtype=np.uint8)


def test_unit_scale_resizes_and_stays_in_0_1():
    x = to_model_input(torch.from_numpy(_pixels()), 16, ImageFormat(28))
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_same_size_is_not_resampled():
    pixels = _pixels(side=28, levels=255)
    x = to_model_input(torch.from_numpy(pixels), 255, ImageFormat(28))
    torch.testing.assert_close(x[:, 0], torch.from_numpy(pixels).float() / 255, rtol=0, atol=0)


def test_lenet_pads_with_background_and_maps_ink_to_1_175():
    full_ink = np.full((1, 28, 28), 255, np.uint8)
    x = to_model_input(torch.from_numpy(full_ink), 255, ImageFormat(32, pad=2, scale="lenet"))[0, 0]  # (32, 32)
    assert x.shape == (32, 32)
    torch.testing.assert_close(x[2:30, 2:30], torch.full((28, 28), 1.175))
    border = torch.cat([x[:2].flatten(), x[-2:].flatten(), x[:, :2].flatten(), x[:, -2:].flatten()])
    torch.testing.assert_close(border, torch.full_like(border, -0.1))


def test_the_mean_image_equals_the_mean_of_the_resized_images():
    pixels = _pixels(n=20)
    fmt = ImageFormat(67, channels=3, scale="centered255")
    mean = mean_image(pixels, 16, fmt)  # (1, 67, 67)
    unit = to_model_input(torch.from_numpy(pixels), 16, ImageFormat(67))  # (20, 1, 67, 67) in [0, 1]
    torch.testing.assert_close(mean, 255 * unit.mean(0), rtol=1e-5, atol=1e-3)
    centred = to_model_input(torch.from_numpy(pixels), 16, fmt, mean)  # (20, 3, 67, 67)
    assert centred.shape == (20, 3, 67, 67)
    torch.testing.assert_close(centred[:, 0], centred[:, 2])  # grey on every channel
    assert abs(float(centred.mean())) < 1e-2 and float(centred.abs().max()) > 50  # centred, raw 0-255 scale


def test_flatten_gives_the_mlp_input():
    fmt = ImageFormat(28, flatten=True)
    assert fmt.shape == (784,)
    assert to_model_input(torch.from_numpy(_pixels()), 16, fmt).shape == (6, 784)


def test_dataset_items():
    pixels, labels = _pixels(), np.arange(6)
    images = ImageDataset(pixels, 16, ImageFormat(32, pad=2, scale="lenet"), labels=labels)
    x, y = images[-1]
    assert x.shape == (1, 32, 32) and y.dtype == torch.int64 and int(y) == 5
    with pytest.raises(IndexError):
        images[6]
    x, target = ImageDataset(pixels, 16, ImageFormat(28), target="image")[0]
    assert target is x


def test_bad_formats_and_inputs():
    with pytest.raises(ValueError, match="scale must be one of"):
        ImageFormat(28, scale="imagenet")
    with pytest.raises(ValueError, match="size > 2 \\* pad"):
        ImageFormat(4, pad=2)
    with pytest.raises(ValueError, match="mean image"):
        ImageDataset(_pixels(), 16, ImageFormat(67, 3, scale="centered255"), labels=np.arange(6))
    with pytest.raises(ValueError, match="one label per image"):
        ImageDataset(_pixels(), 16, ImageFormat(28))
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(_pixels().astype(np.float32), 16, ImageFormat(28), target="image")
