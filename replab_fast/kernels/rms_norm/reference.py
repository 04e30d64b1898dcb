"""The RMSNorm kernels' reference: the reference model's own ``RMSNorm`` forward, and the LLaMA
block's residual add before it. Tests and benchmarks compare the kernels against these."""

from torch import Tensor
from torch.func import functional_call

from ...models.llama import RMSNorm

__all__ = ["rms_norm_ref", "rms_norm_residual_ref"]


def rms_norm_ref(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The reference: ``replab_fast.models.llama.RMSNorm``'s forward, run on (x, weight, eps)."""
    module = RMSNorm(weight.shape[0], eps, device="meta", dtype=weight.dtype)
    return functional_call(module, {"weight": weight}, (x,))


def rms_norm_residual_ref(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The reference of the fused op, as the LLaMA block computes it: h = x + residual; (RMSNorm(h), h)."""
    h = x + residual
    return rms_norm_ref(h, weight, eps), h
