"""Drop-in fast RMSNorm for ``replab_fast.models.llama.RMSNorm`` (kernel name "rms_norm").

Same parameter (``weight``, shape (dim,)) and state_dict key as the reference; the forward runs
``replab_fast.ops.rms_norm`` (a Triton kernel: compiled on CUDA, interpreted on the CPU).
"""

from torch import Tensor

from .. import ops
from ..drop_in import adopt_tensors
from ..models import llama as reference

__all__ = ["RMSNorm"]


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
