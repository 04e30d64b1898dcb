"""AlexNet.

Krizhevsky, A., Sutskever, I. & Hinton, G. E. (2012). "ImageNet Classification with Deep
Convolutional Neural Networks". Advances in Neural Information Processing Systems 25 (NIPS 2012).

Architecture (Section 3, Figure 2): five convolutional layers and three fully connected layers,

    conv1 96 x 11x11 /4 -> ReLU -> LRN -> max-pool 3/2
    conv2 256 x 5x5 (2 groups) -> ReLU -> LRN -> max-pool 3/2
    conv3 384 x 3x3 -> ReLU
    conv4 384 x 3x3 (2 groups) -> ReLU
    conv5 256 x 3x3 (2 groups) -> ReLU -> max-pool 3/2
    FC6 4096 -> ReLU -> dropout 0.5
    FC7 4096 -> ReLU -> dropout 0.5
    FC8 num_classes  (logits; the paper's 1000-way softmax lives in the cross-entropy loss)

Paper vs code
-------------
- Input size 227x227, not the paper's 224x224. With an 11x11 kernel, stride 4 and no padding,
  only a 227-pixel input gives the 55x55 first-layer maps that Figure 2 shows
  ((227 - 11) / 4 + 1 = 55; 224 gives 54.25). ``image_size`` is a config field; any size of at
  least 67 builds (FC6's input width follows from it), but the paper's preset uses 227.
- The two-GPU split (Section 3.2) is expressed as grouped convolutions: ``groups=2`` on conv2,
  conv4 and conv5, whose kernels "are connected only to those kernel maps in the previous layer
  which reside on the same GPU"; conv3 and the fully connected layers connect across both halves.
  This gives exactly the paper's connectivity on one device; ``groups`` is a config field
  (``groups=1`` is the single-tower network).
- Padding is not stated in the paper; conv2 uses 2 and conv3-5 use 1, the values that keep the
  27x27 and 13x13 map sizes of Figure 2.
- Local response normalization (Section 3.3) is its own module, :class:`LocalResponseNorm`, which
  implements the paper's formula b = a / (k + alpha * sum_{n-window} a^2)^beta with alpha *not*
  divided by n. ``torch.nn.LocalResponseNorm`` divides alpha by n, so the paper's layer equals
  ``torch.nn.LocalResponseNorm(n, alpha * n, beta, k)``. It sits after the ReLU of conv1 and conv2
  ("we applied this normalization after applying the ReLU nonlinearity in certain layers").
  The window size n must be odd (the paper's n = 5) so the window is centred.
- Dropout (Section 4.2) "in the first two fully-connected layers" zeroes the *outputs* of the
  hidden neurons of FC6 and FC7, so it follows each of their ReLUs (as in Caffe's reference AlexNet);
  torchvision's AlexNet instead drops the inputs of FC6 and FC7.
- Initialization (Section 5) exactly as the paper states: every weight N(0, 0.01^2); biases 1 in
  conv2, conv4, conv5 and the fully connected *hidden* layers (FC6, FC7); biases 0 in conv1, conv3
  and the output layer FC8 (the paper: "the remaining layers").
- No softmax inside the model: forward returns logits; the registered loss is cross-entropy
  (the paper maximizes the multinomial logistic regression objective).
- Input scale: the paper trains on "the (centered) raw RGB values of the pixels" (0-255 minus the
  mean image, no division by a standard deviation); the registered ``make_batch`` draws random
  images at that scale (std ``CENTERED_PIXEL_STD`` = 60), which the N(0, 0.01^2) init and the LRN
  constants rely on. Feeding unit-variance images instead leaves the network nearly constant at
  init (the biases of 1 dominate) and it barely trains.
- Not modelled: the data augmentation (random 224 crops, flips, PCA colour noise), the 10-crop
  test-time averaging, and the SGD schedule (momentum 0.9, weight decay 5e-4, lr 0.01 / 10).
- Parameter count: 60,965,224 at 1000 classes (asserted at import from
  ``AlexNetConfig.num_parameters`` and in the tests on a built model); the paper says "60 million".
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PresetConfig
from .registry import Batch, Family, OverfitRecipe

PAPER_PARAM_COUNT = 60_965_224  # exact count of this code at 1000 classes (paper: "60 million")


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a convolution or pooling window (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


@dataclass
class AlexNetConfig(PresetConfig):
    num_classes: int = 1000  # output classes (ImageNet ILSVRC-2012: 1000)
    in_channels: int = 3  # RGB input
    image_size: int = 227  # square input side; 227 gives the paper's 55x55 conv1 maps
    groups: int = 2  # the two-GPU split: groups of conv2, conv4, conv5 (1 = single tower)
    dropout: float = 0.5  # dropout probability on the outputs of FC6 and FC7
    lrn_size: int = 5  # n: adjacent kernel maps in the normalization window (odd)
    lrn_alpha: float = 1e-4  # alpha, NOT divided by n (torch.nn.LocalResponseNorm divides)
    lrn_beta: float = 0.75  # beta
    lrn_k: float = 2.0  # k
    init_std: float = 0.01  # standard deviation of the zero-mean Gaussian weight init
    # Derived in __post_init__:
    conv1_size: int = field(init=False)  # side of conv1's output maps (55 at 227)
    pool1_size: int = field(init=False)  # side after pool1 = conv2's output (27)
    pool2_size: int = field(init=False)  # side after pool2 = conv3-5's output (13)
    pool3_size: int = field(init=False)  # side after pool3 (6)
    fc6_in_features: int = field(init=False)  # 256 * pool3_size^2 (9216)

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "alexnet": {},
        # Same network at the paper's 227x227, ten classes: the CPU-friendly demo preset.
        "alexnet-10class": {"num_classes": 10},
    }

    def __post_init__(self) -> None:
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if self.in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {self.in_channels}")
        if self.groups not in (1, 2):
            raise ValueError(f"groups must be 1 (one tower) or 2 (the paper's two GPUs), got {self.groups}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lrn_size < 1 or self.lrn_size % 2 == 0:
            raise ValueError(f"lrn_size must be a positive odd number (paper: 5), got {self.lrn_size}")
        if self.init_std <= 0:
            raise ValueError(f"init_std must be > 0, got {self.init_std}")
        self.conv1_size = _conv_out(self.image_size, 11, stride=4)
        self.pool1_size = _conv_out(self.conv1_size, 3, stride=2)
        self.pool2_size = _conv_out(self.pool1_size, 3, stride=2)
        self.pool3_size = _conv_out(self.pool2_size, 3, stride=2)
        if self.pool3_size < 1:
            raise ValueError(f"image_size must be >= 67 so every pooling window fits, got {self.image_size}")
        self.fc6_in_features = 256 * self.pool3_size * self.pool3_size

    def num_parameters(self) -> int:
        """Closed-form parameter count (weights + biases of every layer)."""
        g = self.groups
        convs = [  # (in, out, kernel, groups)
            (self.in_channels, 96, 11, 1),
            (96, 256, 5, g),
            (256, 384, 3, 1),
            (384, 384, 3, g),
            (384, 256, 3, g),
        ]
        n = sum(c_out * (c_in // grp) * k * k + c_out for c_in, c_out, k, grp in convs)
        fcs = [(self.fc6_in_features, 4096), (4096, 4096), (4096, self.num_classes)]
        return n + sum(f_in * f_out + f_out for f_in, f_out in fcs)


# The paper's 60,965,224 parameters (it says "60 million"), checked at import from the formula.
assert AlexNetConfig.from_name("alexnet").num_parameters() == PAPER_PARAM_COUNT


class LocalResponseNorm(nn.Module):
    """Local response normalization across channels, Section 3.3 of the paper:

        b[i] = a[i] / (k + alpha * sum_{j = max(0, i - n//2)}^{min(N - 1, i + n//2)} a[j]^2) ** beta

    where i runs over the N channels at each spatial position. alpha is *not* divided by n, so
    this equals ``torch.nn.LocalResponseNorm(size=n, alpha=alpha * n, beta=beta, k=k)``.
    No parameters; input (B, C, H, W), output the same shape.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0) -> None:
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ValueError(f"LocalResponseNorm size must be a positive odd number, got {size}")
        self.size = size
        self.alpha = alpha
        self.beta = beta
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"LocalResponseNorm expects input of shape (B, C, H, W), got {tuple(x.shape)}")
        C = x.shape[1]
        half = self.size // 2
        squares = F.pad(x.square(), (0, 0, 0, 0, half, half))  # (B, C + 2*half, H, W), zero channels at the edges
        window_sum = sum(squares[:, j : j + C] for j in range(self.size))  # (B, C, H, W)
        return x / (self.k + self.alpha * window_sum).pow(self.beta)  # (B, C, H, W)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class AlexNet(nn.Module):
    """AlexNet: ``features`` (convolutions) then ``classifier`` (fully connected), logits out.

    Both are ``nn.Sequential`` of standard modules (Conv2d, ReLU, LocalResponseNorm, MaxPool2d,
    Linear, Dropout) with named children, so a fast drop-in can match conv -> ReLU -> pool runs.
    """

    def __init__(
        self, config: AlexNetConfig, *, device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None
    ) -> None:
        super().__init__()
        self.config = config
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        c, g = config, config.groups

        def lrn() -> LocalResponseNorm:
            return LocalResponseNorm(c.lrn_size, c.lrn_alpha, c.lrn_beta, c.lrn_k)

        def pool() -> nn.MaxPool2d:
            return nn.MaxPool2d(kernel_size=3, stride=2)  # overlapping pooling, s=2 < z=3 (Section 3.4)

        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(c.in_channels, 96, 11, stride=4, **kw)),
                    ("relu1", nn.ReLU()),
                    ("lrn1", lrn()),
                    ("pool1", pool()),
                    ("conv2", nn.Conv2d(96, 256, 5, padding=2, groups=g, **kw)),
                    ("relu2", nn.ReLU()),
                    ("lrn2", lrn()),
                    ("pool2", pool()),
                    ("conv3", nn.Conv2d(256, 384, 3, padding=1, **kw)),
                    ("relu3", nn.ReLU()),
                    ("conv4", nn.Conv2d(384, 384, 3, padding=1, groups=g, **kw)),
                    ("relu4", nn.ReLU()),
                    ("conv5", nn.Conv2d(384, 256, 3, padding=1, groups=g, **kw)),
                    ("relu5", nn.ReLU()),
                    ("pool5", pool()),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc6", nn.Linear(c.fc6_in_features, 4096, **kw)),
                    ("relu6", nn.ReLU()),
                    ("drop6", nn.Dropout(c.dropout)),
                    ("fc7", nn.Linear(4096, 4096, **kw)),
                    ("relu7", nn.ReLU()),
                    ("drop7", nn.Dropout(c.dropout)),
                    ("fc8", nn.Linear(4096, c.num_classes, **kw)),
                ]
            )
        )
        self.reset_parameters()

    # Layers whose biases the paper initializes to 1 ("the second, fourth, and fifth convolutional
    # layers, as well as ... the fully-connected hidden layers"); every other bias is 0.
    BIAS_ONE_LAYERS: ClassVar[tuple[str, ...]] = ("conv2", "conv4", "conv5", "fc6", "fc7")

    def reset_parameters(self) -> None:
        """Section 5: weights N(0, 0.01^2); biases 1 in conv2, conv4, conv5, FC6, FC7, else 0."""
        layers = {**dict(self.features.named_children()), **dict(self.classifier.named_children())}
        for name, layer in layers.items():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(layer.weight, mean=0.0, std=self.config.init_std)
                nn.init.constant_(layer.bias, 1.0 if name in self.BIAS_ONE_LAYERS else 0.0)

    def _check_input(self, images: Tensor) -> None:
        c = self.config
        expected = f"(B, {c.in_channels}, {c.image_size}, {c.image_size})"
        if images.dim() != 4:
            raise ValueError(f"AlexNet expects images of shape {expected}, got {images.dim()}-d {tuple(images.shape)}")
        _, channels, height, width = images.shape
        if channels != c.in_channels:
            raise ValueError(f"AlexNet expects {c.in_channels} channels {expected}, got {tuple(images.shape)}")
        if height != c.image_size or width != c.image_size:
            raise ValueError(
                f"AlexNet expects {c.image_size}x{c.image_size} images {expected}, got {tuple(images.shape)}"
            )

    def forward(self, images: Tensor) -> Tensor:
        """images (B, C, S, S) -> logits (B, num_classes)."""
        self._check_input(images)
        maps = self.features(images)  # (B, 256, 6, 6) at S = 227
        flat = torch.flatten(maps, 1)  # (B, 9216)
        return self.classifier(flat)  # (B, num_classes)


