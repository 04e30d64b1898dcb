"""The public functional API over replab_fast's kernels.

Each function calls a ``torch.library`` op in the ``replab_fast`` namespace (``torch.ops.replab_fast.*``),
registered with autograd and a fake implementation: it works in eager mode, under
``torch.compile`` without graph breaks, and with ``torch.library.opcheck``. CUDA tensors run the
compiled Triton kernels; CPU tensors run the same kernels through Triton's interpreter (slow,
for tests and small runs), with nothing to set.

Importing this module imports triton (``replab_fast.kernels.unavailable_reason()`` says, without
importing it, whether that will work here).
"""

from torch import Tensor
from torch import ops as _torch_ops

from .kernels import rms_norm as _rms_norm  # noqa: F401  (registers replab_fast::rms_norm*)
from .kernels import rope as _rope  # noqa: F401  (registers replab_fast::rope*)

__all__ = ["rms_norm", "rms_norm_residual", "rope"]


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """RMSNorm over the last dimension: ``x / sqrt(mean(x^2, -1) + eps) * weight``.

    Args:
        x: (..., N), any leading shape (including no rows), float16 / bfloat16 / float32 / float64.
            Strided views are read in place when their leading dimensions collapse to one row
            stride, otherwise copied once.
        weight: (N,), a floating dtype, on x's device.
        eps: added to the mean square, >= 0.

    Returns:
        y (..., N), contiguous, of dtype ``promote_types(x.dtype, weight.dtype)`` (x's dtype when
        they match), computed in fp32 (fp64 for float64), like ``replab_fast.models.llama.RMSNorm``.
        Differentiable in x and weight; the dweight reduction uses per-program partial sums.
    """
    return _torch_ops.replab_fast.rms_norm(x, weight, float(eps))


def rms_norm_residual(x: Tensor, residual: Tensor, weight: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Fused residual add + RMSNorm, one pass: ``h = x + residual; y = rms_norm(h, weight, eps)``.

    Args:
        x, residual: (..., N), one shape and one dtype (float16 / bfloat16 / float32 / float64).
        weight: (N,), a floating dtype, on x's device.
        eps: added to the mean square, >= 0.

    Returns:
        (y, h): y as in :func:`rms_norm`; h = x + residual in x's dtype (rounded exactly as
        ``x + residual`` is), both contiguous of x's shape. Differentiable in x, residual and
        weight; gradients flowing into both y and h (the residual stream) are combined in one pass.
    """
    return _torch_ops.replab_fast.rms_norm_residual(x, residual, weight, float(eps))


def rope(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, *, interleaved: bool = True) -> tuple[Tensor, Tensor]:
    """Rotary position embedding of queries and keys, one kernel launch for both.

    Args:
        q: (B, T, Hq, D) queries; D even, up to 1024.
        k: (B, T, Hk, D) keys, Hk dividing Hq (grouped-query attention); q's dtype.
        cos, sin: (T', D/2) with T' >= T, one dtype: row t holds the angles of token t, so pass the
            tables taken at the tokens' positions (``cos_table[start_pos : start_pos + T]`` when
            decoding with a KV cache). They get no gradient.
        interleaved: True rotates the pairs (x[2i], x[2i+1]) (Meta's LLaMA, the reference model);
            False the pairs (x[i], x[i + D/2]) (rotate-half, HF / GPT-NeoX).

    Returns:
        (q_rot, k_rot), new contiguous tensors of q's and k's shapes and dtype (float16 / bfloat16 /
        float32 / float64), computed in fp32 (fp64 for float64). The backward is the rotation by
        the negative angles.
    """
    return _torch_ops.replab_fast.rope(q, k, cos, sin, bool(interleaved))
