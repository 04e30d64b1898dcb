"""Tests for the autoencoder references (replab_fast/models/autoencoder.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from replab_fast.models import count_parameters, create_model, get_spec
from replab_fast.models.autoencoder import (
    AutoencoderConfig,
    ConvAutoencoder,
    ConvAutoencoderConfig,
    MLPAutoencoder,
)

MLP_PRESETS = ["autoencoder-deep", "autoencoder-2d", "autoencoder-linear"]
ALL_PRESETS = MLP_PRESETS + ["autoencoder-conv"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(name: str, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, **overrides)


def _linear_layers(model: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in model.modules() if isinstance(m, nn.Linear)]


# --------------------------------------------------------------------------- parameter counts

# Computed by hand: sum over layers of fan_in * fan_out + fan_out.
#   deep:   encoder 785,000 + 500,500 + 125,250 + 7,530 = 1,418,280
#           decoder 7,750 + 125,500 + 501,000 + 784,784 = 1,419,034         -> 2,837,314
#   2d:     encoder 1,410,750 + 502; decoder 750 + 1,411,284                 -> 2,823,286
#   linear: 1024*2 + 2 + 2*1024 + 1024                                       -> 5,122
#   conv:   conv 1*32*9+32 = 320, conv 32*64*9+64 = 18,496, code 3136*16+16 = 50,192,
#           fc 16*3136+3136 = 53,312, deconv 64*32*9+32 = 18,464, deconv 32*1*9+1 = 289 -> 141,073
PARAM_COUNTS = {
    "autoencoder-deep": 2_837_314,
    "autoencoder-2d": 2_823_286,
    "autoencoder-linear": 5_122,
    "autoencoder-conv": 141_073,
}


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("name", ALL_PRESETS)
def test_parameter_count(name: str, device: str) -> None:
    assert count_parameters(create_model(name, device=device)) == PARAM_COUNTS[name]
    assert get_spec(name).paper_param_count is None  # the paper gives no count


@pytest.mark.parametrize(
    "name, encoder, decoder",
    [
        ("autoencoder-deep", [(784, 1000), (1000, 500), (500, 250), (250, 30)],
         [(30, 250), (250, 500), (500, 1000), (1000, 784)]),
        ("autoencoder-2d", [(784, 1000), (1000, 500), (500, 250), (250, 2)],
         [(2, 250), (250, 500), (500, 1000), (1000, 784)]),
        ("autoencoder-linear", [(1024, 2)], [(2, 1024)]),
    ],
)  # fmt: skip
def test_mlp_layer_sizes(name: str, encoder: list, decoder: list) -> None:
    model = create_model(name, device="meta")
    assert _linear_layers(model.encoder) == encoder
    assert _linear_layers(model.decoder) == decoder


def test_deep_units_logistic_hidden_linear_code_logistic_output() -> None:
    model = create_model("autoencoder-deep", device="meta")
    encoder, decoder = list(model.encoder), list(model.decoder)
    assert [type(m) for m in encoder] == [nn.Linear, nn.Sigmoid] * 3 + [nn.Linear]  # linear code layer
    assert [type(m) for m in decoder] == [nn.Linear, nn.Sigmoid] * 3 + [nn.Linear]
    assert isinstance(model.output_activation, nn.Sigmoid)
    assert model.config.loss == "bce"


def test_linear_autoencoder_is_affine_with_mse() -> None:
    model = _model("autoencoder-linear", seed=1).double()
    assert model.config.loss == "mse"
    assert not any(isinstance(m, (nn.Sigmoid, nn.ReLU, nn.Tanh)) for m in model.modules())
    a, b = torch.randn(2, 3, 1024, generator=_gen(2), dtype=torch.float64)
    t = 0.3
    # an affine map preserves affine combinations
    torch.testing.assert_close(model(t * a + (1 - t) * b), t * model(a) + (1 - t) * model(b), rtol=1e-10, atol=1e-10)


def test_conv_autoencoder_layout() -> None:
    model = create_model("autoencoder-conv", device="meta")
    convs = [m for m in model.encoder if isinstance(m, nn.Conv2d)]
    deconvs = [m for m in model.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert [type(m) for m in convs] == [nn.Conv2d, nn.Conv2d]  # plain torch convs (drop-in target)
    assert [(m.in_channels, m.out_channels, m.stride) for m in convs] == [(1, 32, (2, 2)), (32, 64, (2, 2))]
    assert [(m.in_channels, m.out_channels, m.stride) for m in deconvs] == [(64, 32, (2, 2)), (32, 1, (2, 2))]
    assert _linear_layers(model) == [(3136, 16), (16, 3136)]


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", MLP_PRESETS)
def test_mlp_shapes_flat_and_image(name: str, batch: int) -> None:
    model = _model(name, seed=3)
    c = model.config
    flat = torch.rand(batch, c.input_dim, generator=_gen(4))
    image = flat.view(batch, 1, c.image_side, c.image_side)
    assert tuple(model(flat).shape) == (batch, c.input_dim)
    assert tuple(model(image).shape) == (batch, 1, c.image_side, c.image_side)
    torch.testing.assert_close(model(image).flatten(1), model(flat))  # same function either way
    z = model.encode(image)
    assert tuple(z.shape) == (batch, c.code_dim)
    torch.testing.assert_close(model.decode(z), model(flat))
    assert tuple(model.decode(z).shape) == (batch, c.input_dim)


@pytest.mark.parametrize("batch", [1, 3])
def test_conv_shapes(batch: int) -> None:
    model = _model("autoencoder-conv", seed=5)
    x = torch.rand(batch, 1, 28, 28, generator=_gen(6))
    z = model.encode(x)
    assert tuple(z.shape) == (batch, 16)
    out = model(x)
    assert tuple(out.shape) == (batch, 1, 28, 28)
    torch.testing.assert_close(model.decode(z), out)


def test_conv_other_image_size() -> None:
    model = _model("autoencoder-conv", seed=7, image_size=32, code_dim=8)
    assert model.config.feature_size == 8
    assert tuple(model(torch.rand(2, 1, 32, 32, generator=_gen(8))).shape) == (2, 1, 32, 32)


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_meta_forward(name: str) -> None:
    model = create_model(name, device="meta")
    (x,), _ = get_spec(name).make_batch(model, 2, generator=_gen(9))
    assert x.device.type == "meta"
    assert model(x).shape == x.shape


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_make_batch_dtype_and_logistic_outputs(name: str) -> None:
    model = create_model(name, dtype=torch.float64)
    (x,), target = get_spec(name).make_batch(model, 2, generator=_gen(10))
    assert x.dtype == torch.float64 and torch.equal(x, target)
    out = model(x)
    assert out.dtype == torch.float64
    if name != "autoencoder-linear":
        assert set(x.unique().tolist()) == {0.0, 1.0}  # random binary images
        assert bool(((out > 0) & (out < 1)).all())


# --------------------------------------------------------------------------- loss


@pytest.mark.parametrize("name", ["autoencoder-deep", "autoencoder-conv"])
def test_cross_entropy_loss(name: str) -> None:
    model = _model(name, seed=11).double()
    shape = (2, 784) if name == "autoencoder-deep" else (2, 1, 28, 28)
    x = torch.rand(*shape, generator=_gen(12), dtype=torch.float64)  # intensities in [0, 1]
    p_hat = model(x)
    expected = -(x * torch.log(p_hat) + (1 - x) * torch.log(1 - p_hat)).mean()  # the paper's error, averaged
    torch.testing.assert_close(model.loss(x), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(get_spec(name).loss(model, (x,), x), expected, rtol=1e-10, atol=1e-12)


def test_linear_loss_is_mse() -> None:
    model = _model("autoencoder-linear", seed=13)
    x = torch.randn(4, 1024, generator=_gen(14))
    torch.testing.assert_close(model.loss(x), ((model(x) - x) ** 2).mean())


def test_cross_entropy_finite_when_output_saturates() -> None:
    model = _model("autoencoder-deep", seed=15)
    with torch.no_grad():
        model.decoder.output.bias.fill_(-200.0)  # logistic output underflows to 0 in float32
    x = torch.bernoulli(torch.full((2, 784), 0.5), generator=_gen(16))
    loss = model.loss(x).detach()
    assert bool(torch.isfinite(loss)) and float(loss) > 50


# --------------------------------------------------------------------------- PCA


def test_linear_autoencoder_recovers_pca_subspace() -> None:
    """Data with a clear top-2 principal subspace (std 10 and 6 along two random orthonormal
    directions of R^1024, isotropic noise std 0.1); full-batch Adam on the squared error for 150
    steps; the principal angles between the decoder's column space and the sample PCA top-2
    subspace must be below 1 degree (they end near 0.1 degree; at initialization they are ~88).

    The data are generated with zero mean: with a large mean offset Adam spends hundreds of steps
    with one code unit carrying the constant offset (redundantly with the biases) before it turns
    to the second component, although the optimum is the same.
    """
    n, dim = 128, 1024
    g = _gen(17)
    basis, _ = torch.linalg.qr(torch.randn(dim, 2, generator=g))  # (1024, 2) orthonormal
    scores = torch.randn(n, 2, generator=g) * torch.tensor([10.0, 6.0])  # (n, 2)
    x = scores @ basis.T + 0.1 * torch.randn(n, dim, generator=g)  # (n, 1024)
    _, _, vh = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    pca = vh[:2].T  # (1024, 2) top-2 principal directions

    def max_angle_degrees(model: MLPAutoencoder) -> float:
        columns, _ = torch.linalg.qr(model.decoder.output.weight.detach())  # (1024, 2)
        cosines = torch.linalg.svdvals(columns.T @ pca).clamp(max=1.0)
        return math.degrees(float(torch.arccos(cosines).max()))

    model = _model("autoencoder-linear", seed=18)
    assert max_angle_degrees(model) > 45  # a random plane is far from the PCA plane
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        model.loss(x).backward()
        opt.step()
    assert max_angle_degrees(model) < 1.0


# --------------------------------------------------------------------------- init


@torch.no_grad()
@pytest.mark.parametrize("name", MLP_PRESETS)
def test_mlp_init_glorot_uniform(name: str) -> None:
    model = _model(name, seed=19)
    logistic = model.config.hidden_activation == "logistic"
    for part in (model.encoder, model.decoder):
        for layer_name, layer in part.named_children():
            if not isinstance(layer, nn.Linear):
                continue
            feeds_logistic = logistic and layer_name != "code"  # hidden layers and the logistic output
            gain = 4.0 if feeds_logistic else 1.0
            bound = gain * math.sqrt(6.0 / (layer.in_features + layer.out_features))
            largest = float(layer.weight.abs().max())
            assert 0.9 * bound < largest <= bound, (layer_name, largest, bound)
            assert torch.count_nonzero(layer.bias) == 0


@torch.no_grad()
def test_conv_init_glorot_uniform() -> None:
    model = _model("autoencoder-conv", seed=20)
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert 0.8 * bound < float(layer.weight.abs().max()) <= bound
            assert torch.count_nonzero(layer.bias) == 0


# --------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", ["autoencoder-deep", "autoencoder-linear", "autoencoder-conv"])
def test_overfit_recipe(name: str) -> None:
    spec = get_spec(name)
    recipe = spec.overfit
    model = _model(name, seed=0, **dict(recipe.overrides))
    inputs, target = spec.make_batch(model, recipe.batch_size, generator=_gen(0))
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    losses = []
    for _ in range(recipe.steps):
        opt.zero_grad()
        loss = spec.loss(model, inputs, target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < recipe.below * losses[0]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "name, shape, match",
    [
        ("autoencoder-deep", (2, 783), r"\(B, 784\) or \(B, 1, 28, 28\), got \(2, 783\)"),
        ("autoencoder-deep", (784,), r"\(B, 784\) or \(B, 1, 28, 28\), got \(784,\)"),
        ("autoencoder-deep", (2, 1, 32, 32), r"\(B, 784\) or \(B, 1, 28, 28\), got \(2, 1, 32, 32\)"),
        ("autoencoder-deep", (2, 3, 28, 28), r"\(B, 784\) or \(B, 1, 28, 28\), got \(2, 3, 28, 28\)"),
        ("autoencoder-deep", (2, 28, 28), r"got \(2, 28, 28\)"),
        ("autoencoder-linear", (2, 784), r"\(B, 1024\) or \(B, 1, 32, 32\), got \(2, 784\)"),
        ("autoencoder-conv", (2, 784), r"\(B, 1, 28, 28\), got \(2, 784\)"),
        ("autoencoder-conv", (2, 3, 28, 28), r"\(B, 1, 28, 28\), got \(2, 3, 28, 28\)"),
        ("autoencoder-conv", (2, 1, 32, 32), r"\(B, 1, 28, 28\), got \(2, 1, 32, 32\)"),
    ],
)
def test_bad_input_raises(name: str, shape: tuple[int, ...], match: str) -> None:
    model = create_model(name)
    x = torch.rand(*shape, generator=_gen(21))
    with pytest.raises(ValueError, match=match):
        model(x)
    with pytest.raises(ValueError, match=match):
        model.encode(x)


def test_flat_only_when_input_is_not_square() -> None:
    model = _model("autoencoder-linear", seed=22, input_dim=1000)
    assert model.config.image_side is None
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1000\), got"):
        model(torch.rand(2, 1, 10, 100, generator=_gen(23)))


@pytest.mark.parametrize("name, code_dim", [("autoencoder-deep", 30), ("autoencoder-2d", 2), ("autoencoder-conv", 16)])
def test_bad_code_raises(name: str, code_dim: int) -> None:
    model = create_model(name)
    with pytest.raises(ValueError, match=rf"codes of shape \(B, {code_dim}\), got \(2, {code_dim + 1}\)"):
        model.decode(torch.randn(2, code_dim + 1, generator=_gen(24)))


@pytest.mark.parametrize(
    "cls, preset, overrides, match",
    [
        (AutoencoderConfig, "deep", dict(hidden_activation="relu"), "hidden_activation must be one of"),
        (AutoencoderConfig, "deep", dict(output_activation="tanh"), "output_activation must be one of"),
        (AutoencoderConfig, "deep", dict(code_dim=0), "code_dim must be >= 1"),
        (AutoencoderConfig, "deep", dict(hidden_dims=(100, 0)), "hidden_dims must all be >= 1"),
        (ConvAutoencoderConfig, "conv", dict(image_size=30), "divisible by 2\\*\\*len\\(channels\\) = 4"),
        (ConvAutoencoderConfig, "conv", dict(kernel_size=4), "kernel_size must be odd"),
        (ConvAutoencoderConfig, "conv", dict(channels=()), "channels must be a non-empty tuple"),
    ],
)
def test_config_validation(cls: type, preset: str, overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls.from_name(preset, **overrides)


def test_config_accepts_list_overrides() -> None:
    config = AutoencoderConfig.from_name("deep", hidden_dims=[64, 32])
    assert config.hidden_dims == (64, 32) and config.encoder_dims == (784, 64, 32, 30)
    assert config.decoder_dims == (30, 32, 64, 784)


# --------------------------------------------------------------------------- registry


def test_registry_entries() -> None:
    specs = {name: get_spec(name) for name in ALL_PRESETS}
    assert {n: s.family for n, s in specs.items()} == {
        "autoencoder-deep": "autoencoder",
        "autoencoder-2d": "autoencoder",
        "autoencoder-linear": "autoencoder",
        "autoencoder-conv": "conv-autoencoder",
    }
    assert [n for n, s in specs.items() if s.demo] == ["autoencoder-deep", "autoencoder-conv"]
    assert all(s.overfit is not None for s in specs.values())
    assert specs["autoencoder-conv"].model_cls is ConvAutoencoder
    assert all(specs[n].model_cls is MLPAutoencoder for n in MLP_PRESETS)
