"""What the Triton kernels share and can run on, said without importing triton.

One package per op (``rms_norm``, ``rope``, ``attention``, ``lstm``, and ``conv2d`` for the C++/CUDA
extension's glue). Each package's ``__init__`` holds what the op supports and why it cannot run
a module (imported by the drop-ins in ``replab_fast.nn``, on machines without Triton too); its
submodules hold the four layers: ``kernel.py`` (the ``@triton.jit`` device code), ``launch.py``
(host launchers: validate, reshape, allocate, pick block sizes, launch), ``op.py`` (the
``torch.library`` op with its fake implementation and autograd) and, where the reference model
has no module of the same function, ``reference.py`` (the plain-PyTorch reference the tests and
benchmarks compare against). ``_triton.py`` holds what the kernels share: the device dispatch
between compiled kernels (CUDA) and Triton's interpreter (CPU), and the op-registration helper.

Importing this package imports neither triton nor a kernel: ``unavailable_reason()`` says
whether the Triton kernels can be used here, and ``triton_unusable_reason(module)`` whether they
can run a given module's tensors, so that ``accelerate`` can report why a drop-in is not swapped in.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Optional

import torch
from torch import nn

__all__ = ["SUPPORTED_DTYPES", "triton_unusable_reason", "unavailable_reason"]

# The dtypes every Triton kernel here takes (computing in fp32, fp64 for fp64).
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DTYPE_NAMES = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> Optional[str]:
    """Why the Triton kernels cannot run in this environment, or None when they can.

    They run wherever ``triton`` imports: compiled on CUDA devices, through Triton's interpreter
    on the CPU. They also need ``torch.library.triton_op`` and ``wrap_triton`` (torch >= 2.6).
    """
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton; Linux only)"
    if not (hasattr(torch.library, "triton_op") and hasattr(torch.library, "wrap_triton")):
        return f"needs torch >= 2.6 (torch.library.triton_op / wrap_triton), this is torch {torch.__version__}"
    return None


def triton_unusable_reason(module: nn.Module) -> Optional[str]:
    """Why the Triton kernels cannot run ``module``'s parameters, or None: the check of every
    Triton drop-in (``rms_norm``, ``fused_add_rms_norm``, ``rope``; ``attention`` adds its own).

    The kernels take float16, bfloat16, float32 and float64 tensors on CUDA devices (compiled)
    and on the CPU (Triton's interpreter: correct, but far slower than PyTorch there).
    """
    reason = unavailable_reason()
    if reason is not None:
        return reason
    for name, tensor in module.named_parameters():
        if tensor.device.type not in ("cuda", "cpu"):
            return f"parameter {name} is on {tensor.device}; the kernels run on CUDA devices and the CPU"
        if tensor.dtype not in SUPPORTED_DTYPES:
            return f"parameter {name} has dtype {tensor.dtype}; the kernels support {_DTYPE_NAMES}"
    return None
