"""Tests for replab_fast.models.alexnet (Krizhevsky, Sutskever & Hinton 2012)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from replab_fast import count_parameters, create_model, get_spec, list_models
from replab_fast.models.alexnet import (
    CENTERED_PIXEL_STD,
    PAPER_PARAM_COUNT,
    AlexNet,
    AlexNetConfig,
    LocalResponseNorm,
)

PRESETS = ["alexnet", "alexnet-10class"]


@pytest.fixture(scope="module")
def small_model() -> AlexNet:
    """The demo preset (10 classes, 227x227) in eval mode; built once (57M parameters)."""
    torch.manual_seed(0)
    model = create_model("alexnet-10class")
    return model.eval()


def _images(batch: int, size: int = 227, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return CENTERED_PIXEL_STD * torch.randn(batch, channels, size, size, generator=g)


# ----------------------------------------------------------------------------------- counts


def test_paper_parameter_count_is_exact() -> None:
    model = create_model("alexnet", device="meta")
    assert count_parameters(model) == 60_965_224 == PAPER_PARAM_COUNT
    assert get_spec("alexnet").paper_param_count == 60_965_224


@pytest.mark.parametrize(
    "preset, overrides, expected",
    [
        ("alexnet", {}, 60_965_224),
        ("alexnet-10class", {}, 56_909_194),
        # One tower (groups=1): conv2, conv4, conv5 see all input maps, twice their weights:
        # + 307,200 + 663,552 + 442,368 = + 1,413,120.
        ("alexnet", {"groups": 1}, 62_378_344),
        # image_size 67: pool5 is 1x1, so FC6 has 256 * 4096 weights, not 9216 * 4096 (- 36,700,160).
        ("alexnet-10class", {"image_size": 67}, 20_209_034),
    ],
)
def test_parameter_count_matches_closed_form(preset: str, overrides: dict, expected: int) -> None:
    model = create_model(preset, device="meta", **overrides)
    assert count_parameters(model) == expected
    assert model.config.num_parameters() == expected


def test_every_preset_builds_on_meta() -> None:
    assert sorted(list_models("alexnet")) == sorted(PRESETS)
    for name in PRESETS:
        model = create_model(name, device="meta")
        assert all(p.device.type == "meta" for p in model.parameters())


# ----------------------------------------------------------------------------------- shapes


def test_per_layer_output_shapes(small_model: AlexNet) -> None:
    # Figure 2 of the paper: 55 -> 27 -> 27 -> 13 -> 13 -> 13 -> 13 -> 6, per layer.
    expected = {
        "conv1": (2, 96, 55, 55),
        "lrn1": (2, 96, 55, 55),
        "pool1": (2, 96, 27, 27),
        "conv2": (2, 256, 27, 27),
        "pool2": (2, 256, 13, 13),
        "conv3": (2, 384, 13, 13),
        "conv4": (2, 384, 13, 13),
        "conv5": (2, 256, 13, 13),
        "pool5": (2, 256, 6, 6),
        "fc6": (2, 4096),
        "fc7": (2, 4096),
        "fc8": (2, 10),
    }
    seen: dict[str, tuple[int, ...]] = {}
    layers = {**dict(small_model.features.named_children()), **dict(small_model.classifier.named_children())}
    handles = [
        layers[name].register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape)))
        for name in expected
    ]
    try:
        with torch.no_grad():
            logits = small_model(_images(2))
    finally:
        for h in handles:
            h.remove()
    assert seen == expected
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_paper_preset_output_shape_on_meta() -> None:
    model = create_model("alexnet", device="meta")
    logits = model(torch.empty(3, 3, 227, 227, device="meta"))
    assert logits.shape == (3, 1000)


def test_make_batch_and_loss(small_model: AlexNet) -> None:
    spec = get_spec("alexnet-10class")
    (images,), labels = spec.make_batch(small_model, 2, generator=torch.Generator().manual_seed(1))
    assert images.shape == (2, 3, 227, 227) and images.dtype == torch.float32
    assert labels.shape == (2,) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) < 10
    # Mean-centred raw pixel scale (see CENTERED_PIXEL_STD).
    assert images.std().item() == pytest.approx(CENTERED_PIXEL_STD, rel=0.02)
    with torch.no_grad():
        loss = spec.loss(small_model, (images,), labels)
        expected = nn.functional.cross_entropy(small_model(images), labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ----------------------------------------------------------------------------------- layout


def test_layer_layout_and_groups(small_model: AlexNet) -> None:
    f = small_model.features
    assert [type(m) for m in f] == [
        nn.Conv2d, nn.ReLU, LocalResponseNorm, nn.MaxPool2d,
        nn.Conv2d, nn.ReLU, LocalResponseNorm, nn.MaxPool2d,
        nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.MaxPool2d,
    ]  # fmt: skip
    assert [type(m) for m in small_model.classifier] == [
        nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear
    ]  # fmt: skip
    groups = {name: m.groups for name, m in f.named_children() if isinstance(m, nn.Conv2d)}
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    for pool in (f.pool1, f.pool2, f.pool5):
        assert (pool.kernel_size, pool.stride) == (3, 2)  # overlapping pooling
    assert small_model.classifier.drop6.p == small_model.classifier.drop7.p == 0.5


def test_grouped_conv_keeps_the_two_gpu_halves_apart(small_model: AlexNet) -> None:
    # conv2's first 128 kernels ("GPU 1") see only the first 48 input maps; conv3 sees all 256.
    conv2, conv3 = small_model.features.conv2, small_model.features.conv3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 96, 9, 9, generator=g)
    x_other_half = x.clone()
    x_other_half[:, 48:] = torch.randn(1, 48, 9, 9, generator=g)
    y = torch.randn(1, 256, 9, 9, generator=g)
    y_other_half = y.clone()
    y_other_half[:, 128:] = torch.randn(1, 128, 9, 9, generator=g)
    with torch.no_grad():
        a, b = conv2(x), conv2(x_other_half)
        assert torch.equal(a[:, :128], b[:, :128])
        assert not torch.allclose(a[:, 128:], b[:, 128:])
        assert not torch.allclose(conv3(y)[:, :192], conv3(y_other_half)[:, :192])


def test_dropout_only_in_train_mode(small_model: AlexNet) -> None:
    x = _images(1, seed=3)
    with torch.no_grad():
        assert torch.equal(small_model(x), small_model(x))  # eval: deterministic
        small_model.train()
        try:
            torch.manual_seed(0)
            a = small_model(x)
            b = small_model(x)
        finally:
            small_model.eval()
    assert not torch.allclose(a, b)


# ----------------------------------------------------------------------------------- init


def test_paper_initialization(small_model: AlexNet) -> None:
    # Section 5: weights N(0, 0.01^2); biases 1 in conv2, conv4, conv5, FC6, FC7; 0 elsewhere.
    expected_bias = {"conv1": 0.0, "conv2": 1.0, "conv3": 0.0, "conv4": 1.0, "conv5": 1.0,
                     "fc6": 1.0, "fc7": 1.0, "fc8": 0.0}  # fmt: skip
    layers = {**dict(small_model.features.named_children()), **dict(small_model.classifier.named_children())}
    for name, bias_value in expected_bias.items():
        layer = layers[name]
        assert torch.equal(layer.bias, torch.full_like(layer.bias, bias_value)), name
        w = layer.weight.detach().double().flatten()
        n = w.numel()
        # Sample std of n Gaussians has relative standard error 1/sqrt(2n); allow 5 of them.
        assert w.std().item() == pytest.approx(0.01, rel=5 / math.sqrt(2 * n)), name
        assert abs(w.mean().item()) < 5 * 0.01 / math.sqrt(n), name
        # Gaussian, not uniform: about 31.7% of samples lie beyond one standard deviation.
        beyond = (w.abs() > 0.01).double().mean().item()
        assert beyond == pytest.approx(0.3173, abs=5 * math.sqrt(0.3173 * 0.6827 / n)), name


def test_reset_parameters_restores_the_paper_init() -> None:
    torch.manual_seed(0)
    model = create_model("alexnet-10class", image_size=67)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-3, 3)
    model.reset_parameters()
    assert torch.equal(model.features.conv2.bias, torch.ones(256))
    assert torch.equal(model.classifier.fc8.bias, torch.zeros(10))
    assert model.classifier.fc7.weight.std().item() == pytest.approx(0.01, rel=0.01)


# ----------------------------------------------------------------------------------- LRN


def _lrn_paper_loop(a: torch.Tensor, n: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """The paper's formula written out channel by channel (independent reference)."""
    N = a.shape[1]
    out = torch.empty_like(a)
    for i in range(N):
        lo, hi = max(0, i - n // 2), min(N - 1, i + n // 2)
        s = (a[:, lo : hi + 1] ** 2).sum(dim=1)
        out[:, i] = a[:, i] / (k + alpha * s) ** beta
    return out


@pytest.mark.parametrize("channels", [1, 3, 7, 96])
@pytest.mark.parametrize("size", [1, 3, 5, 7])
def test_lrn_matches_paper_formula_and_torch(channels: int, size: int) -> None:
    g = torch.Generator().manual_seed(channels * 10 + size)
    # Scale 40 so alpha * sum a^2 is comparable to k and the normalization matters.
    a = 40 * torch.randn(2, channels, 5, 6, generator=g, dtype=torch.float64)
    ours = LocalResponseNorm(size, alpha=1e-4, beta=0.75, k=2.0)(a)
    torch_lrn = nn.LocalResponseNorm(size, alpha=1e-4 * size, beta=0.75, k=2.0)(a)
    paper = _lrn_paper_loop(a, size, 1e-4, 0.75, 2.0)
    torch.testing.assert_close(ours, paper, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, torch_lrn, rtol=1e-12, atol=1e-12)


def test_lrn_alpha_is_not_divided_by_n() -> None:
    a = 40 * torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    ours = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(a)
    torch_same_alpha = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(a)
    assert (ours - torch_same_alpha).abs().max() > 1e-2


def test_lrn_fp32_and_gradient_match_torch() -> None:
    g = torch.Generator().manual_seed(4)
    a = (30 * torch.randn(2, 11, 6, 5, generator=g)).requires_grad_()
    a_ref = a.detach().clone().requires_grad_()
    ours = LocalResponseNorm(5)(a)
    ref = nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)(a_ref)
    # fp32: values are O(30), a few ulps of that.
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    w = torch.randn(ours.shape, generator=g)
    (ours * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(a.grad, a_ref.grad, rtol=1e-5, atol=1e-6)
    x64 = (30 * torch.randn(1, 6, 3, 3, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(LocalResponseNorm(3), (x64,))


def test_lrn_rejects_even_size_and_wrong_dims() -> None:
    with pytest.raises(ValueError, match="odd"):
        LocalResponseNorm(4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        LocalResponseNorm(5)(torch.randn(3, 4, 5))


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "shape, match",
    [
        ((3, 227, 227), r"expects images of shape \(B, 3, 227, 227\), got 3-d"),
        ((1, 1, 3, 227, 227), r"expects images of shape \(B, 3, 227, 227\), got 5-d"),
        ((1, 1, 227, 227), r"3 channels .* got \(1, 1, 227, 227\)"),
        ((1, 4, 227, 227), r"3 channels .* got \(1, 4, 227, 227\)"),
        ((1, 3, 224, 224), r"227x227 images .* got \(1, 3, 224, 224\)"),
        ((1, 3, 227, 226), r"227x227 images .* got \(1, 3, 227, 226\)"),
    ],
)
def test_bad_input_raises(shape: tuple[int, ...], match: str) -> None:
    model = create_model("alexnet", device="meta")
    with pytest.raises(ValueError, match=match):
        model(torch.empty(shape, device="meta"))


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"image_size": 66}, "image_size must be >= 67"),
        ({"lrn_size": 4}, "odd"),
        ({"groups": 3}, "groups"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_config_raises(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AlexNetConfig.from_name("alexnet", **overrides)


def test_registry_demo_flag() -> None:
    demos = [name for name in PRESETS if get_spec(name).demo]
    assert demos == ["alexnet-10class"]
    assert get_spec("alexnet").overfit is None
    assert get_spec("alexnet-10class").overfit is not None
