"""The conv2d kernel's reference: torch.nn.functional's conv2d, then the activation, then the
pooling, one after another (the chain the reference models run). Tests and benchmarks compare
the extension against it.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["SCALED_TANH_A", "SCALED_TANH_S", "activation_ref", "conv2d_ref", "pool_args"]

SCALED_TANH_A = 1.7159  # LeCun et al. 1998, Appendix A: f(a) = A tanh(S a)
SCALED_TANH_S = 2.0 / 3.0

IntPair = Union[int, Sequence[int], str]
PoolSpec = Optional[tuple]  # None, (kind, kernel) or (kind, kernel, stride); kernel/stride int or pair


def pool_args(pool: PoolSpec) -> tuple[Optional[str], object, object]:
    """(kind or None, kernel, stride) of a pool spec, the stride defaulting to the kernel."""
    if pool is None:
        return None, None, None
    kernel = pool[1]
    stride = pool[2] if len(pool) == 3 and pool[2] is not None else kernel
    return pool[0], kernel, stride


def activation_ref(z: Tensor, activation: Optional[str]) -> Tensor:
    """The activation of the reference chain, in torch ops."""
    if activation is None:
        return z
    if activation == "relu":
        return F.relu(z)
    if activation == "tanh":
        return torch.tanh(z)
    if activation == "scaled_tanh":  # as replab_fast.models.lenet.ScaledTanh
        return SCALED_TANH_A * torch.tanh(SCALED_TANH_S * z)
    raise ValueError(f"unknown activation {activation!r}")


def conv2d_ref(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    activation: Optional[str] = None,
    pool: PoolSpec = None,
) -> Tensor:
    """The reference chain: F.conv2d, then the activation, then F.max_pool2d / F.avg_pool2d."""
    y = activation_ref(F.conv2d(x, weight, bias, stride, padding, dilation, groups), activation)
    kind, kernel, pool_stride = pool_args(pool)
    if kind == "max":
        y = F.max_pool2d(y, kernel, pool_stride)
    elif kind == "avg":
        y = F.avg_pool2d(y, kernel, pool_stride)
    return y
