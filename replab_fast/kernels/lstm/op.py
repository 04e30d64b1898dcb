"""The ``torch.library`` ops ``replab_fast::lstm_cell``, ``::lstm`` and their backward ops
``::lstm_cell_backward`` and ``::lstm_backward``: the host launchers registered as triton_ops
(``register_op``), their fake implementations and autograd. Importing this module registers them."""

from typing import Optional

import torch
from torch import Tensor

from .._triton import register_op
from .launch import (
    cell_outputs,
    check_cell_args,
    check_grads,
    check_layer_args,
    check_layer_grads,
    layer_outputs,
    lstm_backward,
    lstm_cell_backward,
    lstm_cell_forward,
    lstm_forward,
)

__all__ = ["lstm_backward_op", "lstm_cell_backward_op", "lstm_cell_op", "lstm_op"]


def _lstm_cell_impl(x: Tensor, h: Tensor, c: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
                    bias_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """replab_fast::lstm_cell: (h_next, c_next, gates); gates (B, 4H) are the activated i, f, g, o
    the backward reads (not differentiable)."""
    return lstm_cell_forward(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh)


def _lstm_cell_fake(x: Tensor, h: Tensor, c: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
                    bias_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    check_cell_args(x, h, c, weight_ih, weight_hh, bias_ih, bias_hh)
    return cell_outputs(x, c, weight_hh)


def _lstm_cell_backward_impl(
    grad_h: Optional[Tensor], grad_c: Optional[Tensor], x: Tensor, h: Tensor, c: Tensor, c_next: Tensor,
    gates: Tensor, weight_ih: Tensor, weight_hh: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    return lstm_cell_backward(grad_h, grad_c, x, h, c, c_next, gates, weight_ih, weight_hh)


def _lstm_cell_backward_fake(
    grad_h: Optional[Tensor], grad_c: Optional[Tensor], x: Tensor, h: Tensor, c: Tensor, c_next: Tensor,
    gates: Tensor, weight_ih: Tensor, weight_hh: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    check_grads("lstm_cell_backward", c, grad_h=grad_h, grad_c=grad_c)
    return (x.new_empty(x.shape), h.new_empty(h.shape), c.new_empty(c.shape), weight_ih.new_empty(weight_ih.shape),
            weight_hh.new_empty(weight_hh.shape), gates.new_empty((gates.shape[1],)))  # fmt: skip


def _lstm_impl(x: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
               bias_hh: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """replab_fast::lstm: (y, h_n, c_n, gates, cs) as ``lstm_forward`` returns them; gates and cs
    are what the backward reads (not differentiable)."""
    return lstm_forward(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)


def _lstm_fake(x: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
               bias_hh: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    check_layer_args(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh)
    return layer_outputs(x, weight_hh)


def _lstm_backward_impl(
    grad_y: Optional[Tensor], grad_h_n: Optional[Tensor], grad_c_n: Optional[Tensor], x: Tensor, h0: Tensor,
    weight_ih: Tensor, weight_hh: Tensor, y: Tensor, gates: Tensor, cs: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    return lstm_backward(grad_y, grad_h_n, grad_c_n, x, h0, weight_ih, weight_hh, y, gates, cs)


def _lstm_backward_fake(
    grad_y: Optional[Tensor], grad_h_n: Optional[Tensor], grad_c_n: Optional[Tensor], x: Tensor, h0: Tensor,
    weight_ih: Tensor, weight_hh: Tensor, y: Tensor, gates: Tensor, cs: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    check_layer_grads(grad_y, grad_h_n, grad_c_n, y, h0)
    return (x.new_empty(x.shape), h0.new_empty(h0.shape), h0.new_empty(h0.shape),
            weight_ih.new_empty(weight_ih.shape), weight_hh.new_empty(weight_hh.shape),
            gates.new_empty((gates.shape[2],)))  # fmt: skip


lstm_cell_op = register_op("replab_fast::lstm_cell", _lstm_cell_impl, _lstm_cell_fake)
lstm_cell_backward_op = register_op(
    "replab_fast::lstm_cell_backward", _lstm_cell_backward_impl, _lstm_cell_backward_fake
)
lstm_op = register_op("replab_fast::lstm", _lstm_impl, _lstm_fake)
lstm_backward_op = register_op("replab_fast::lstm_backward", _lstm_backward_impl, _lstm_backward_fake)


def _setup_lstm_cell(ctx, inputs, output) -> None:
    x, h, c, weight_ih, weight_hh, _, _ = inputs
    _, c_next, gates = output
    ctx.save_for_backward(x, h, c, c_next, gates, weight_ih, weight_hh)
    ctx.mark_non_differentiable(gates)
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zeros to read)


def _backward_lstm_cell(ctx, grad_h, grad_c, _grad_gates):
    if grad_h is None and grad_c is None:
        return (None,) * 7
    x, h, c, c_next, gates, weight_ih, weight_hh = ctx.saved_tensors
    dx, dh, dc, dw_ih, dw_hh, db = torch.ops.replab_fast.lstm_cell_backward(
        grad_h, grad_c, x, h, c, c_next, gates, weight_ih, weight_hh
    )
    return dx, dh, dc, dw_ih, dw_hh, db, db.clone()  # both biases get the gradient of their sum


def _setup_lstm(ctx, inputs, output) -> None:
    x, h0, _, weight_ih, weight_hh, _, _ = inputs
    y, _, _, gates, cs = output
    ctx.save_for_backward(x, h0, weight_ih, weight_hh, y, gates, cs)
    ctx.mark_non_differentiable(gates, cs)
    ctx.set_materialize_grads(False)


def _backward_lstm(ctx, grad_y, grad_h_n, grad_c_n, _grad_gates, _grad_cs):
    if grad_y is None and grad_h_n is None and grad_c_n is None:
        return (None,) * 7
    x, h0, weight_ih, weight_hh, y, gates, cs = ctx.saved_tensors
    dx, dh0, dc0, dw_ih, dw_hh, db = torch.ops.replab_fast.lstm_backward(
        grad_y, grad_h_n, grad_c_n, x, h0, weight_ih, weight_hh, y, gates, cs
    )
    return dx, dh0, dc0, dw_ih, dw_hh, db, db.clone()


lstm_cell_op.register_autograd(_backward_lstm_cell, setup_context=_setup_lstm_cell)
lstm_op.register_autograd(_backward_lstm, setup_context=_setup_lstm)
