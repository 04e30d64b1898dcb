"""Deep autoencoders.

G. E. Hinton and R. R. Salakhutdinov, "Reducing the Dimensionality of Data with Neural
Networks", Science 313(5786):504-507, 2006 (and its supporting online material).

Paper vs code
-------------
* Architecture (``autoencoder-deep``): the paper's MNIST autoencoder 784-1000-500-250-30 with the
  mirrored decoder 30-250-500-1000-784: logistic hidden units, a LINEAR 30-unit code layer, a
  logistic output layer. ``autoencoder-2d`` is the paper's 784-1000-500-250-2 autoencoder (its
  Fig. 3B, two-dimensional codes of MNIST digits).
* Loss: the paper fine-tunes MNIST autoencoders on the cross-entropy reconstruction error
  -sum_i [p_i log p^_i + (1 - p_i) log(1 - p^_i)]. We compute it with
  ``binary_cross_entropy_with_logits`` on the pre-sigmoid output (numerically stable: no
  log(0) when the logistic saturates), averaged over pixels and the batch instead of summed over
  pixels (a constant factor). Targets are pixel intensities in [0, 1] (``make_batch`` draws
  random binary images, for which a perfect reconstruction has zero loss).
* Pretraining: NOT implemented. The paper initializes the weights by greedily pretraining a
  stack of RBMs (binary-binary, then a Gaussian-linear top RBM for the code), "unrolls" them
  into encoder and decoder (decoder = transposed encoder weights), then fine-tunes everything by
  backpropagation (conjugate gradients). Here the unrolled network is trained end to end from a
  random initialization (the overfit test uses Adam). Why: the RBM stack is a separate training
  procedure, not part of the model, and the point of these files is the network that
  fine-tuning trains; with Adam and Glorot initialization the deep network trains from scratch
  on small problems. Consequences: encoder and decoder weights are untied (as after the
  paper's unrolling), and the initialization is a choice, since the paper has no random
  initialization of the fine-tuned net: Glorot-uniform weights (Glorot & Bengio 2010) with zero
  biases, the range multiplied by 4 for layers that feed logistic units (the logistic's slope at
  0 is 1/4 of tanh's). With the plain Glorot range the deep logistic net sits for hundreds of
  Adam steps on the plateau where it outputs the mean image (the failure the paper's
  pretraining avoids); with the 4x range it leaves it within tens of steps. The code layer and
  the linear autoencoder use the plain range. Expect worse MNIST reconstructions than the
  paper's without pretraining; that is the paper's own finding.
* Variants that are not in the paper (what a replication lab trains next to it):
  - ``autoencoder-linear``: 1024 -> 2 -> 1024, no nonlinearity, MSE loss. Its optimum spans
    the top-2 principal subspace of the (centred) data (Baldi & Hornik 1989), which the tests
    check. Biases are kept, so the data need not be centred.
  - ``autoencoder-conv`` (``ConvAutoencoder``): 1x28x28 input (MNIST size); two stride-2 3x3
    ``nn.Conv2d`` layers (1 -> 32 -> 64 channels, 28 -> 14 -> 7) with ReLU, a linear code
    (3136 -> 16), a linear layer back to 64x7x7, two stride-2 ``nn.ConvTranspose2d`` layers
    (64 -> 32 -> 1, 7 -> 14 -> 28), logistic output, cross-entropy loss like the paper's. ReLU,
    not logistic, in the conv layers: the conventional modern choice, trainable from scratch.
    The layers are standard torch modules so a fast conv drop-in can replace ``nn.Conv2d``.
* Shapes: the MLP autoencoders take flat (B, input_dim) inputs or images (B, 1, s, s) with
  s * s = input_dim (28x28 for 784, 32x32 for 1024); ``forward`` returns the reconstruction in
  the input's shape, ``encode`` returns (B, code_dim), ``decode`` returns flat (B, input_dim)
  for the MLPs and (B, 1, s, s) for the conv autoencoder.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PresetConfig
from .registry import Batch, Family, OverfitRecipe, unwrap

_ACTIVATIONS = ("logistic", "identity")


def _activation(name: str) -> nn.Module:
    return nn.Sigmoid() if name == "logistic" else nn.Identity()


def _glorot_uniform_(layer: nn.Module, gain: float = 1.0) -> None:
    """Weights uniform in +-gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010), zero bias."""
    nn.init.xavier_uniform_(layer.weight, gain=gain)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _glorot_init_(module: nn.Module) -> None:
    """Glorot-uniform weights, zero biases, for every Linear/Conv layer below ``module``."""
    for layer in module.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            _glorot_uniform_(layer)


def _reconstruction_loss(logits: Tensor, target: Tensor, kind: str) -> Tensor:
    """Cross-entropy on the pre-sigmoid output ("bce") or squared error on the output ("mse")."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits, target)
    return F.mse_loss(logits, target)


