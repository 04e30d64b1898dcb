"""Drop-in fast modules: same parameters and state_dict keys as the reference modules.

Each kernel's drop-in lives in its own file here and registers itself with
``replab_fast.swap.register_drop_in`` when this package is imported; ``accelerate`` imports it.

- ``RMSNorm`` (rms_norm.py, kernel "rms_norm"): for ``replab_fast.models.llama.RMSNorm``.
- ``Attention`` (llama.py, kernel "rope"): LLaMA attention with the RoPE kernel.
- ``TransformerBlock`` (llama.py, kernel "fused_add_rms_norm"): LLaMA block with the residual add
  and ffn_norm fused; it keeps the reference children, which ``accelerate`` then swaps on their own.

Importing this package does not import triton: where the kernels cannot run, the drop-ins are
still registered and ``accelerate`` reports why they were not swapped in.
"""

from .llama import Attention, TransformerBlock
from .rms_norm import RMSNorm

__all__ = ["Attention", "RMSNorm", "TransformerBlock"]
