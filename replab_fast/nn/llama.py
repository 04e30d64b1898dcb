"""Drop-ins for the reference LLaMA's ``Attention`` (kernels "rope" and "attention") and
``TransformerBlock`` (kernel "fused_add_rms_norm").

``Attention`` carries two kernels, each switchable on its own (``accelerate(model, rope=False)``
keeps the fused attention, ``attention=False`` keeps the RoPE kernel): "rope" overrides ``rotate``
with ``replab_fast.ops.rope`` (one launch for q and k, Meta's interleaved pairs), "attention"
overrides ``attend`` with ``replab_fast.ops.attention`` (FlashAttention-2 forward and backward;
flash-decoding over the KV cache when a few tokens are decoded), for training and for KV-cache
decoding alike. The KV cache slice ``cache_k[:B, :end]`` is read in place through its strides.

``TransformerBlock`` runs ``h = x + attention(...)`` and ``ffn_norm(h)`` as one fused kernel
(``replab_fast.ops.rms_norm_residual``). It keeps the reference block's children; ``accelerate``
visits them after swapping the block, so its norms and attention get their own drop-ins (each
kernel can be turned off by name on its own). The feed-forward stays the reference module.

Every drop-in shares the reference's parameters and buffers (the same tensors) under the same
state_dict keys, so ``restore`` brings back the reference modules with whatever was trained.
"""

from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from ..drop_in import adopt_tensors
from ..models import llama as reference

ATTENTION_KERNELS = ("rope", "attention")  # what the Attention drop-in can carry

__all__ = ["ATTENTION_KERNELS", "Attention", "TransformerBlock"]


def _config_like(attention: reference.Attention) -> reference.LlamaConfig:
    """The smallest LlamaConfig that builds an Attention of ``attention``'s shapes."""
    config = reference.LlamaConfig(
        dim=attention.wq.in_features, n_layers=1, n_heads=attention.n_heads, n_kv_heads=attention.n_kv_heads,
        vocab_size=1,
    )  # fmt: skip
    if config.head_dim != attention.head_dim:
        raise ValueError(
            f"cannot rebuild an Attention with head_dim {attention.head_dim} from dim {config.dim} and "
            f"{config.n_heads} heads"
        )
    return config


class Attention(reference.Attention):
    """Grouped-query attention with RoPE by ``replab_fast.ops.rope`` and the attention core by
    ``replab_fast.ops.attention``, each used when named in ``kernels``.

    A drop-in for ``replab_fast.models.llama.Attention``: the same projections (wq, wk, wv, wo)
    and KV-cache buffers (state_dict keys unchanged); ``forward`` is the reference's.
    """

    def __init__(self, config: reference.LlamaConfig, *, kernels=ATTENTION_KERNELS, device=None, dtype=None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        unknown = sorted(set(kernels) - set(ATTENTION_KERNELS))
        if unknown or not kernels:
            raise ValueError(f"Attention kernels must be a non-empty subset of {ATTENTION_KERNELS}, got {kernels!r}")
        self.kernels = tuple(k for k in ATTENTION_KERNELS if k in kernels)

    def rotate(self, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
        """RoPE on queries (B, T, Hq, D) and keys (B, T, Hk, D); cos, sin: (T, D/2)."""
        if "rope" not in self.kernels:
            return super().rotate(q, k, cos, sin)
        return ops.rope(q, k, cos, sin, interleaved=True)  # (B, T, Hq, D), (B, T, Hk, D)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> Tensor:
        """Attention core: q (B, T, Hq, D), k and v (B, S, Hk, D) -> (B, T, Hq, D) in q's dtype.

        k and v may be views of the KV cache, read in place. When their dtype differs from q's
        (a float32 cache under bfloat16 autocast), all three are computed in the promoted dtype,
        as the reference computes in at least float32.
        """
        if "attention" not in self.kernels:
            return super().attend(q, k, v, causal)
        dtype = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
        out = ops.attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=causal)  # (B, T, Hq, D)
        return out.to(q.dtype)

    @classmethod
    def from_reference(cls, ref: reference.Attention, kernels=ATTENTION_KERNELS) -> "Attention":
        """A drop-in using ``kernels``, sharing ``ref``'s projections and KV cache (the same tensors)."""
        fast = cls(_config_like(ref), kernels=kernels, device="meta", dtype=ref.wq.weight.dtype)
        return adopt_tensors(fast, ref)

    def extra_repr(self) -> str:
        ops_used = ", ".join(f"{k}=replab_fast.ops.{k}" for k in self.kernels)
        return f"n_heads={self.n_heads}, n_kv_heads={self.n_kv_heads}, head_dim={self.head_dim}, {ops_used}"


class TransformerBlock(reference.TransformerBlock):
    """Pre-norm block with the residual add and ``ffn_norm`` fused (``replab_fast.ops.rms_norm_residual``).

    A drop-in for ``replab_fast.models.llama.TransformerBlock`` holding the reference block's own
    children (same submodule names, parameters and state_dict keys); ``accelerate`` then gives
    those children their own drop-ins. The fused kernel reads ``ffn_norm``'s weight and eps and
    does not call it.
    """

    def __init__(
        self, layer_id: int, attention_norm: nn.Module, attention: nn.Module, ffn_norm: nn.Module, feed_forward: nn.Module
    ) -> None:
        nn.Module.__init__(self)  # the children are given, not built from a config
        self.layer_id = layer_id
        self.attention_norm = attention_norm
        self.attention = attention
        self.ffn_norm = ffn_norm
        self.feed_forward = feed_forward

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start_pos: Optional[int] = None) -> Tensor:
        attn = self.attention(self.attention_norm(x), cos, sin, start_pos)  # (B, T, dim)
        dtype = torch.promote_types(x.dtype, attn.dtype)  # what x + attn would be (autocast mixes them)
        normed, h = ops.rms_norm_residual(x.to(dtype), attn.to(dtype), self.ffn_norm.weight, self.ffn_norm.eps)
        return h + self.feed_forward(normed)  # (B, T, dim)

    @classmethod
    def from_reference(cls, block: reference.TransformerBlock) -> "TransformerBlock":
        """A drop-in holding ``block``'s children (the same modules, so the same tensors)."""
        fast = cls(block.layer_id, block.attention_norm, block.attention, block.ffn_norm, block.feed_forward)
        return fast.train(block.training)

    def extra_repr(self) -> str:
        return f"layer_id={self.layer_id}, add+ffn_norm=replab_fast.ops.rms_norm_residual"
