"""The RoPE kernel's reference: the LLaMA model's ``apply_rope`` (interleaved pairs) or
``apply_rope_rotate_half``. Tests and benchmarks compare the kernel against it."""

from torch import Tensor

from ...models.llama import apply_rope, apply_rope_rotate_half

__all__ = ["rope_ref"]


def rope_ref(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = True) -> tuple[Tensor, Tensor]:
    """The reference: the LLaMA model's ``apply_rope`` (interleaved) or ``apply_rope_rotate_half``, on
    q and k, with cos/sin cut to the T tokens."""
    T = q.shape[1]
    fn = apply_rope if interleaved else apply_rope_rotate_half
    return fn(q, cos[:T], sin[:T]), fn(k, cos[:T], sin[:T])
