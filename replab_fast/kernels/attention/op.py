"""The ``torch.library`` ops ``replab_fast::attention`` and ``::attention_backward``: the host
launchers registered as triton_ops (``register_op``), their fake implementations and autograd.
Importing this module registers them."""

from typing import Optional

import torch
from torch import Tensor

from .._triton import register_op
from .launch import _check_args, _lse_dtype, attention_backward, attention_forward

__all__ = ["attention_backward_op", "attention_op"]


def _attention_impl(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """replab_fast::attention: (out (B, T, Hq, D), lse (B, Hq, T)), lse the base-2 logsumexp
    log2 sum_j exp(s_ij) as ``attention_forward`` returns it; both outputs are differentiable."""
    return attention_forward(q, k, v, causal, scale)


def _attention_fake(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """The outputs' metadata: out like q; lse (B, Hq, T), base 2, in ``_lse_dtype`` (fp64 for fp32
    and fp64 inputs, fp32 for fp16 / bf16)."""
    _check_args("attention", q, k, v, causal)
    B, T, Hq, D = q.shape
    return q.new_empty((B, T, Hq, D)), q.new_empty((B, Hq, T), dtype=_lse_dtype(q.dtype))


def _attention_backward_impl(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool, scale: float,
    grad_lse: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    return attention_backward(grad_out, q, k, v, out, lse, causal, scale, grad_lse)


def _attention_backward_fake(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool, scale: float,
    grad_lse: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    _check_args("attention_backward", q, k, v, causal)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


attention_op = register_op("replab_fast::attention", _attention_impl, _attention_fake)
attention_backward_op = register_op(
    "replab_fast::attention_backward", _attention_backward_impl, _attention_backward_fake
)


def _setup_attention(ctx, inputs, output) -> None:
    q, k, v, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.causal, ctx.scale = causal, scale
    ctx.set_materialize_grads(False)


def _backward_attention(ctx, grad_out, grad_lse):
    """grad_lse is the gradient of the base-2 lse output; attention_backward applies its log2(e)."""
    if grad_out is None and grad_lse is None:
        return None, None, None, None, None
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = torch.ops.replab_fast.attention_backward(
        grad_out, q, k, v, out, lse, ctx.causal, ctx.scale, grad_lse
    )
    return dq, dk, dv, None, None


attention_op.register_autograd(_backward_attention, setup_context=_setup_attention)
