"""Drop-in fast modules (same parameters and state_dict keys as the reference modules), and
``DROP_INS``, the table that says which replaces which: the one place ``accelerate`` reads.

- ``RMSNorm`` (rms_norm.py, kernel "rms_norm"): for ``replab_fast.models.llama.RMSNorm``.
- ``Attention`` (llama.py, kernels "rope" and "attention", each switchable): LLaMA attention with the
  RoPE kernel and the fused attention kernel (training and KV-cache decoding).
- ``TransformerBlock`` (llama.py, kernel "fused_add_rms_norm"): LLaMA block with the residual add
  and ffn_norm fused; it keeps the reference children, which ``accelerate`` then swaps on their own.
- ``LSTM`` (lstm.py, kernel "lstm"): for ``replab_fast.models.lstm.LSTM``, every layer one ``replab_fast.ops.lstm``.
- ``Conv2d``, ``PartialConv2d`` (conv.py, kernel "conv2d"): ``nn.Conv2d`` and LeNet-5's C3 through the
  C++/CUDA extension; ``ConvSequential`` (kernel "conv2d_fused"): an ``nn.Sequential`` whose
  conv -> activation -> pool runs become one fused ``replab_fast.ops.conv2d`` each.

Each check, the reason a kernel cannot run a module, is the kernel's own (``replab_fast.kernels``).
Importing this package registers nothing; where Triton cannot run, the drop-ins still import,
and ``accelerate`` reports why they were not swapped in.
"""

from torch import nn as torch_nn

from ..drop_in import DropIn
from ..kernels import attention as attention_kernel
from ..kernels import lstm as lstm_kernel
from ..kernels import triton_unusable_reason
from ..models import lenet
from ..models import llama as llama_reference
from ..models import lstm as lstm_reference
from .conv import (
    Conv2d,
    ConvSequential,
    FusedConv2d,
    FusedPartialConv2d,
    PartialConv2d,
    conv_unusable_reason,
    has_convolution,
    sequential_unusable_reason,
)
from .llama import ATTENTION_KERNELS, Attention, TransformerBlock
from .lstm import LSTM
from .rms_norm import RMSNorm

__all__ = [
    "Attention",
    "Conv2d",
    "ConvSequential",
    "DROP_INS",
    "FusedConv2d",
    "FusedPartialConv2d",
    "LSTM",
    "PartialConv2d",
    "RMSNorm",
    "TransformerBlock",
]

# The Triton drop-ins are interpreted off CUDA: accelerate swaps them there only with interpret=True.
DROP_INS = (
    DropIn(llama_reference.RMSNorm, "rms_norm", RMSNorm.from_reference, triton_unusable_reason,
           interpreted_on_cpu=True),
    DropIn(llama_reference.TransformerBlock, "fused_add_rms_norm", TransformerBlock.from_reference,
           triton_unusable_reason, interpreted_on_cpu=True),
    DropIn(llama_reference.Attention, ATTENTION_KERNELS, Attention.from_reference,
           {"rope": triton_unusable_reason, "attention": attention_kernel.unusable_reason}, interpreted_on_cpu=True),
    DropIn(lstm_reference.LSTM, "lstm", LSTM.from_reference, lstm_kernel.unusable_reason, interpreted_on_cpu=True),
    # A Sequential without a convolution (the MLP autoencoders', every classifier head) is no
    # target of "conv2d_fused": ``applies`` keeps those out of accelerate's walk and its report.
    DropIn(torch_nn.Sequential, "conv2d_fused", ConvSequential.from_reference, sequential_unusable_reason,
           applies=has_convolution),
    DropIn(torch_nn.Conv2d, "conv2d", Conv2d.from_reference, conv_unusable_reason),
    DropIn(lenet.PartialConv2d, "conv2d", PartialConv2d.from_reference, conv_unusable_reason),
)  # fmt: skip
