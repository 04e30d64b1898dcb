"""Drop-in convolutions running ``replab_fast.ops.conv2d`` (the C++/CUDA extension, csrc/).

Kernel "conv2d" (one module for one module):

- ``Conv2d`` for ``torch.nn.Conv2d`` (LeNet-5's C1/C5, AlexNet's conv1-5, the conv autoencoder's
  stride-2 convs): same parameters and state_dict keys; zero padding only (``padding_mode``
  "zeros"; any int, pair, "valid" or "same" padding).
- ``PartialConv2d`` for LeNet-5's ``PartialConv2d`` (C3 with Table I): the reference's own
  ``dense_weight()`` scatters the 60 stored kernels into the (16, 6, 5, 5) kernel with exact zeros
  at every forward (absent connections get no gradient, as in the reference), then the
  extension convolves with it.

Kernel "conv2d_fused" (a run of modules for one kernel):

- ``ConvSequential`` for ``torch.nn.Sequential``: every run ``conv -> activation -> pool`` (either
  of the last two optional, at least one present) in the Sequential becomes one
  ``replab_fast.ops.conv2d`` call with the activation and the pooling in its epilogue. The
  conv's position gets a ``FusedConv2d`` / ``FusedPartialConv2d`` (the conv's own weight and bias
  objects: state_dict keys and parameters unchanged), the activation's and the pool's
  positions get a parameter-free ``Fused`` pass-through that names where its work went. Every
  other child is kept as it is (and ``accelerate`` then walks into it).
  Fused: activations ``nn.ReLU``, ``nn.Tanh``, LeNet-5's ``ScaledTanh``; pools ``nn.MaxPool2d`` and
  ``nn.AvgPool2d`` without padding, dilation, ceil_mode, return_indices or divisor_override.
  What that gives on the reference models:
  * LeNet-5 modern: (c1, relu, max-pool), (c3, relu, max-pool), (c5, relu): three launches.
  * LeNet-5 classic: (c1, scaled tanh), (c3 partial, scaled tanh), (c5, scaled tanh). S2 and S4
    (``Subsampling``: the 2x2 sum times a trainable coefficient plus a trainable bias, then their
    own squashing) stay the reference modules: fusing them would need a per-channel trainable
    affine epilogue and its gradient, which the kernel does not have (yet).
  * AlexNet: (conv1, relu), (conv2, relu), (conv3, relu), (conv4, relu), (conv5, relu, max-pool);
    the local response normalization between relu1/2 and pool1/2 stays, so those pools do too.
  * conv autoencoder: (conv1, relu), (conv2, relu), stride 2.

Checks (``accelerate`` reports them): the extension is built and current; tensors on the CPU
(float32 / float64) or CUDA (float16 / bfloat16 / float32 / float64, with an extension built with
CUDA); zero padding. Importing this module does not load the extension.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple, Optional

from torch import Tensor, nn

from .. import _extension
from ..drop_in import adopt_tensors
from ..kernels import conv2d as conv_kernel
from ..models import lenet

__all__ = [
    "Conv2d",
    "ConvSequential",
    "Fused",
    "FusedConv2d",
    "FusedPartialConv2d",
    "PartialConv2d",
    "conv_unusable_reason",
    "find_fusable_runs",
    "FusableRun",
    "has_convolution",
    "sequential_unusable_reason",
]

_CONVOLUTIONS = (nn.Conv2d, lenet.PartialConv2d)  # the reference classes the extension runs


def _conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation, groups, activation, pool):
    from ..kernels.conv2d.op import conv2d  # loads the extension (checked at swap time)

    return conv2d(x, weight, bias, stride, padding, dilation, groups, activation, pool)


def _zero_padding_reason(conv: nn.Conv2d) -> Optional[str]:
    """Why the kernels cannot pad like ``conv``, or None (they pad with zeros: any int, pair,
    "valid" or "same" padding, as torch.nn.functional.conv2d takes it)."""
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} (the kernels pad with zeros only)"
    return None


def conv_unusable_reason(module: nn.Module) -> Optional[str]:
    """Why the extension cannot run ``module`` (an nn.Conv2d or LeNet-5's PartialConv2d), or None."""
    reason = conv_kernel.unusable_reason(module)
    if reason is None and isinstance(module, nn.Conv2d):
        reason = _zero_padding_reason(module)
    return reason


# --------------------------------------------------------------------------------------------
# One module for one module


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` through ``replab_fast.ops.conv2d``, optionally with a fused activation and
    pooling (``FusedConv2d``). Same parameters (``weight``, ``bias``) and state_dict keys."""

    activation: Optional[str] = None
    pool: Optional[tuple] = None

    def forward(self, x: Tensor) -> Tensor:
        why = _zero_padding_reason(self)
        if why:
            raise RuntimeError(f"replab_fast.nn.Conv2d: {why}")
        return _conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups,
                       self.activation, self.pool)  # (N, K, PH, PW)  # fmt: skip

    @classmethod
    def from_reference(cls, ref: nn.Conv2d, **fused) -> "Conv2d":
        """A drop-in sharing ``ref``'s weight and bias (the same tensor objects)."""
        fast = cls(
            ref.in_channels, ref.out_channels, ref.kernel_size, ref.stride, ref.padding, ref.dilation, ref.groups,
            ref.bias is not None, ref.padding_mode, device="meta", dtype=ref.weight.dtype, **fused,
        )  # fmt: skip
        return adopt_tensors(fast, ref)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", kernel=replab_fast.ops.conv2d"


class _FusedEpilogue:
    """The activation and pooling that a fused convolution applies in its kernel's epilogue
    (mixed in before the convolution drop-in, whose forward passes them to the op)."""

    def __init__(self, *args, activation: Optional[str] = None, pool: Optional[tuple] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.activation = activation
        self.pool = pool

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation}, pool={self.pool}"


class FusedConv2d(_FusedEpilogue, Conv2d):
    """``nn.Conv2d`` + activation + pooling in one ``replab_fast.ops.conv2d`` call."""


class PartialConv2d(lenet.PartialConv2d):
    """LeNet-5's C3 (``PartialConv2d``, Table I) through ``replab_fast.ops.conv2d``: the dense
    kernel is scattered from the stored connections at every forward, exactly as the
    reference does, so absent connections are exact zeros and get no gradient."""

    activation: Optional[str] = None
    pool: Optional[tuple] = None

    def forward(self, x: Tensor) -> Tensor:
        return _conv2d(x, self.dense_weight(), self.bias, 1, 0, 1, 1, self.activation, self.pool)

    @classmethod
    def from_reference(cls, ref: lenet.PartialConv2d, **fused) -> "PartialConv2d":
        fast = cls(ref.table.tolist(), ref.kernel_size, device="meta", dtype=ref.weight.dtype, **fused)
        return adopt_tensors(fast, ref)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", kernel=replab_fast.ops.conv2d"


class FusedPartialConv2d(_FusedEpilogue, PartialConv2d):
    """LeNet-5's C3 + activation + pooling in one ``replab_fast.ops.conv2d`` call."""


class Fused(nn.Module):
    """The place of a module whose work a fused convolution earlier in the Sequential does: the
    identity. Parameter-free, like the modules it stands for."""

    def __init__(self, replaced: str, into: str) -> None:
        super().__init__()
        self.replaced = replaced  # the reference module's class name
        self.into = into  # the name of the fused convolution in the Sequential

    def forward(self, x: Tensor) -> Tensor:
        return x

    def extra_repr(self) -> str:
        return f"{self.replaced} fused into {self.into}"


# --------------------------------------------------------------------------------------------
# Runs of a Sequential


def _activation_of(module: nn.Module) -> Optional[str]:
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.Tanh:
        return "tanh"
    if type(module) is lenet.ScaledTanh and (module.amplitude, module.slope) == (1.7159, 2.0 / 3.0):
        return "scaled_tanh"
    return None


def _pool_of(module: nn.Module) -> Optional[tuple]:
    def pair(v):
        return (v, v) if isinstance(v, int) else tuple(v)

    if type(module) is nn.MaxPool2d:
        if (pair(module.padding) != (0, 0) or pair(module.dilation) != (1, 1) or module.ceil_mode
                or module.return_indices):  # fmt: skip
            return None
        return ("max", pair(module.kernel_size), pair(module.stride if module.stride is not None else module.kernel_size))
    if type(module) is nn.AvgPool2d:
        if pair(module.padding) != (0, 0) or module.ceil_mode or module.divisor_override is not None:
            return None
        return ("avg", pair(module.kernel_size), pair(module.stride if module.stride is not None else module.kernel_size))
    return None


class FusableRun(NamedTuple):
    """conv -> activation -> pool children of a Sequential that one fused conv2d call replaces."""

    conv: str  # the convolution's child name
    activation_name: Optional[str]  # the activation's child name, None when there is none
    pool_name: Optional[str]  # the pooling's child name, None when there is none
    activation: Optional[str]  # the op's activation= ("relu", "tanh", "scaled_tanh")
    pool: Optional[tuple]  # the op's pool= (("max" | "avg", kernel, stride))

    @property
    def fused_away(self) -> tuple[str, ...]:
        """The children whose work the fused convolution does."""
        return tuple(n for n in (self.activation_name, self.pool_name) if n)


def find_fusable_runs(seq: nn.Sequential) -> list[FusableRun]:
    """Every run in ``seq`` whose convolution the extension can run here, with at least an
    activation or a pool to fuse."""
    children = list(seq.named_children())
    runs = []
    i = 0
    while i < len(children):
        name, module = children[i]
        if type(module) not in _CONVOLUTIONS or conv_unusable_reason(module):
            i += 1
            continue
        j = i + 1
        act_name = activation = pool_name = pool = None
        if j < len(children) and _activation_of(children[j][1]):
            act_name, activation = children[j][0], _activation_of(children[j][1])
            j += 1
        if j < len(children) and _pool_of(children[j][1]):
            pool_name, pool = children[j][0], _pool_of(children[j][1])
            j += 1
        if act_name or pool_name:
            runs.append(FusableRun(name, act_name, pool_name, activation, pool))
        i = j
    return runs


def sequential_unusable_reason(seq: nn.Sequential) -> Optional[str]:
    reason = _extension.unavailable_reason()
    if reason:
        return reason
    if not find_fusable_runs(seq):
        convs = [m for m in seq.children() if type(m) in _CONVOLUTIONS]
        if convs:
            why = [r for r in map(conv_unusable_reason, convs) if r]
            return why[0] if why else "no convolution here is followed by an activation or a pooling to fuse"
        return "no convolution in this Sequential"
    return None


class ConvSequential(nn.Sequential):
    """``nn.Sequential`` whose conv -> activation -> pool runs are fused (see the module docstring)."""

    @classmethod
    def from_reference(cls, ref: nn.Sequential) -> "ConvSequential":
        runs = {run.conv: run for run in find_fusable_runs(ref)}
        fused_into = {other: run.conv for run in runs.values() for other in run.fused_away}
        children = OrderedDict()
        for name, module in ref.named_children():
            if name in runs:
                fused_cls = FusedConv2d if type(module) is nn.Conv2d else FusedPartialConv2d
                children[name] = fused_cls.from_reference(module, activation=runs[name].activation, pool=runs[name].pool)
            elif name in fused_into:
                children[name] = Fused(type(module).__name__, fused_into[name])
            else:
                children[name] = module
        fast = cls(children)
        fast.train(ref.training)
        return fast


def has_convolution(seq: nn.Sequential) -> bool:
    """Whether ``seq`` holds a convolution at all: the fused drop-in is about those Sequentials only."""
    return any(type(m) in _CONVOLUTIONS for m in seq.children())