def _shape(x: Tensor) -> tuple[int, ...]:
    return tuple(x.shape)


# ----------------------------------------------------------------------------------------
# MLP autoencoders (the paper's, the 2-D one and the linear one)


@dataclass
class AutoencoderConfig(PresetConfig):
    input_dim: int = 784  # flattened input pixels (28x28 MNIST)
    hidden_dims: tuple[int, ...] = (1000, 500, 250)  # encoder hidden widths; the decoder mirrors them
    code_dim: int = 30  # code layer width (linear units)
    hidden_activation: str = "logistic"  # "logistic" (the paper) or "identity" (linear autoencoder)
    output_activation: str = "logistic"  # "logistic" (+ cross-entropy) or "identity" (+ squared error)

    # Derived in __post_init__.
    encoder_dims: tuple[int, ...] = field(init=False)  # (input_dim, *hidden_dims, code_dim)
    decoder_dims: tuple[int, ...] = field(init=False)  # the mirror: (code_dim, ..., input_dim)
    image_side: Optional[int] = field(init=False)  # s with s*s = input_dim, else None (flat only)
    loss: str = field(init=False)  # "bce" for a logistic output, "mse" for a linear one

    PRESETS = {
        "deep": dict(),
        "2d": dict(code_dim=2),
        "linear": dict(
            input_dim=1024, hidden_dims=(), code_dim=2, hidden_activation="identity", output_activation="identity"
        ),
    }

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(self.hidden_dims)
        for name, value in (("input_dim", self.input_dim), ("code_dim", self.code_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if any(width < 1 for width in self.hidden_dims):
            raise ValueError(f"hidden_dims must all be >= 1, got {self.hidden_dims}")
        for name in ("hidden_activation", "output_activation"):
            if getattr(self, name) not in _ACTIVATIONS:
                raise ValueError(f"{name} must be one of {_ACTIVATIONS}, got {getattr(self, name)!r}")
        self.encoder_dims = (self.input_dim, *self.hidden_dims, self.code_dim)
        self.decoder_dims = tuple(reversed(self.encoder_dims))
        side = math.isqrt(self.input_dim)
        self.image_side = side if side * side == self.input_dim else None
        self.loss = "bce" if self.output_activation == "logistic" else "mse"


def _mlp(dims: tuple[int, ...], hidden_activation: str, last_name: str, factory: dict) -> nn.Sequential:
    """Linear layers dims[0] -> ... -> dims[-1]; the hidden ones are followed by the activation,
    the last one (named ``last_name``) is left linear."""
    layers: list[tuple[str, nn.Module]] = []
    n_layers = len(dims) - 1
    for index, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:]), start=1):
        if index < n_layers:
            layers.append((f"fc{index}", nn.Linear(fan_in, fan_out, **factory)))
            layers.append((f"act{index}", _activation(hidden_activation)))
        else:
            layers.append((last_name, nn.Linear(fan_in, fan_out, **factory)))
    return nn.Sequential(OrderedDict(layers))


