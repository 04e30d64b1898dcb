"""The ``torch.library`` ops ``replab_fast::rms_norm``, ``::rms_norm_residual`` and
``::rms_norm_backward``: the host launchers registered as triton_ops (``register_op``), their
fake implementations and autograd. Importing this module registers them."""

from typing import Optional

import torch
from torch import Tensor

from .._triton import register_op
from .launch import _check_args, _check_backward_args, _forward_outputs, rms_norm_backward, rms_norm_forward

__all__ = ["rms_norm_backward_op", "rms_norm_op", "rms_norm_residual_op"]


def _rms_norm_impl(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return rms_norm_forward(x, weight, eps)[0]


def _rms_norm_fake(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    _check_args("rms_norm", x, weight, eps)
    return _forward_outputs(x, weight, None)[0]


def _rms_norm_residual_impl(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    y, h = rms_norm_forward(x, weight, eps, residual)
    return y, h


def _rms_norm_residual_fake(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    _check_args("rms_norm_residual", x, weight, eps, residual)
    y, h = _forward_outputs(x, weight, residual)
    return y, h


def _rms_norm_backward_impl(
    grad_out: Tensor, x: Tensor, weight: Tensor, eps: float, grad_residual: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    return rms_norm_backward(grad_out, x, weight, eps, grad_residual)


def _rms_norm_backward_fake(
    grad_out: Tensor, x: Tensor, weight: Tensor, eps: float, grad_residual: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    _check_backward_args(grad_out, x, weight, eps, grad_residual)
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


rms_norm_op = register_op("replab_fast::rms_norm", _rms_norm_impl, _rms_norm_fake)
rms_norm_residual_op = register_op("replab_fast::rms_norm_residual", _rms_norm_residual_impl, _rms_norm_residual_fake)
rms_norm_backward_op = register_op("replab_fast::rms_norm_backward", _rms_norm_backward_impl, _rms_norm_backward_fake)


def _setup_rms_norm(ctx, inputs, output) -> None:
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _backward_rms_norm(ctx, grad_y):
    x, weight = ctx.saved_tensors
    dx, dw = torch.ops.replab_fast.rms_norm_backward(grad_y, x, weight, ctx.eps, None)
    return dx, dw, None


def _setup_rms_norm_residual(ctx, inputs, output) -> None:
    _, _, weight, eps = inputs
    ctx.save_for_backward(output[1], weight)  # h, the normalized input
    ctx.eps = eps
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zeros to read)


def _backward_rms_norm_residual(ctx, grad_y, grad_h):
    h, weight = ctx.saved_tensors
    if grad_y is None:  # only h was used: it passes its gradient to x and residual unchanged
        return grad_h, grad_h, None, None
    dh, dw = torch.ops.replab_fast.rms_norm_backward(grad_y, h, weight, ctx.eps, grad_h)
    return dh, dh, dw, None


rms_norm_op.register_autograd(_backward_rms_norm, setup_context=_setup_rms_norm)
rms_norm_residual_op.register_autograd(_backward_rms_norm_residual, setup_context=_setup_rms_norm_residual)
