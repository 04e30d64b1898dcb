"""Drop-in fast LSTM for ``replab_fast.models.lstm.LSTM`` (kernel name "lstm").

Same parameters (``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``: torch.nn.LSTM's
names, so state_dicts still load into torch.nn.LSTM) and the same call convention; each layer runs
``replab_fast.ops.lstm`` (Triton kernels: compiled on CUDA, interpreted on the CPU).
"""

from torch import Tensor

from .. import ops
from ..drop_in import adopt_tensors
from ..models import lstm as reference

__all__ = ["LSTM"]


class LSTM(reference.LSTM):
    """``output, (h_n, c_n) = lstm(input, (h_0, c_0))`` with every layer through ``replab_fast.ops.lstm``.

    A drop-in for ``replab_fast.models.lstm.LSTM``: same parameters and state_dict keys. It runs
    the reference's own ``forward`` (checks, layouts, the given or zero initial state, dropout
    between layers in training mode: the same seed draws the same masks) and replaces only
    ``run_layer``, one layer over the whole sequence.
    """

    def run_layer(self, k: int, layer_input: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Layer k in ``replab_fast.ops.lstm``: (T, B, in), (B, H), (B, H) -> (T, B, H), (B, H), (B, H).
        The reference's ``forward`` stacks the layers (state, dropout, layouts) around it."""
        return ops.lstm(layer_input, h, c, *self.layer_parameters(k))

    @classmethod
    def from_reference(cls, ref: reference.LSTM) -> "LSTM":
        """A drop-in sharing ``ref``'s parameters (the same tensor objects)."""
        fast = cls(ref.input_size, ref.hidden_size, ref.num_layers, batch_first=ref.batch_first, dropout=ref.dropout,
                   device="meta", dtype=ref.weight_ih_l0.dtype)  # fmt: skip
        return adopt_tensors(fast, ref)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", kernel=replab_fast.ops.lstm"