# The paper feeds "the (centered) raw RGB values of the pixels": 0-255 values minus the mean
# image, no scaling, so inputs have a standard deviation of tens. The N(0, 0.01^2) init and the
# LRN constants (k=2, alpha=1e-4) assume that scale: with unit-variance inputs the biases of 1
# swamp the signal and the network starts as a near-constant function that barely trains.
CENTERED_PIXEL_STD = 60.0


def _param_like(model: nn.Module) -> Tensor:
    return next(model.parameters())


def make_batch(model: AlexNet, batch_size: int, *, generator: torch.Generator) -> Batch:
    """Random images (B, C, S, S) ~ N(0, CENTERED_PIXEL_STD^2) and class labels (B,)."""
    c = model.config
    p = _param_like(model)
    shape = (batch_size, c.in_channels, c.image_size, c.image_size)
    images = CENTERED_PIXEL_STD * torch.randn(shape, generator=generator)  # (B, C, S, S)
    labels = torch.randint(0, c.num_classes, (batch_size,), generator=generator)
    return (images.to(device=p.device, dtype=p.dtype),), labels.to(p.device)


def loss(model: nn.Module, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
    """Cross-entropy of the logits against the labels (the paper's softmax objective)."""
    return F.cross_entropy(model(*inputs), target)


FAMILY = Family("alexnet", "Krizhevsky, Sutskever & Hinton 2012", AlexNetConfig, AlexNet, make_batch, loss)

SPECS = (
    FAMILY.preset(
        "alexnet", "alexnet", "AlexNet, 227x227 ImageNet, 1000 classes, two-GPU groups, LRN (61.0M params)",
        paper_param_count=PAPER_PARAM_COUNT,
        overfit=None,  # 61M parameters; alexnet-10class's recipe runs the very same layers
    ),
    FAMILY.preset(
        "alexnet-10class", "alexnet-10class", "AlexNet at 227x227 with a 10-class head (CPU demo preset, 56.9M params)",
        demo=True,
        # Dropout off so one batch can be memorized; image_size 67 (the smallest that fits every
        # window: the same layers on 15x15 conv1 maps, FC6 in = 256) makes a step ~10x cheaper.
        # With the paper's init the network starts nearly constant in its input and needs ~30 steps
        # to leave that regime (verified: 5 seeds, final/initial loss <= 0.002).
        overfit=OverfitRecipe(
            batch_size=2, steps=40, lr=1e-4, below=0.1, overrides=(("dropout", 0.0), ("image_size", 67))
        ),
    ),
)  # fmt: skip
