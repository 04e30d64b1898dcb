"""The LSTM kernels' reference: one layer of the reference model's ``LSTM`` as a function of its
input, initial state and weights (the cell is ``replab_fast.models.lstm.lstm_cell``). Tests and
benchmarks compare the kernels against these."""

from torch import Tensor
from torch.func import functional_call

from ...models.lstm import LSTM, lstm_cell

__all__ = ["lstm_cell_ref", "lstm_layer_ref"]

lstm_cell_ref = lstm_cell  # the reference model's own cell: (x, h, c, w_ih, w_hh, b_ih, b_hh) -> (h', c')


def lstm_layer_ref(x: Tensor, h0: Tensor, c0: Tensor, weight_ih: Tensor, weight_hh: Tensor, bias_ih: Tensor,
                   bias_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """The reference: a one-layer ``replab_fast.models.lstm.LSTM`` run on x (T, B, in) from (h0, c0)
    (B, H) with these weights; returns (y (T, B, H), h_n (B, H), c_n (B, H))."""
    H = weight_hh.shape[1]
    module = LSTM(x.shape[2], H, 1, device="meta", dtype=weight_hh.dtype)
    params = {"weight_ih_l0": weight_ih, "weight_hh_l0": weight_hh, "bias_ih_l0": bias_ih, "bias_hh_l0": bias_hh}
    y, (h_n, c_n) = functional_call(module, params, (x, (h0.unsqueeze(0), c0.unsqueeze(0))))
    return y, h_n[0], c_n[0]
