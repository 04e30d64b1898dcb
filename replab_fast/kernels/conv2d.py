"""Fused 2-D convolution + activation + pooling, from the C++/CUDA extension (csrc/).

Math, per NCHW input x (N, C, H, W), weight (K, C / groups, R, S) and bias (K,):

    z = conv2d(x, weight, bias; stride, padding, dilation, groups)          (N, K, OH, OW)
    a = act(z)      none | relu | tanh | scaled_tanh = 1.7159 * tanh(2/3 z) (LeCun et al. 1998, App. A)
    y = pool(a)     none | max | avg over a (kh, kw) window with stride (sh, sw), no padding,
                    floor mode: F.max_pool2d / F.avg_pool2d

The reference is ``conv2d_ref`` below: torch.nn.functional's conv2d, the activation and the
pooling, one after another (the chain the reference models run). The kernels are ours
(csrc/conv2d_cpu_*.cpp for the CPU, csrc/conv2d_cuda*.cu for CUDA); no cuDNN, oneDNN or at::conv2d.

Layers, as in every kernel file (shared/GUIDE.md section 1):
1. kernels: C++ / CUDA in csrc/, registered with ``TORCH_LIBRARY(replab_fast, ...)`` (the schema,
   once) and ``TORCH_LIBRARY_IMPL(replab_fast, CPU / CUDA, ...)``; loaded by
   ``replab_fast._extension.load()``, which raises ``ImportError`` saying how to build when the
   extension is missing or stale. Importing this module loads it.
2. ops ``torch.ops.replab_fast.conv2d`` -> (y, preact) and ``conv2d_backward``; here they get
   their fake (meta) implementations (``register_fake``) and the autograd formula
   (``register_autograd``), so they run under ``torch.compile`` and pass ``opcheck``.
3. ``conv2d``: the functional (``replab_fast.ops.conv2d`` is this function): normalizes the
   arguments, and asks the forward to save z only when a gradient will be needed and an
   activation or pooling is fused (the backward recomputes a, and the max-pool argmax, from z:
   one saved tensor the size of the conv output, no index tensor).
4. the drop-in modules in replab_fast/nn/conv.py.

Backward (the op ``conv2d_backward``): dz = act'(z) * unpool(dy) (max: all of a window's gradient
to its first maximum in row-major order, as torch's max_pool2d; avg: 1/(kh kw) to each element;
overlapping windows add up), then grad_bias = sum dz, grad_weight = correlate(x, dz),
grad_x = transposed-convolve(dz, weight).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import _extension

_extension.load()  # registers torch.ops.replab_fast.conv2d*; ImportError with the build command if missing

__all__ = ["ACTIVATIONS", "POOLS", "conv2d", "conv2d_ref", "normalize_pool", "conv_output_size"]

ACTIVATIONS = (None, "relu", "tanh", "scaled_tanh")
POOLS = (None, "max", "avg")
SCALED_TANH_A = 1.7159  # LeCun et al. 1998, Appendix A: f(a) = A tanh(S a)
SCALED_TANH_S = 2.0 / 3.0

IntPair = Union[int, Sequence[int]]
PoolSpec = Optional[tuple]  # None, (kind, kernel) or (kind, kernel, stride); kernel/stride int or pair


def _pair(value: IntPair, name: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"replab_fast.conv2d: {name} must be an int or a pair of ints, got {value!r}")
    return list(value)


def normalize_pool(pool: PoolSpec) -> tuple[str, list[int], list[int]]:
    """(kind, kernel pair, stride pair); kind "none" for no pooling. The stride defaults to the kernel."""
    if pool is None:
        return "none", [1, 1], [1, 1]
    if not isinstance(pool, (tuple, list)) or len(pool) not in (2, 3) or pool[0] not in ("max", "avg"):
        raise ValueError(f"replab_fast.conv2d: pool must be None, ('max' | 'avg', kernel) or ('max' | 'avg', kernel, stride), got {pool!r}")
    kernel = _pair(pool[1], "pool kernel")
    stride = _pair(pool[2], "pool stride") if len(pool) == 3 and pool[2] is not None else kernel
    return pool[0], kernel, stride


def conv_output_size(size, kernel: int, stride: int, padding: int, dilation: int):
    """Floor-mode output size of a convolution or pooling window (works on SymInts)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


