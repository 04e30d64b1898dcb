"""Triton kernels, one file per op (rms_norm.py, rope.py, ...).

Each file holds four layers: private ``@triton.jit`` kernels, host launchers
(``<op>_forward`` / ``<op>_backward``: validate, reshape, allocate, pick block sizes, launch),
the ``torch.library`` op registration with autograd and fake implementations (namespace
``replab_fast``), and the plain-PyTorch reference the tests and benchmarks compare against.
``_triton.py`` holds what they share: the device dispatch between compiled kernels (CUDA) and
Triton's interpreter (CPU), and the op-registration helper.

Importing this package imports neither triton nor a kernel file: ``unavailable_reason()`` says
whether the kernels can be used here, so that ``replab_fast.nn`` can register its drop-ins (and
``accelerate`` can report why they are not swapped in) on a machine without Triton.
"""

from __future__ import annotations

import importlib.util
from typing import Optional

import torch

__all__ = ["unavailable_reason"]


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
