"""Fused 2-D convolution + activation + pooling, from the C++/CUDA extension (csrc/): what it
runs on, said without loading the extension.

Math, per NCHW input x (N, C, H, W), weight (K, C / groups, R, S) and bias (K,):

    z = conv2d(x, weight, bias; stride, padding, dilation, groups)          (N, K, OH, OW)
    a = act(z)      none | relu | tanh | scaled_tanh = 1.7159 * tanh(2/3 z) (LeCun et al. 1998, App. A)
    y = pool(a)     none | max | avg over a (kh, kw) window with stride (sh, sw), no padding,
                    floor mode: F.max_pool2d / F.avg_pool2d

The layers:
1. kernels: C++ / CUDA in csrc/ (the CPU kernels in csrc/conv2d_cpu_*.cpp, the CUDA ones in
   csrc/conv2d_cuda*.cu; no cuDNN, oneDNN or at::conv2d), registered with ``TORCH_LIBRARY(replab_fast, ...)``
   (the schema, once) and ``TORCH_LIBRARY_IMPL(replab_fast, CPU / CUDA, ...)``.
2. ``op.py``: the fake (meta) implementations and the autograd of ``torch.ops.replab_fast.conv2d``
   and ``conv2d_backward``, and the functional ``conv2d`` (``replab_fast.ops.conv2d``); importing
   it loads the extension.
3. ``reference.py``: ``conv2d_ref``, the chain the reference models run, which tests and
   benchmarks compare against.
4. the drop-in modules in ``replab_fast/nn/conv.py``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ... import _extension

__all__ = ["CPU_DTYPES", "CUDA_DTYPES", "unusable_reason"]

CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def unusable_reason(module: nn.Module) -> Optional[str]:
    """Why the extension cannot run ``module``'s tensors (not built or stale, a dtype or device it
    does not take), or None."""
    reason = _extension.unavailable_reason()
    if reason:
        return reason
    for name, tensor in module.named_parameters():
        if tensor.device.type == "cpu":
            if tensor.dtype not in CPU_DTYPES:
                return f"parameter {name} has dtype {tensor.dtype}; the CPU kernels support float32 and float64"
        elif tensor.device.type == "cuda":
            if not _extension.with_cuda():
                return "replab_fast._C was built without its CUDA kernels; rebuild it on a machine with nvcc"
            if tensor.dtype not in CUDA_DTYPES:
                return f"parameter {name} has dtype {tensor.dtype}; the CUDA kernels support float16, bfloat16, float32, float64"
        else:
            return f"parameter {name} is on {tensor.device}; the kernels run on the CPU and CUDA devices"
    return None
