"""LeNet-5.

Y. LeCun, L. Bottou, Y. Bengio and P. Haffner, "Gradient-Based Learning Applied to Document
Recognition", Proceedings of the IEEE 86(11):2278-2324, 1998. Section II-B (the network),
Section II-C (the loss, eq. 9), Appendix A (the squashing function and the initialization).

Paper vs code
-------------
* Architecture (``classic``): exactly Section II-B. 32x32 one-channel input, C1 (6 maps, 5x5),
  S2, C3 (16 maps, 5x5, the partial connection scheme of Table I), S4, C5 (120 maps, 5x5),
  F6 (84 units), then 10 Euclidean RBF output units. 60,000 trainable parameters, as in the
  paper (C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164).
* Squashing: every unit up to F6 (the C, S and F6 layers) is followed by
  f(a) = A tanh(S a) with A = 1.7159 and S = 2/3 (Appendix A), the module ``ScaledTanh``.
* Subsampling (S2, S4): "the four inputs to a unit are added, then multiplied by a trainable
  coefficient, and added to a trainable bias", one coefficient and one bias per map, then the
  squashing: module ``Subsampling`` (the sum, not the average, of the 2x2 window) followed by a
  separate ``ScaledTanh``.
* C3: Table I is written out below (``C3_CONNECTION_TABLE``) and implemented by
  ``PartialConv2d``, which stores only the 60 real 5x5 kernels (a gathered weight of shape
  (60, 5, 5)) and scatters them into a dense (16, 6, 5, 5) kernel at each forward, so absent
  connections are exactly zero, receive no gradient and are not counted as parameters.
* Output: Euclidean RBF units y_i = sum_j (x_j - w_ij)^2 (eq. 7) with FIXED parameter vectors
  (a buffer, not trainable), as in the paper, which fixes them by hand to +1/-1 codes of
  "stylized images of the corresponding character class drawn on a 7x12 bitmap". The paper
  prints the bitmaps of its ASCII set only as a figure (Fig. 3); the ten digit bitmaps below
  (``DIGIT_BITMAPS``, 7 wide x 12 tall, '#' = +1, '.' = -1) are drawn for this code in the same
  spirit, not copied from the figure. The forward of ``classic`` returns the RBF penalties
  (B, 10): LOWER is better, the prediction is the argmin (see ``LeNet5.predict``).
* Loss (``classic``): the MAP criterion of eq. (9),
  E = mean_p [ y_Dp(Z^p, W) + log(exp(-j) + sum_i exp(-y_i(Z^p, W))) ].
  The paper calls j "a positive constant" and gives no value; we use j = 10 (config field
  ``map_j``): a penalty of about 10 is what a correct F6 pattern a few output bits away from
  its code produces (each wrong bit costs about 4), while codes of different digits are tens
  of bits apart, so the "rubbish class" term competes with wrong classes only when they come
  close. With the RBF centres fixed, the collapse that the second term guards against cannot
  happen anyway; the term still pushes the wrong classes' penalties up.
* Initialization (Appendix A): every weight uniform in (-2.4/F_i, 2.4/F_i), F_i the fan-in of
  the unit the connection belongs to: 25 for C1, 4 for S2/S4 (the 2x2 inputs a coefficient
  multiplies), 75/100/150 for the C3 maps with 3/4/6 inputs, 400 for C5, 120 for F6. The
  paper does not single out the biases; we treat a bias as the weight of a constant input and
  draw it from the same range (the bias itself is not counted in F_i).
* Not implemented (outside a model file): the input normalization (background -0.1,
  foreground 1.175, mean ~0 and variance ~1), training by stochastic diagonal
  Levenberg-Marquardt, and the data. ``make_batch`` draws standard-normal images.
* ``modern`` is not from the paper: full C3 (a plain ``nn.Conv2d``), ReLU, 2x2 max pooling,
  and a linear output layer to 10 logits trained with cross-entropy (forward returns logits,
  higher is better). 61,706 parameters. It uses He-uniform initialization (He et al. 2015:
  weights uniform in +-sqrt(6/F_i) before a ReLU, +-sqrt(3/F_i) for the output layer, zero
  biases; config field ``init="he"``): with the paper's +-2.4/F_i the ReLU net's activations
  shrink by about 100x per layer and Adam overfitting a batch stalls or kills units for some
  seeds, while the paper's range suits the scaled tanh it was designed for.
* Layout for later fused kernels: the feature extractor is an ``nn.Sequential`` of named
  modules in conv -> activation -> pool(/subsampling) order (``c1, c1_act, s2, s2_act, c3,
  ...``); in ``classic`` each subsampling is itself followed by its own squashing.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import PresetConfig
from .registry import Batch, Family, OverfitRecipe, unwrap

# Table I of the paper: row i = S2 feature map, column j = C3 feature map; "X" = connected.
# Columns 0-5 take contiguous triples of S2 maps, 6-11 contiguous quadruples, 12-14
# discontinuous quadruples, 15 all six maps: 6*3 + 6*4 + 3*4 + 6 = 60 connections.
C3_CONNECTION_TABLE = """
    0 1 2 3 4 5 6 7 8 9 A B C D E F
