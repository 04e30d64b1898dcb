"""Drop-in fast RMSNorm for ``replab_fast.models.llama.RMSNorm`` (kernel name "rms_norm").

Same parameter (``weight``, shape (dim,)) and state_dict key as the reference; the forward runs
``replab_fast.ops.rms_norm`` (a Triton kernel: compiled on CUDA, interpreted on the CPU).
"""

from typing import Optional

import torch
from torch import Tensor, nn

from ..kernels import unavailable_reason
from ..models import llama as reference
from ..swap import adopt_tensors, register_drop_in

_UNAVAILABLE = unavailable_reason()  # None where the Triton kernels can run
if _UNAVAILABLE is None:
    from .. import ops

__all__ = ["RMSNorm", "kernel_unusable_reason"]

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def kernel_unusable_reason(module: nn.Module) -> Optional[str]:
    """Why replab_fast's Triton kernels cannot run ``module``'s parameters, or None.

    The kernels support float16, bfloat16, float32 and float64 tensors on CUDA devices (compiled)
    and on the CPU (Triton's interpreter: correct, but far slower than PyTorch there).
    """
    if _UNAVAILABLE is not None:
        return _UNAVAILABLE
    for name, tensor in module.named_parameters():
        if tensor.device.type not in ("cuda", "cpu"):
            return f"parameter {name} is on {tensor.device}; the kernels run on CUDA devices and the CPU"
        if tensor.dtype not in _KERNEL_DTYPES:
            return f"parameter {name} has dtype {tensor.dtype}; the kernels support float16, bfloat16, float32, float64"
    return None


class RMSNorm(reference.RMSNorm):
    """``x / sqrt(mean(x^2) + eps) * weight`` through ``replab_fast.ops.rms_norm``.

    A drop-in for ``replab_fast.models.llama.RMSNorm``: same parameter and state_dict key, same
    output dtype (``promote_types(x.dtype, weight.dtype)``). The kernel rounds once, after the
    weight multiply (the reference rounds the normalized x to x's dtype first).
    """

    def forward(self, x: Tensor) -> Tensor:
        return ops.rms_norm(x, self.weight, self.eps)  # (..., dim)

    @classmethod
    def from_reference(cls, ref: reference.RMSNorm) -> "RMSNorm":
        """A drop-in sharing ``ref``'s weight (the same tensor object)."""
        fast = cls(ref.dim, ref.eps, device="meta", dtype=ref.weight.dtype)
        return adopt_tensors(fast, ref)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, kernel=replab_fast.ops.rms_norm"


register_drop_in(reference.RMSNorm, kernel="rms_norm", build=RMSNorm.from_reference, check=kernel_unusable_reason,
                 interpreted_on_cpu=True)
