"""Drop-in fast modules: same parameters and state_dict keys as the reference modules.

Each kernel's drop-in lives in its own file here and registers itself with
``replab_fast.swap.register_drop_in`` when this package is imported; ``accelerate`` imports it.

- ``RMSNorm`` (rms_norm.py, kernel "rms_norm"): for ``replab_fast.models.llama.RMSNorm``.
- ``Attention`` (llama.py, kernels "rope" and "attention", each switchable): LLaMA attention with the
  RoPE kernel and the fused attention kernel (training and KV-cache decoding).
- ``TransformerBlock`` (llama.py, kernel "fused_add_rms_norm"): LLaMA block with the residual add
  and ffn_norm fused; it keeps the reference children, which ``accelerate`` then swaps on their own.
- ``Conv2d``, ``PartialConv2d`` (conv.py, kernel "conv2d"): ``nn.Conv2d`` and LeNet-5's C3 through the
  C++/CUDA extension; ``ConvSequential`` (kernel "conv2d_fused"): an ``nn.Sequential`` whose
  conv -> activation -> pool runs become one fused ``replab_fast.ops.conv2d`` each.

Importing this package does not import triton: where the kernels cannot run, the drop-ins are
still registered and ``accelerate`` reports why they were not swapped in.
"""

from .conv import Conv2d, ConvSequential, FusedConv2d, FusedPartialConv2d, PartialConv2d
from .llama import Attention, TransformerBlock
from .rms_norm import RMSNorm

__all__ = ["Attention", "Conv2d", "ConvSequential", "FusedConv2d", "FusedPartialConv2d", "PartialConv2d", "RMSNorm", "TransformerBlock"]