0   X . . . X X X . . X X X X . X X
1   X X . . . X X X . . X X X X . X
2   X X X . . . X X X . . X . X X X
3   . X X X . . X X X X . . X . X X
4   . . X X X . . X X X X . X X . X
5   . . . X X X . . X X X X . X X X
"""


def parse_connection_table(text: str) -> tuple[tuple[bool, ...], ...]:
    """Parse a table drawn like ``C3_CONNECTION_TABLE`` into (n_inputs, n_outputs) booleans."""
    lines = [line.split() for line in text.strip().splitlines()]
    header, rows = lines[0], lines[1:]
    table = tuple(tuple(cell == "X" for cell in row[1:]) for row in rows)
    if any(len(row) != len(header) for row in table):
        raise ValueError("every row of the connection table needs one cell per column")
    return table


C3_TABLE: tuple[tuple[bool, ...], ...] = parse_connection_table(C3_CONNECTION_TABLE)  # (6, 16)

# The fixed RBF codes: one 7-wide x 12-tall bitmap per digit, '#' = +1, '.' = -1 (84 values).
DIGIT_BITMAPS: dict[int, tuple[str, ...]] = {
    0: (".......", "..###..", ".#...#.", "#.....#", "#.....#", "#.....#",
        "#.....#", "#.....#", "#.....#", ".#...#.", "..###..", "......."),
    1: (".......", "...#...", "..##...", ".#.#...", "...#...", "...#...",
        "...#...", "...#...", "...#...", "...#...", ".#####.", "......."),
    2: (".......", ".#####.", "#.....#", "......#", "......#", ".....#.",
        "....#..", "...#...", "..#....", ".#.....", "#######", "......."),
    3: (".......", "#######", ".....#.", "....#..", "...#...", "..####.",
        "......#", "......#", "......#", "#.....#", ".#####.", "......."),
    4: (".......", "....##.", "...#.#.", "..#..#.", ".#...#.", "#....#.",
        "#######", ".....#.", ".....#.", ".....#.", ".....#.", "......."),
    5: (".......", "#######", "#......", "#......", "######.", "......#",
        "......#", "......#", "......#", "#.....#", ".#####.", "......."),
    6: (".......", "....##.", "...#...", "..#....", ".#.....", "######.",
        "#.....#", "#.....#", "#.....#", "#.....#", ".#####.", "......."),
    7: (".......", "#######", "......#", ".....#.", "....#..", "...#...",
        "...#...", "..#....", "..#....", "..#....", "..#....", "......."),
    8: (".......", ".#####.", "#.....#", "#.....#", "#.....#", ".#####.",
        "#.....#", "#.....#", "#.....#", "#.....#", ".#####.", "......."),
    9: (".......", ".#####.", "#.....#", "#.....#", "#.....#", "#.....#",
        ".######", "......#", "......#", ".....#.", ".####..", "......."),
}
BITMAP_WIDTH, BITMAP_HEIGHT = 7, 12


def digit_codes() -> list[list[float]]:
    """The (10, 84) +1/-1 RBF codes, row d = the bitmap of digit d read row by row."""
    return [[1.0 if pixel == "#" else -1.0 for row in DIGIT_BITMAPS[d] for pixel in row] for d in range(10)]


@dataclass
class LeNet5Config(PresetConfig):
    variant: str = "classic"  # "classic" (the paper) or "modern" (ReLU, max-pool, full C3, logits)
    image_size: int = 32  # input height = width in pixels (the paper: 32x32)
    in_channels: int = 1  # input channels (grey levels)
    n_classes: int = 10  # output units (digits)
    kernel_size: int = 5  # C1, C3 and C5 kernels are kernel_size x kernel_size
    c1_maps: int = 6  # feature maps in C1 (and S2)
    c3_maps: int = 16  # feature maps in C3 (and S4)
    c5_maps: int = 120  # feature maps in C5
    f6_units: int = 84  # units in F6 (= 7x12, the size of the RBF codes)
    map_j: float = 10.0  # the positive constant j of the MAP criterion, eq. (9) (classic only)
    init: str = "lecun98"  # "lecun98": uniform(+-2.4/F_i) (Appendix A); "he": He-uniform for ReLU nets

    # Derived in __post_init__.
    c1_size: int = field(init=False)  # C1 map side: image_size - kernel_size + 1
    s2_size: int = field(init=False)  # S2 map side: c1_size / 2
    c3_size: int = field(init=False)  # C3 map side
    s4_size: int = field(init=False)  # S4 map side
    c5_size: int = field(init=False)  # C5 map side (1 for 32x32 inputs)
    f6_in_features: int = field(init=False)  # c5_maps * c5_size**2 (120)
    partial_c3: bool = field(init=False)  # Table I connections (classic) or all (modern)

    PRESETS = {
        "classic": dict(variant="classic"),
        "modern": dict(variant="modern", init="he"),
    }

    def __post_init__(self) -> None:
        if self.variant not in ("classic", "modern"):
            raise ValueError(f"variant must be 'classic' or 'modern', got {self.variant!r}")
        sizes = ("image_size", "in_channels", "n_classes", "kernel_size", "c1_maps", "c3_maps", "c5_maps", "f6_units")
        for name in sizes:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.init not in ("lecun98", "he"):
            raise ValueError(f"init must be 'lecun98' or 'he', got {self.init!r}")
        if self.init == "he" and self.variant != "modern":
            raise ValueError("init='he' (for ReLU nets) needs variant='modern'; classic uses 'lecun98'")
        self.partial_c3 = self.variant == "classic"
        if self.variant == "classic":
            if (self.c1_maps, self.c3_maps) != (len(C3_TABLE), len(C3_TABLE[0])):
                raise ValueError(
                    f"classic C3 uses Table I, which needs c1_maps=6 and c3_maps=16, "
                    f"got c1_maps={self.c1_maps}, c3_maps={self.c3_maps}"
                )
            if (self.n_classes, self.f6_units) != (len(DIGIT_BITMAPS), BITMAP_WIDTH * BITMAP_HEIGHT):
                raise ValueError(
                    f"classic RBF codes are 10 digit bitmaps of 7x12, which need n_classes=10 and "
                    f"f6_units=84, got n_classes={self.n_classes}, f6_units={self.f6_units}"
                )
            if self.map_j <= 0:
                raise ValueError(f"map_j must be a positive constant (eq. 9), got {self.map_j}")
        self.c1_size = self.image_size - self.kernel_size + 1
        self.s2_size = self.c1_size // 2
        self.c3_size = self.s2_size - self.kernel_size + 1
        self.s4_size = self.c3_size // 2
        self.c5_size = self.s4_size - self.kernel_size + 1
        if self.c1_size < 2 or self.c1_size % 2 or self.c3_size < 2 or self.c3_size % 2 or self.c5_size < 1:
            raise ValueError(
                f"image_size={self.image_size} with kernel_size={self.kernel_size} does not fit LeNet-5: "
                f"C1 and C3 maps must have even sides for 2x2 subsampling and C5 must be >= 1x1 "
                f"(got C1 {self.c1_size}, C3 {self.c3_size}, C5 {self.c5_size}); the paper uses 32"
            )
        self.f6_in_features = self.c5_maps * self.c5_size**2


# ----------------------------------------------------------------------------------------
# Layers


def lecun98_uniform_(tensor: Tensor, fan_in: int) -> Tensor:
    """Appendix A: uniform in (-2.4 / F_i, 2.4 / F_i), F_i the fan-in of the unit."""
    bound = 2.4 / fan_in
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


class ScaledTanh(nn.Module):
    """The squashing function f(a) = A tanh(S a), A = 1.7159, S = 2/3 (Appendix A)."""

    amplitude: float = 1.7159
    slope: float = 2.0 / 3.0

    def forward(self, x: Tensor) -> Tensor:
        return self.amplitude * torch.tanh(self.slope * x)

    def extra_repr(self) -> str:
        return f"amplitude={self.amplitude}, slope={self.slope:.6f}"


class Subsampling(nn.Module):
    """S2/S4: sum of each non-overlapping 2x2 window, times a trainable coefficient, plus a
    trainable bias, one of each per feature map (2 parameters per map). No squashing here: the
    model follows it with a ``ScaledTanh``."""

    def __init__(self, channels: int, window: int = 2, *, device=None, dtype=None) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.channels = channels
        self.window = window
        self.weight = nn.Parameter(torch.empty(channels, **factory))  # (C,) the coefficients
        self.bias = nn.Parameter(torch.empty(channels, **factory))  # (C,)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.window * self.window  # the unit's inputs: its 2x2 window
        lecun98_uniform_(self.weight, fan_in)
        lecun98_uniform_(self.bias, fan_in)

    def forward(self, x: Tensor) -> Tensor:
        window_sum = F.avg_pool2d(x, self.window) * (self.window * self.window)  # (B, C, H/2, W/2)
        return window_sum * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.channels}, window={self.window}"


class PartialConv2d(nn.Module):
    """A valid, stride-1 convolution in which output map j sees only the input maps i with
    ``table[i][j]`` (C3 with Table I).

    Only the real kernels are stored: ``weight`` is (n_connections, k, k), one kernel per
    connection, ordered by output map then input map (``connection_index`` says which dense
    (out, in) slot each fills). ``dense_weight()`` scatters them into an (out, in, k, k) kernel
    whose absent connections are exactly zero and get no gradient.
    """

    def __init__(
        self, table: Sequence[Sequence[bool]], kernel_size: int, *, device=None, dtype=None
    ) -> None:
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        self.in_channels = len(table)
        self.out_channels = len(table[0])
        self.kernel_size = kernel_size
        pairs = [(j, i) for j in range(self.out_channels) for i in range(self.in_channels) if table[i][j]]
        inputs_per_output = [sum(1 for (jj, _) in pairs if jj == j) for j in range(self.out_channels)]
        if min(inputs_per_output) < 1:
            raise ValueError("every output map of a partial convolution needs at least one input map")
        self.inputs_per_output = tuple(inputs_per_output)  # (out,) the number of connected input maps
        self.n_connections = len(pairs)
        self.register_buffer(
            "table", torch.tensor([list(map(bool, row)) for row in table], dtype=torch.bool, device=device),
            persistent=False,
        )  # (in, out)
        self.register_buffer(
            "connection_index",
            torch.tensor([j * self.in_channels + i for (j, i) in pairs], dtype=torch.long, device=device),
            persistent=False,
        )  # (n_connections,) flat (out, in) slot of each stored kernel
        self.weight = nn.Parameter(torch.empty(self.n_connections, kernel_size, kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(self.out_channels, **factory))  # (out,)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        start = 0
        for j, n_inputs in enumerate(self.inputs_per_output):
            fan_in = n_inputs * self.kernel_size * self.kernel_size  # 75, 100 or 150 in C3
            lecun98_uniform_(self.weight[start : start + n_inputs], fan_in)
            lecun98_uniform_(self.bias[j : j + 1], fan_in)
            start += n_inputs

    def dense_weight(self) -> Tensor:
        k = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels * self.in_channels, k, k)  # (out*in, k, k)
        dense = dense.index_copy(0, self.connection_index, self.weight)  # (out*in, k, k)
        return dense.view(self.out_channels, self.in_channels, k, k)  # (out, in, k, k)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)  # (B, out, H-k+1, W-k+1)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"connections={self.n_connections}"
        )


class EuclideanRBF(nn.Module):
    """Output layer: y_i = sum_j (x_j - w_ij)^2 with fixed centres w (a buffer, eq. 7).

    Returns penalties: the lower y_i, the better x matches class i."""

    def __init__(self, centers: Sequence[Sequence[float]], *, device=None, dtype=None) -> None:
        super().__init__()
        self.register_buffer("centers", torch.tensor(centers, device=device, dtype=dtype))  # (K, N)

    def forward(self, x: Tensor) -> Tensor:
        diff = x.unsqueeze(1) - self.centers.unsqueeze(0)  # (B, K, N)
        return diff.pow(2).sum(dim=-1)  # (B, K)

    def extra_repr(self) -> str:
        n_classes, n_inputs = self.centers.shape
        return f"in_features={n_inputs}, classes={n_classes}, fixed centers"


def map_loss(penalties: Tensor, target: Tensor, j: float) -> Tensor:
    """The MAP criterion, eq. (9): mean over the batch of
    y_target + log(exp(-j) + sum_i exp(-y_i)). ``penalties`` (B, K), ``target`` (B,) in [0, K)."""
    y_target = penalties.gather(1, target.unsqueeze(1)).squeeze(1)  # (B,)
    rubbish = penalties.new_full((penalties.shape[0], 1), -j)  # (B, 1) the log of exp(-j)
    competition = torch.logsumexp(torch.cat([rubbish, -penalties], dim=1), dim=1)  # (B,)
    return (y_target + competition).mean()


# ----------------------------------------------------------------------------------------
# The model


class LeNet5(nn.Module):
    """LeNet-5. ``forward`` returns (B, 10) RBF penalties for ``classic`` (lower is better) and
    (B, 10) logits for ``modern`` (higher is better); ``predict`` returns class indices."""

    def __init__(self, config: LeNet5Config, *, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        factory = dict(device=device, dtype=dtype)
        c, k = config, config.kernel_size
        if c.variant == "classic":
            self.features = nn.Sequential(OrderedDict([
                ("c1", nn.Conv2d(c.in_channels, c.c1_maps, k, **factory)),
                ("c1_act", ScaledTanh()),
                ("s2", Subsampling(c.c1_maps, **factory)),
                ("s2_act", ScaledTanh()),
                ("c3", PartialConv2d(C3_TABLE, k, **factory)),
                ("c3_act", ScaledTanh()),
                ("s4", Subsampling(c.c3_maps, **factory)),
                ("s4_act", ScaledTanh()),
                ("c5", nn.Conv2d(c.c3_maps, c.c5_maps, k, **factory)),
                ("c5_act", ScaledTanh()),
            ]))  # fmt: skip
            self.classifier = nn.Sequential(OrderedDict([
                ("flatten", nn.Flatten()),
                ("f6", nn.Linear(c.f6_in_features, c.f6_units, **factory)),
                ("f6_act", ScaledTanh()),
                ("output", EuclideanRBF(digit_codes(), **factory)),
            ]))  # fmt: skip
        else:
            self.features = nn.Sequential(OrderedDict([
                ("c1", nn.Conv2d(c.in_channels, c.c1_maps, k, **factory)),
                ("c1_act", nn.ReLU()),
                ("s2", nn.MaxPool2d(2)),
                ("c3", nn.Conv2d(c.c1_maps, c.c3_maps, k, **factory)),
                ("c3_act", nn.ReLU()),
                ("s4", nn.MaxPool2d(2)),
                ("c5", nn.Conv2d(c.c3_maps, c.c5_maps, k, **factory)),
                ("c5_act", nn.ReLU()),
            ]))  # fmt: skip
            self.classifier = nn.Sequential(OrderedDict([
                ("flatten", nn.Flatten()),
                ("f6", nn.Linear(c.f6_in_features, c.f6_units, **factory)),
                ("f6_act", nn.ReLU()),
                ("output", nn.Linear(c.f6_units, c.n_classes, **factory)),
            ]))  # fmt: skip
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Appendix A: every weight and bias uniform in (-2.4/F_i, 2.4/F_i), F_i = fan-in
        (``init="lecun98"``), or He-uniform (``init="he"``, the modern preset)."""
        if self.config.init == "he":
            self._reset_parameters_he()
            return
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            elif isinstance(module, nn.Linear):
                fan_in = module.in_features
            elif isinstance(module, (Subsampling, PartialConv2d)):
                module.reset_parameters()  # fan-in per map, see the class
                continue
            else:
                continue
            lecun98_uniform_(module.weight, fan_in)
            lecun98_uniform_(module.bias, fan_in)

    def _reset_parameters_he(self) -> None:
        """He-uniform: +-sqrt(6/F_i) for layers before a ReLU, +-sqrt(3/F_i) for the output."""
        output_layer = self.classifier.output
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nonlinearity = "linear" if module is output_layer else "relu"
                nn.init.kaiming_uniform_(module.weight, nonlinearity=nonlinearity)
                nn.init.zeros_(module.bias)

    def _validate(self, x: Tensor) -> None:
        c = self.config
        expected = f"(B, {c.in_channels}, {c.image_size}, {c.image_size})"
        if x.dim() != 4:
            raise ValueError(f"LeNet5 expects a 4-D input {expected}, got {x.dim()}-D shape {tuple(x.shape)}")
        if x.shape[1] != c.in_channels:
            raise ValueError(
                f"LeNet5 expects {c.in_channels} input channel(s) {expected}, "
                f"got {x.shape[1]} in shape {tuple(x.shape)}"
            )
        if tuple(x.shape[2:]) != (c.image_size, c.image_size):
            raise ValueError(
                f"LeNet5 expects {c.image_size}x{c.image_size} images {expected}, "
                f"got {x.shape[2]}x{x.shape[3]} in shape {tuple(x.shape)}"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._validate(x)  # x: (B, 1, 32, 32)
        features = self.features(x)  # (B, 120, 1, 1)
        return self.classifier(features)  # (B, 10) penalties (classic) or logits (modern)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Eq. (9) on the penalties (classic) or cross-entropy on the logits (modern)."""
        if not (target.dim() == 1 and target.shape[0] == output.shape[0]):
            raise ValueError(f"target must have shape ({output.shape[0]},), got {tuple(target.shape)}")
        in_range_checkable = target.numel() > 0 and target.device.type != "meta"
        if in_range_checkable and (int(target.min()) < 0 or int(target.max()) >= self.config.n_classes):
            raise ValueError(f"target classes must be in [0, {self.config.n_classes}), got {target.tolist()}")
        if self.config.variant == "classic":
            return map_loss(output, target, self.config.map_j)
        return F.cross_entropy(output, target)

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        output = self(x)  # (B, 10)
        if self.config.variant == "classic":
            return output.argmin(dim=1)  # (B,) the class with the smallest penalty
        return output.argmax(dim=1)  # (B,)


# ----------------------------------------------------------------------------------------
# Registry


def _make_batch(model: nn.Module, batch_size: int, *, generator: torch.Generator) -> Batch:
    param = next(model.parameters())
    c = model.config
    images = torch.randn(batch_size, c.in_channels, c.image_size, c.image_size, generator=generator)
    labels = torch.randint(0, c.n_classes, (batch_size,), generator=generator)
    return (images.to(device=param.device, dtype=param.dtype),), labels.to(param.device)


def _loss(model: nn.Module, inputs: tuple[Tensor, ...], target: Tensor) -> Tensor:
    """The MAP criterion of eq. (9) on the RBF penalties (classic), cross-entropy on the logits (modern)."""
    return unwrap(model).loss(model(*inputs), target)  # the forward through a DDP / compile wrapper


FAMILY = Family("lenet5", "LeCun et al. 1998", LeNet5Config, LeNet5, _make_batch, _loss)

SPECS = (
    FAMILY.preset(
        "lenet5-classic", "classic",
        "LeNet-5 as published: Table I C3, trainable subsampling, scaled tanh, fixed RBF output, MAP loss",
        paper_param_count=60_000, demo=True, overfit=OverfitRecipe(batch_size=4, steps=60, lr=1e-2, below=0.1),
    ),
    FAMILY.preset(
        "lenet5-modern", "modern", "LeNet-5 layout with full C3, ReLU, max pooling and a linear softmax output",
        overfit=OverfitRecipe(batch_size=4, steps=60, lr=3e-3, below=0.1),
    ),
)  # fmt: skip
