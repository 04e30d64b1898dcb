"""Drop-in fast LSTM for ``replab_fast.models.lstm.LSTM`` (kernel name "lstm").

Same parameters (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``: torch.nn.LSTM's
names, so state_dicts still load into torch.nn.LSTM) and the same call convention; each layer runs
``replab_fast.ops.lstm`` (Triton kernels: compiled on CUDA, interpreted on the CPU).
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import ops
from ..drop_in import adopt_tensors
from ..models import lstm as reference

__all__ = ["LSTM"]


class LSTM(reference.LSTM):
    """``output, (h_n, c_n) = lstm(input, (h_0, c_0))`` with every layer through ``replab_fast.ops.lstm``.

    A drop-in for ``replab_fast.models.lstm.LSTM``: same parameters and state_dict keys, same
    checks of the input, same layouts (batch_first or not), a given or zero initial state, and
    dropout between layers in training mode applied as the reference applies it (``F.dropout`` on
    each layer's output but the last's, in the same order: the same seed draws the same masks).
    """

    def forward(self, input: Tensor, hx: Optional[reference.State] = None) -> tuple[Tensor, reference.State]:
        self._check_input(input, hx)
        x = input.transpose(0, 1) if self.batch_first else input  # (T, B, in)
        B = x.shape[1]
        if hx is None:
            zeros = x.new_zeros(self.num_layers, B, self.hidden_size)  # (L, B, H)
            hx = (zeros, zeros)
        h_0, c_0 = hx  # each (L, B, H)
        layer_input = x  # (T, B, in) for layer 0, (T, B, H) above
        h_n, c_n = [], []
        for k in range(self.num_layers):
            layer_output, h, c = ops.lstm(layer_input, h_0[k], c_0[k], *self.layer_parameters(k))  # (T, B, H)
            h_n.append(h)
            c_n.append(c)
            if k < self.num_layers - 1 and self.dropout > 0:
                layer_output = F.dropout(layer_output, self.dropout, self.training)  # (T, B, H)
            layer_input = layer_output
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input  # input's layout, H last
        return output, (torch.stack(h_n), torch.stack(c_n))  # (L, B, H) each

    @classmethod
    def from_reference(cls, ref: reference.LSTM) -> "LSTM":
        """A drop-in sharing ``ref``'s parameters (the same tensor objects)."""
        fast = cls(ref.input_size, ref.hidden_size, ref.num_layers, batch_first=ref.batch_first, dropout=ref.dropout,
                   device="meta", dtype=ref.weight_ih_l0.dtype)  # fmt: skip
        return adopt_tensors(fast, ref)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", kernel=replab_fast.ops.lstm"