INDEX_LIMIT = 2**31 - 1  # the kernels index rows and columns of the padded input with 32-bit ints


def resolve_padding(padding: Union[str, IntPair], weight: Tensor, stride: list[int], dilation: list[int]):
    """(symmetric padding per side (height, width), extra zeros (bottom, right) or None).

    ``padding`` as torch.nn.functional.conv2d takes it: an int, a pair, ``"valid"`` (none) or
    ``"same"`` (stride 1 only; the output has the input's size). For "same" with an even dilated
    kernel the total padding is odd: as in torch, the extra zero row / column goes at the bottom /
    right, and the kernels pad symmetrically, so that extra is padded onto x before the op.
    """
    if isinstance(padding, str):
        if padding == "valid":
            return [0, 0], None
        if padding != "same":
            raise ValueError(f"replab_fast.conv2d: padding must be an int, a pair, 'valid' or 'same', got {padding!r}")
        if stride != [1, 1]:
            raise ValueError(f"replab_fast.conv2d: padding='same' needs stride 1 (as in torch), got stride {tuple(stride)}")
        totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
        extra = (totals[0] % 2, totals[1] % 2)
        return [totals[0] // 2, totals[1] // 2], (extra if any(extra) else None)
    return _pair(padding, "padding"), None


def _check_sizes(x: Tensor, padding: list[int]) -> None:
    """A padding the kernels cannot index is an error that names it, not an overflow deep inside."""
    if x.dim() != 4 or any(p < 0 for p in padding):
        return  # the op's own checks name these
    for axis, (size, pad) in enumerate(zip(x.shape[2:], padding)):
        if size + 2 * pad > INDEX_LIMIT:
            name = ("height", "width")[axis]
            raise ValueError(
                f"replab_fast.conv2d: padding {pad} makes the padded input {size + 2 * pad} pixels in {name}, more "
                f"than the kernels index ({INDEX_LIMIT}); padding must be at most {(INDEX_LIMIT - size) // 2} here"
            )


def conv2d(
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
    """Convolution, activation and pooling in one op (one kernel launch for the forward on CUDA).

    Args:
        x: (N, C, H, W), any strides (copied to contiguous NCHW once when needed). CPU: float32 or
            float64; CUDA: float16, bfloat16, float32 (accumulating in fp32) or float64.
        weight: (K, C / groups, R, S), x's dtype and device. bias: (K,) or None.
        stride, dilation: int or (height, width). padding: int, (height, width), "valid" or
            "same" (stride 1; an odd total padding puts the extra zeros at the bottom / right, as
            torch does). groups: divides C and K (AlexNet's two-GPU split is groups=2).
        activation: None, "relu", "tanh" or "scaled_tanh" (LeNet-5's 1.7159 tanh(2x/3)).
        pool: None, ("max" | "avg", kernel, stride) with kernel and stride ints or pairs (the
            stride defaults to the kernel); no padding, floor mode.

    Returns:
        y (N, K, PH, PW) in x's dtype, contiguous. Differentiable in x, weight and bias.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"replab_fast.conv2d: activation must be one of {ACTIVATIONS}, got {activation!r}")
    kind, pool_kernel, pool_stride = normalize_pool(pool)
    if x.device.type == "cuda" and not _extension.with_cuda():
        raise RuntimeError(
            "replab_fast.conv2d: got CUDA tensors, but replab_fast._C was built without its CUDA kernels "
            f"(no nvcc or a CPU-only torch at build time); rebuild with `{_extension.BUILD_COMMAND}` on this machine"
        )
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    padding, extra = resolve_padding(padding, weight, stride, dilation)
    if extra is not None and isinstance(x, Tensor):
        x = F.pad(x, (0, extra[1], 0, extra[0]))  # "same" with an even kernel: torch's extra zeros
    _check_sizes(x, padding)
    fused = activation is not None or kind != "none"
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    out, _ = torch.ops.replab_fast.conv2d(
        x, weight, bias, stride, padding, dilation, int(groups), activation or "none", kind, pool_kernel,
        pool_stride, bool(fused and needs_grad),
    )  # fmt: skip
    return out


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
    kind, kernel, pool_stride = normalize_pool(pool)
    if kind == "max":
        y = F.max_pool2d(y, kernel, pool_stride)
    elif kind == "avg":
        y = F.avg_pool2d(y, kernel, pool_stride)
    return y


# --------------------------------------------------------------------------------------------
# Fake (meta) implementations and autograd of the ops the extension defines


@torch.library.register_fake("replab_fast::conv2d")
def _conv2d_fake(x, weight, bias, stride, padding, dilation, groups, activation, pool, pool_kernel, pool_stride,
                 save_preact):  # fmt: skip
    torch._check(x.dim() == 4, lambda: f"replab_fast.conv2d: input must be 4-D (N, C, H, W), got {x.dim()}-D")
    torch._check(weight.dim() == 4, lambda: f"replab_fast.conv2d: weight must be 4-D, got {weight.dim()}-D")
    torch._check(x.shape[1] == weight.shape[1] * groups, lambda: "replab_fast.conv2d: channel mismatch")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            torch._check(t.device == x.device, lambda: f"replab_fast.conv2d: input and {name} must be on the same device, got {x.device} and {t.device}")
            torch._check(t.dtype == x.dtype, lambda: f"replab_fast.conv2d: input and {name} must have the same dtype, got {x.dtype} and {t.dtype}")
    N, _, H, W = x.shape
    K, _, R, S = weight.shape
    OH = conv_output_size(H, R, stride[0], padding[0], dilation[0])
    OW = conv_output_size(W, S, stride[1], padding[1], dilation[1])
    PH, PW = OH, OW
    if pool != "none":
        PH = conv_output_size(OH, pool_kernel[0], pool_stride[0], 0, 1)
        PW = conv_output_size(OW, pool_kernel[1], pool_stride[1], 0, 1)
    out = x.new_empty((N, K, PH, PW))
    fused = activation != "none" or pool != "none"
    preact = x.new_empty((N, K, OH, OW)) if (save_preact and fused) else x.new_empty((0,))
    return out, preact


@torch.library.register_fake("replab_fast::conv2d_backward")
def _conv2d_backward_fake(grad_out, x, weight, preact, stride, padding, dilation, groups, activation, pool,
                          pool_kernel, pool_stride, output_mask):  # fmt: skip
    grad_x = x.new_empty(x.shape) if output_mask[0] else x.new_empty((0,))
    grad_w = weight.new_empty(weight.shape) if output_mask[1] else x.new_empty((0,))
    grad_b = x.new_empty((weight.shape[0],)) if output_mask[2] else x.new_empty((0,))
    return grad_x, grad_w, grad_b


def _setup_conv2d(ctx, inputs, output) -> None:
    x, weight, bias, stride, padding, dilation, groups, activation, pool, pool_kernel, pool_stride, _ = inputs
    _, preact = output
    ctx.save_for_backward(x, weight, preact)
    ctx.has_bias = bias is not None
    ctx.args = (stride, padding, dilation, groups, activation, pool, pool_kernel, pool_stride)


def _backward_conv2d(ctx, grad_out, _grad_preact):
    x, weight, preact = ctx.saved_tensors
    mask = [bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1]), bool(ctx.has_bias and ctx.needs_input_grad[2])]
    grad_x, grad_w, grad_b = torch.ops.replab_fast.conv2d_backward(grad_out, x, weight, preact, *ctx.args, mask)
    return (
        grad_x if mask[0] else None,
        grad_w if mask[1] else None,
        grad_b if mask[2] else None,
    ) + (None,) * 9


torch.library.register_autograd("replab_fast::conv2d", _backward_conv2d, setup_context=_setup_conv2d)
