"""Tests for the LeNet-5 reference (replab_fast/models/lenet.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from replab_fast.models import count_parameters, create_model, get_spec
from replab_fast.models.lenet import (
    C3_TABLE,
    DIGIT_BITMAPS,
    EuclideanRBF,
    LeNet5,
    LeNet5Config,
    PartialConv2d,
    ScaledTanh,
    Subsampling,
    digit_codes,
    map_loss,
)

PRESETS = ["lenet5-classic", "lenet5-modern"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(name: str, seed: int = 0, **overrides) -> LeNet5:
    torch.manual_seed(seed)
    return create_model(name, **overrides)


# --------------------------------------------------------------------------- parameter counts

CLASSIC_LAYER_COUNTS = {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48120, "f6": 10164}


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("name, expected", [("lenet5-classic", 60_000), ("lenet5-modern", 61_706)])
def test_parameter_count(name: str, expected: int, device: str) -> None:
    model = create_model(name, device=device)
    assert count_parameters(model) == expected
    assert count_parameters(model, trainable_only=False) == expected  # no frozen parameters either


def test_classic_matches_paper_count_and_layer_breakdown() -> None:
    assert get_spec("lenet5-classic").paper_param_count == 60_000
    model = create_model("lenet5-classic", device="meta")
    per_layer: dict[str, int] = {}
    for name, param in model.named_parameters():
        layer = name.split(".")[1]  # features.c1.weight -> c1
        per_layer[layer] = per_layer.get(layer, 0) + param.numel()
    assert per_layer == CLASSIC_LAYER_COUNTS


def test_modern_layer_breakdown() -> None:
    model = create_model("lenet5-modern", device="meta")
    per_layer: dict[str, int] = {}
    for name, param in model.named_parameters():
        layer = name.split(".")[1]
        per_layer[layer] = per_layer.get(layer, 0) + param.numel()
    # full C3: 16 * (6*25 + 1); output: 84*10 + 10
    assert per_layer == {"c1": 156, "c3": 2416, "c5": 48120, "f6": 10164, "output": 850}


# --------------------------------------------------------------------------- Table I and C3


def test_connection_table_is_table_one() -> None:
    assert len(C3_TABLE) == 6 and all(len(row) == 16 for row in C3_TABLE)
    assert sum(map(sum, C3_TABLE)) == 60
    columns = [{i for i in range(6) if C3_TABLE[i][j]} for j in range(16)]
    # The paper's rule: 6 contiguous triples, 6 contiguous quadruples, 3 discontinuous quadruples, all.
    for j in range(6):
        assert columns[j] == {j % 6, (j + 1) % 6, (j + 2) % 6}
    for j in range(6, 12):
        assert columns[j] == {(j - 6 + k) % 6 for k in range(4)}
    assert columns[12:15] == [{0, 1, 3, 4}, {1, 2, 4, 5}, {0, 2, 3, 5}]
    assert columns[15] == set(range(6))
    # Row 0 as printed in the paper: X at columns 0, 4, 5, 6, 9, 10, 11, 12, 14, 15.
    assert [j for j in range(16) if C3_TABLE[0][j]] == [0, 4, 5, 6, 9, 10, 11, 12, 14, 15]


def test_c3_stores_only_real_kernels() -> None:
    c3 = create_model("lenet5-classic").features.c3
    assert isinstance(c3, PartialConv2d)
    assert tuple(c3.weight.shape) == (60, 5, 5) and tuple(c3.bias.shape) == (16,)
    assert sum(p.numel() for p in c3.parameters()) == 60 * 25 + 16
    assert set(c3.state_dict()) == {"weight", "bias"}


@pytest.mark.parametrize("batch", [1, 3])
def test_partial_conv_matches_per_map_sum(batch: int) -> None:
    c3 = _model("lenet5-classic", seed=1).features.c3.double()
    x = torch.randn(batch, 6, 14, 14, generator=_gen(2), dtype=torch.float64)
    dense = c3.dense_weight()  # (16, 6, 5, 5)
    expected = torch.empty(batch, 16, 10, 10, dtype=torch.float64)
    for j in range(16):
        inputs = [i for i in range(6) if C3_TABLE[i][j]]
        out = c3.bias[j].expand(batch, 1, 10, 10).clone()
        for i in inputs:
            out = out + F.conv2d(x[:, i : i + 1], dense[j : j + 1, i : i + 1])
        expected[:, j : j + 1] = out
        # the kernels of absent connections are exactly zero
        for i in set(range(6)) - set(inputs):
            assert torch.count_nonzero(dense[j, i]) == 0
    torch.testing.assert_close(c3(x), expected, rtol=1e-12, atol=1e-12)


def test_partial_conv_absent_connections_stay_zero_after_training() -> None:
    model = _model("lenet5-classic", seed=3)
    c3 = model.features.c3
    absent = ~c3.table.t()  # (16, 6)
    x = torch.randn(4, 1, 32, 32, generator=_gen(4))
    target = torch.randint(0, 10, (4,), generator=_gen(5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        model.loss(model(x), target).backward()
        opt.step()
    dense = c3.dense_weight()
    assert torch.count_nonzero(dense[absent]) == 0
    # and every stored kernel received a gradient
    assert c3.weight.grad is not None and bool((c3.weight.grad.abs().flatten(1).sum(1) > 0).all())


# --------------------------------------------------------------------------- layers


def test_scaled_tanh() -> None:
    a = torch.randn(1000, generator=_gen(6), dtype=torch.float64)
    torch.testing.assert_close(ScaledTanh()(a), 1.7159 * torch.tanh(2.0 * a / 3.0), rtol=0, atol=1e-15)
    # the paper's design point: f(1) = 1 and f(-1) = -1 (to 4 decimals)
    ones = torch.tensor([1.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(ScaledTanh()(ones), ones, rtol=0, atol=1e-4)


def test_subsampling_is_coefficient_times_window_sum_plus_bias() -> None:
    torch.manual_seed(7)
    layer = Subsampling(3).double()
    x = torch.randn(2, 3, 6, 8, generator=_gen(8), dtype=torch.float64)
    window_sum = x.view(2, 3, 3, 2, 4, 2).sum(dim=(3, 5))  # (2, 3, 3, 4)
    expected = window_sum * layer.weight.view(1, 3, 1, 1) + layer.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)


def test_rbf_codes_are_fixed_plus_minus_one_bitmaps() -> None:
    model = create_model("lenet5-classic")
    rbf = model.classifier.output
    assert isinstance(rbf, EuclideanRBF)
    assert list(rbf.parameters()) == []  # fixed: a buffer, not trainable
    assert "classifier.output.centers" in model.state_dict()
    codes = rbf.centers
    assert tuple(codes.shape) == (10, 84)
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    for digit, bitmap in DIGIT_BITMAPS.items():
        assert len(bitmap) == 12 and all(len(row) == 7 for row in bitmap), digit
    torch.testing.assert_close(codes, torch.tensor(digit_codes()))
    hamming = (codes.unsqueeze(0) != codes.unsqueeze(1)).sum(-1)  # (10, 10)
    off_diagonal = hamming[~torch.eye(10, dtype=torch.bool)]
    assert int(off_diagonal.min()) >= 10  # every pair of digit codes differs in at least 10 pixels


def test_classic_forward_returns_rbf_penalties() -> None:
    model = _model("lenet5-classic", seed=9).double()
    x = torch.randn(3, 1, 32, 32, generator=_gen(10), dtype=torch.float64)
    f6 = model.classifier.f6_act(model.classifier.f6(model.features(x).flatten(1)))  # (3, 84)
    expected = ((f6.unsqueeze(1) - model.classifier.output.centers.unsqueeze(0)) ** 2).sum(-1)  # (3, 10)
    penalties = model(x)
    torch.testing.assert_close(penalties, expected, rtol=1e-12, atol=1e-12)
    assert bool((penalties >= 0).all())
    assert torch.equal(model.predict(x), penalties.argmin(dim=1))  # lower penalty = better class


def test_modern_predicts_argmax_of_logits() -> None:
    model = _model("lenet5-modern", seed=11)
    x = torch.randn(5, 1, 32, 32, generator=_gen(12))
    assert torch.equal(model.predict(x), model(x).argmax(dim=1))


# --------------------------------------------------------------------------- loss


@pytest.mark.parametrize("j", [0.5, 10.0])
def test_map_loss_is_equation_nine(j: float) -> None:
    penalties = torch.rand(4, 10, generator=_gen(13), dtype=torch.float64) * 20
    target = torch.tensor([3, 0, 9, 3])
    rubbish = math.exp(-j)
    expected = sum(penalties[p, target[p]] + torch.log(rubbish + torch.exp(-penalties[p]).sum()) for p in range(4)) / 4
    torch.testing.assert_close(map_loss(penalties, target, j), expected, rtol=1e-12, atol=1e-12)


def test_map_loss_is_stable_for_large_penalties() -> None:
    penalties = 200 + 400 * torch.rand(2, 10, generator=_gen(14), dtype=torch.float64)
    target = torch.tensor([1, 7])
    loss = map_loss(penalties, target, 10.0)
    # exp(-y) underflows but logsumexp keeps it finite: E ~= y_target - j
    torch.testing.assert_close(loss, (penalties[[0, 1], target] - 10.0).mean(), rtol=1e-12, atol=1e-9)


def test_classic_loss_uses_map_and_modern_cross_entropy() -> None:
    target = torch.tensor([2, 5])
    x = torch.randn(2, 1, 32, 32, generator=_gen(15))
    classic = _model("lenet5-classic", seed=16)
    out = classic(x)
    torch.testing.assert_close(classic.loss(out, target), map_loss(out, target, classic.config.map_j))
    assert classic.config.map_j == 10.0
    modern = _model("lenet5-modern", seed=17)
    out = modern(x)
    torch.testing.assert_close(modern.loss(out, target), F.cross_entropy(out, target))


@pytest.mark.parametrize("name", PRESETS)
def test_overfit_recipe_learns_the_batch(name: str) -> None:
    spec = get_spec(name)
    recipe = spec.overfit
    model = _model(name, seed=0, **dict(recipe.overrides))
    (x,), target = spec.make_batch(model, recipe.batch_size, generator=_gen(0))
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    losses = []
    for _ in range(recipe.steps):
        opt.zero_grad()
        loss = spec.loss(model, (x,), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < recipe.below * losses[0]
    assert torch.equal(model.predict(x), target)  # memorized: argmin penalty / argmax logit


# --------------------------------------------------------------------------- init


def _fan_ins_classic() -> dict[str, int]:
    return {"c1": 25, "s2": 4, "s4": 4, "c5": 400, "f6": 120}


@torch.no_grad()
def test_classic_init_is_uniform_2_4_over_fan_in() -> None:
    model = _model("lenet5-classic", seed=18)
    for name, param in model.named_parameters():
        layer = name.split(".")[1]
        if layer == "c3":
            continue
        bound = 2.4 / _fan_ins_classic()[layer]
        assert float(param.abs().max()) <= bound, name
        if param.numel() >= 100:  # the full range is used, not a smaller one
            assert float(param.abs().max()) > 0.9 * bound, name
    # C3: F_i = (number of connected S2 maps) * 25 per output map
    c3 = model.features.c3
    start = 0
    for j, n_inputs in enumerate(c3.inputs_per_output):
        bound = 2.4 / (n_inputs * 25)
        kernels = c3.weight[start : start + n_inputs]
        assert float(kernels.abs().max()) <= bound and float(kernels.abs().max()) > 0.8 * bound, j
        assert abs(float(c3.bias[j])) <= bound
        start += n_inputs
    assert [sum(col) for col in zip(*C3_TABLE)] == [n for n in c3.inputs_per_output]


@torch.no_grad()
def test_classic_init_is_roughly_uniform() -> None:
    weight = _model("lenet5-classic", seed=19).features.c5.weight  # 48,000 draws from U(-0.006, 0.006)
    bound = 2.4 / 400
    assert abs(float(weight.mean())) < 0.02 * bound
    assert abs(float(weight.std()) - bound / 3**0.5) < 0.02 * bound


@torch.no_grad()
def test_modern_init_is_he_uniform() -> None:
    model = _model("lenet5-modern", seed=20)
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            fan_in = module.weight[0].numel()
            gain = 1.0 if name.endswith("output") else 2**0.5
            bound = gain * (3.0 / fan_in) ** 0.5
            assert float(module.weight.abs().max()) <= bound and float(module.weight.abs().max()) > 0.9 * bound, name
            assert torch.count_nonzero(module.bias) == 0, name


def test_reset_parameters_redraws() -> None:
    model = _model("lenet5-classic", seed=21)
    before = [p.clone() for p in model.parameters()]
    model.reset_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


# --------------------------------------------------------------------------- shapes and structure


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("name", PRESETS)
def test_output_shape(name: str, batch: int) -> None:
    model = _model(name, seed=22)
    out = model(torch.randn(batch, 1, 32, 32, generator=_gen(23)))
    assert tuple(out.shape) == (batch, 10)
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", PRESETS)
def test_meta_forward_shape(name: str) -> None:
    model = create_model(name, device="meta")
    assert tuple(model(torch.empty(2, 1, 32, 32, device="meta")).shape) == (2, 10)


@pytest.mark.parametrize("name", PRESETS)
def test_float64_and_make_batch_dtype(name: str) -> None:
    model = create_model(name, dtype=torch.float64)
    (x,), target = get_spec(name).make_batch(model, 2, generator=_gen(24))
    assert x.dtype == torch.float64 and target.dtype == torch.long
    assert model(x).dtype == torch.float64


def test_larger_input_grows_c5_as_in_the_paper() -> None:
    model = _model("lenet5-classic", seed=25, image_size=36)  # C5 becomes 2x2, F6 sees 480 inputs
    assert model.config.c5_size == 2 and model.classifier.f6.in_features == 480
    assert tuple(model(torch.randn(2, 1, 36, 36, generator=_gen(26))).shape) == (2, 10)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("lenet5-classic", [nn.Conv2d, ScaledTanh, Subsampling, ScaledTanh, PartialConv2d, ScaledTanh,
                            Subsampling, ScaledTanh, nn.Conv2d, ScaledTanh]),
        ("lenet5-modern", [nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.ReLU]),
    ],
)  # fmt: skip
def test_feature_extractor_is_named_conv_act_pool_sequence(name: str, expected: list[type]) -> None:
    features = create_model(name, device="meta").features
    assert isinstance(features, nn.Sequential)
    assert [type(m) for m in features] == expected
    names = [n for n, _ in features.named_children()]
    assert names[:3] == ["c1", "c1_act", "s2"] and "c3" in names and "c5" in names


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 32, 32), r"4-D input \(B, 1, 32, 32\), got 3-D"),
        ((2, 1, 1, 32, 32), r"4-D input \(B, 1, 32, 32\), got 5-D"),
        ((2, 3, 32, 32), r"1 input channel\(s\) \(B, 1, 32, 32\), got 3"),
        ((2, 1, 28, 28), r"32x32 images \(B, 1, 32, 32\), got 28x28"),
        ((2, 1, 32, 31), r"32x32 images \(B, 1, 32, 32\), got 32x31"),
    ],
)
def test_bad_input_raises(name: str, shape: tuple[int, ...], match: str) -> None:
    model = create_model(name)
    with pytest.raises(ValueError, match=match):
        model(torch.randn(*shape, generator=_gen(27)))


def test_bad_target_raises() -> None:
    model = create_model("lenet5-classic")
    out = model(torch.randn(2, 1, 32, 32, generator=_gen(28)))
    with pytest.raises(ValueError, match=r"target classes must be in \[0, 10\)"):
        model.loss(out, torch.tensor([0, 10]))
    with pytest.raises(ValueError, match=r"target must have shape \(2,\)"):
        model.loss(out, torch.tensor([[0, 1]]))


@pytest.mark.parametrize(
    "overrides, match",
    [
        (dict(variant="lenet7"), "variant must be"),
        (dict(c3_maps=12), "Table I"),
        (dict(f6_units=80), "7x12"),
        (dict(map_j=0.0), "positive constant"),
        (dict(image_size=33), "does not fit LeNet-5"),
        (dict(image_size=16), "does not fit LeNet-5"),
        (dict(init="xavier"), "init must be"),
        (dict(init="he"), "needs variant='modern'"),
    ],
)
def test_config_validation(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LeNet5Config.from_name("classic", **overrides)


# --------------------------------------------------------------------------- registry


def test_registry_entries() -> None:
    classic, modern = get_spec("lenet5-classic"), get_spec("lenet5-modern")
    assert classic.family == modern.family == "lenet5"
    assert classic.demo and not modern.demo
    assert classic.paper_param_count == 60_000 and modern.paper_param_count is None
    assert classic.overfit is not None and modern.overfit is not None
    assert classic.model_cls is LeNet5 and classic.config_cls is LeNet5Config