class MLPAutoencoder(nn.Module):
    """Encoder input -> hidden... -> linear code; decoder code -> hidden... -> output."""

    def __init__(self, config: AutoencoderConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        factory = dict(device=device, dtype=dtype)
        self.encoder = _mlp(config.encoder_dims, config.hidden_activation, "code", factory)
        self.decoder = _mlp(config.decoder_dims, config.hidden_activation, "output", factory)
        self.output_activation = _activation(config.output_activation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weights, zero biases (the paper's weights come from RBM pretraining, see
        the note), with the range multiplied by 4 for a layer that feeds logistic units (the
        usual adjustment of Glorot's tanh range: the logistic's slope at 0 is 1/4, tanh's is 1)."""
        logistic_output = self.config.output_activation == "logistic"
        for sequential, last_is_logistic in ((self.encoder, False), (self.decoder, logistic_output)):
            layers = list(sequential)
            for index, layer in enumerate(layers):
                if not isinstance(layer, nn.Linear):
                    continue
                is_last = index == len(layers) - 1
                feeds_logistic = last_is_logistic if is_last else isinstance(layers[index + 1], nn.Sigmoid)
                _glorot_uniform_(layer, gain=4.0 if feeds_logistic else 1.0)

    def _expected_shapes(self) -> str:
        c = self.config
        if c.image_side is None:
            return f"(B, {c.input_dim})"
        return f"(B, {c.input_dim}) or (B, 1, {c.image_side}, {c.image_side})"

    def _flatten_input(self, x: Tensor) -> Tensor:
        """Validate x and return it as (B, input_dim)."""
        c = self.config
        if x.dim() == 2 and x.shape[1] == c.input_dim:
            return x  # (B, D)
        if x.dim() == 4 and c.image_side is not None and _shape(x)[1:] == (1, c.image_side, c.image_side):
            return x.flatten(1)  # (B, D)
        raise ValueError(f"{type(self).__name__} expects input of shape {self._expected_shapes()}, got {_shape(x)}")

    def _validate_code(self, z: Tensor) -> None:
        if z.dim() != 2 or z.shape[1] != self.config.code_dim:
            raise ValueError(
                f"{type(self).__name__}.decode expects codes of shape (B, {self.config.code_dim}), got {_shape(z)}"
            )

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(self._flatten_input(x))  # (B, code_dim)

    def decode_logits(self, z: Tensor) -> Tensor:
        """The output layer before its activation (logits for a logistic output)."""
        self._validate_code(z)
        return self.decoder(z)  # (B, D)

    def decode(self, z: Tensor) -> Tensor:
        return self.output_activation(self.decode_logits(z))  # (B, D)

    def reconstruction_logits(self, x: Tensor) -> Tensor:
        """Pre-activation reconstruction, in the shape of x."""
        flat = self._flatten_input(x)  # (B, D)
        logits = self.decoder(self.encoder(flat))  # (B, D)
        return logits.view_as(x)  # x's shape

    def forward(self, x: Tensor, *, logits: bool = False) -> Tensor:
        """The reconstruction of x, in x's shape; its pre-activation with ``logits=True`` (the
        loss's input: the training loss goes through forward, so a DDP wrapper sees it)."""
        z = self.reconstruction_logits(x)  # x's shape
        return z if logits else self.output_activation(z)

    def loss(self, x: Tensor, target: Optional[Tensor] = None) -> Tensor:
        """Reconstruction error of x against target (default: x itself)."""
        target = x if target is None else target
        return _reconstruction_loss(self(x, logits=True), target, self.config.loss)


# ----------------------------------------------------------------------------------------
# Convolutional autoencoder (not in the paper)


@dataclass
class ConvAutoencoderConfig(PresetConfig):
    image_size: int = 28  # input height = width (MNIST: 28)
    in_channels: int = 1  # input channels
    channels: tuple[int, ...] = (32, 64)  # output channels of each stride-2 conv (each halves the side)
    kernel_size: int = 3  # odd; padding kernel_size // 2
    code_dim: int = 16  # linear code width

    # Derived in __post_init__.
    feature_size: int = field(init=False)  # side after the convs: image_size / 2**len(channels)
    feature_numel: int = field(init=False)  # channels[-1] * feature_size**2, the code layer's fan-in

    PRESETS = {"conv": dict()}

    def __post_init__(self) -> None:
        self.channels = tuple(self.channels)
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"channels must be a non-empty tuple of positive widths, got {self.channels}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and positive, got {self.kernel_size}")
        for name in ("image_size", "in_channels", "code_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        factor = 2 ** len(self.channels)
        if self.image_size % factor:
            raise ValueError(
                f"image_size must be divisible by 2**len(channels) = {factor} so each stride-2 layer halves it "
                f"exactly, got {self.image_size}"
            )
        self.feature_size = self.image_size // factor
        self.feature_numel = self.channels[-1] * self.feature_size**2


class ConvAutoencoder(nn.Module):
    """Stride-2 convs down to a linear code, stride-2 transposed convs back up."""

    def __init__(self, config: ConvAutoencoderConfig, *, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        factory = dict(device=device, dtype=dtype)
        c, k = config, config.kernel_size
        widths = (c.in_channels, *c.channels)  # e.g. (1, 32, 64)
        down: list[tuple[str, nn.Module]] = []
        for index, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            down.append((f"conv{index}", nn.Conv2d(c_in, c_out, k, stride=2, padding=k // 2, **factory)))
            down.append((f"act{index}", nn.ReLU()))
        down.append(("flatten", nn.Flatten()))
        down.append(("code", nn.Linear(c.feature_numel, c.code_dim, **factory)))
        self.encoder = nn.Sequential(OrderedDict(down))

        up: list[tuple[str, nn.Module]] = [
            ("fc", nn.Linear(c.code_dim, c.feature_numel, **factory)),
            ("fc_act", nn.ReLU()),
            ("unflatten", nn.Unflatten(1, (c.channels[-1], c.feature_size, c.feature_size))),
        ]
        reversed_widths = tuple(reversed(widths))  # e.g. (64, 32, 1)
        n_up = len(reversed_widths) - 1
        for index, (c_in, c_out) in enumerate(zip(reversed_widths[:-1], reversed_widths[1:]), start=1):
            deconv = nn.ConvTranspose2d(c_in, c_out, k, stride=2, padding=k // 2, output_padding=1, **factory)
            up.append((f"deconv{index}", deconv))  # doubles the side
            if index < n_up:
                up.append((f"act{index}", nn.ReLU()))
        self.decoder = nn.Sequential(OrderedDict(up))
        self.output_activation = nn.Sigmoid()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _glorot_init_(self)

    def _validate(self, x: Tensor) -> None:
        c = self.config
        expected = (c.in_channels, c.image_size, c.image_size)
        if x.dim() != 4 or _shape(x)[1:] != expected:
            raise ValueError(
                f"ConvAutoencoder expects input of shape (B, {c.in_channels}, {c.image_size}, {c.image_size}), "
                f"got {_shape(x)}"
            )

    def encode(self, x: Tensor) -> Tensor:
        self._validate(x)  # x: (B, C, H, W)
        return self.encoder(x)  # (B, code_dim)

    def decode_logits(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.config.code_dim:
            raise ValueError(
                f"ConvAutoencoder.decode expects codes of shape (B, {self.config.code_dim}), got {_shape(z)}"
            )
        return self.decoder(z)  # (B, C, H, W)

    def decode(self, z: Tensor) -> Tensor:
        return self.output_activation(self.decode_logits(z))  # (B, C, H, W)

    def reconstruction_logits(self, x: Tensor) -> Tensor:
        return self.decode_logits(self.encode(x))  # (B, C, H, W)

    def forward(self, x: Tensor, *, logits: bool = False) -> Tensor:
        """The reconstruction (B, C, H, W); its pre-activation with ``logits=True``."""
        z = self.reconstruction_logits(x)  # (B, C, H, W)
        return z if logits else self.output_activation(z)

    def loss(self, x: Tensor, target: Optional[Tensor] = None) -> Tensor:
        target = x if target is None else target
        return _reconstruction_loss(self(x, logits=True), target, "bce")


# ----------------------------------------------------------------------------------------
# Registry


def _param(model: nn.Module) -> Tensor:
    return next(model.parameters())


def _make_mlp_batch(model: nn.Module, batch_size: int, *, generator: torch.Generator) -> Batch:
    """Random binary images for a logistic output, standard-normal vectors for a linear one;
    the target is the input itself."""
    c, param = model.config, _param(model)
    if c.output_activation == "logistic":
        x = torch.bernoulli(torch.full((batch_size, c.input_dim), 0.5), generator=generator)  # (B, D)
    else:
        x = torch.randn(batch_size, c.input_dim, generator=generator)  # (B, D)
    x = x.to(device=param.device, dtype=param.dtype)
    return (x,), x


def _make_conv_batch(model: nn.Module, batch_size: int, *, generator: torch.Generator) -> Batch:
    c, param = model.config, _param(model)
    probs = torch.full((batch_size, c.in_channels, c.image_size, c.image_size), 0.5)
    x = torch.bernoulli(probs, generator=generator).to(device=param.device, dtype=param.dtype)  # (B, C, H, W)
    return (x,), x


def _loss(model: nn.Module, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
    """The reconstruction error: cross-entropy on the pre-sigmoid output for a logistic output
    layer, squared error for a linear one (the config's ``loss``).

    The forward runs through ``model`` (a DDP / compile wrapper too)."""
    kind = getattr(unwrap(model).config, "loss", "bce")
    return _reconstruction_loss(model(*inputs, logits=True), target, kind)


_PAPER = "Hinton & Salakhutdinov 2006"
MLP_FAMILY = Family("autoencoder", _PAPER, AutoencoderConfig, MLPAutoencoder, _make_mlp_batch, _loss)
CONV_FAMILY = Family("conv-autoencoder", _PAPER, ConvAutoencoderConfig, ConvAutoencoder, _make_conv_batch, _loss)

SPECS = (
    MLP_FAMILY.preset(
        "autoencoder-deep", "deep",
        "the paper's MNIST autoencoder 784-1000-500-250-30 (mirrored decoder), logistic units, cross-entropy",
        demo=True, overfit=OverfitRecipe(batch_size=4, steps=60, lr=3e-3, below=0.1),
    ),
    MLP_FAMILY.preset(
        "autoencoder-2d", "2d", "the paper's 784-1000-500-250-2 autoencoder (2-D codes of MNIST, Fig. 3B)",
        overfit=OverfitRecipe(batch_size=4, steps=60, lr=3e-3, below=0.1),
    ),
    MLP_FAMILY.preset(
        "autoencoder-linear", "linear",
        "linear autoencoder 1024 -> 2 -> 1024 with squared error: learns the top-2 PCA subspace",
        # 3 points always lie on an affine plane, so a rank-2 affine map can reconstruct them exactly.
        overfit=OverfitRecipe(batch_size=3, steps=60, lr=3e-2, below=0.1),
    ),
    CONV_FAMILY.preset(
        "autoencoder-conv", "conv",
        "convolutional autoencoder 1x28x28: stride-2 convs, 16-unit linear code, transposed convs",
        demo=True, overfit=OverfitRecipe(batch_size=4, steps=60, lr=3e-3, below=0.1),
    ),
)  # fmt: skip
