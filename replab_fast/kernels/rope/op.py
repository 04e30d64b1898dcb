"""The ``torch.library`` ops ``replab_fast::rope`` and ``::rope_backward``: the host launcher
registered as triton_ops (``register_op``), their fake implementations and autograd (the
backward is the rotation by the negative angles). Importing this module registers them."""

import torch
from torch import Tensor

from .._triton import register_op
from .launch import _check_args, rope_forward

__all__ = ["rope_backward_op", "rope_op"]


def _rope_impl(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> tuple[Tensor, Tensor]:
    return rope_forward(q, k, cos, sin, interleaved)


def _rope_fake(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> tuple[Tensor, Tensor]:
    _check_args("rope", q, k, cos, sin)
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _rope_backward_impl(
    grad_q: Tensor, grad_k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool
) -> tuple[Tensor, Tensor]:
    return rope_forward(grad_q, grad_k, cos, sin, interleaved, inverse=True)


def _rope_backward_fake(
    grad_q: Tensor, grad_k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool
) -> tuple[Tensor, Tensor]:
    _check_args("rope_backward", grad_q, grad_k, cos, sin)
    return grad_q.new_empty(grad_q.shape), grad_k.new_empty(grad_k.shape)


rope_op = register_op("replab_fast::rope", _rope_impl, _rope_fake)
rope_backward_op = register_op("replab_fast::rope_backward", _rope_backward_impl, _rope_backward_fake)


def _setup_rope(ctx, inputs, output) -> None:
    q, k, cos, sin, interleaved = inputs
    ctx.save_for_backward(cos, sin)
    ctx.interleaved = interleaved
    ctx.q_meta = (q.shape, q.dtype)
    ctx.k_meta = (k.shape, k.dtype)
    ctx.set_materialize_grads(False)


def _backward_rope(ctx, grad_q, grad_k):
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        raise RuntimeError(
            "rope: gradients with respect to cos and sin are not implemented (pass tables that do not require grad)"
        )
    cos, sin = ctx.saved_tensors
    if grad_q is None and grad_k is None:
        return None, None, None, None, None
    if grad_q is None:
        grad_q = grad_k.new_zeros(ctx.q_meta[0], dtype=ctx.q_meta[1])
    if grad_k is None:
        grad_k = grad_q.new_zeros(ctx.k_meta[0], dtype=ctx.k_meta[1])
    dq, dk = torch.ops.replab_fast.rope_backward(grad_q, grad_k, cos, sin, ctx.interleaved)
    return dq, dk, None, None, None


rope_op.register_autograd(_backward_rope, setup_context=_setup_rope)
