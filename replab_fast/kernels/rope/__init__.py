"""Rotary position embedding (RoPE) of queries and keys, one Triton launch for both.

Math (Su et al. 2021, "RoFormer"; the references are ``apply_rope`` and
``apply_rope_rotate_half`` in ``replab_fast.models.llama``): each head vector x of D elements is
split into D/2 pairs, and pair i of the token at row t is rotated by the angle whose cosine and
sine are cos[t, i] and sin[t, i]:

    (a, b) -> (a * cos - b * sin,  a * sin + b * cos)

Pairs are (x[2i], x[2i+1]) in the interleaved convention (Meta's LLaMA, the reference model) and
(x[i], x[i + D/2]) in the rotate-half convention (HF / GPT-NeoX). The rotation is computed in
fp32 (fp64 for fp64 inputs) and returned in the input dtype. Its backward is the rotation by the
negative angle (sin -> -sin), the same kernel with ``INVERSE``.

Shapes: q (B, T, Hq, D), k (B, T, Hk, D), Hk dividing Hq (grouped-query attention); cos and sin
(>= T, D/2): row t is used for token t of every sequence, so they must be the tables taken at
the tokens' positions (``rope_cos[start_pos : start_pos + T]`` when decoding with a KV cache).
q and k may be strided views (e.g. slices of a fused projection) with a contiguous last
dimension; otherwise they are copied first. Outputs are new contiguous tensors.

Performance plan (H100/H200; GPU verification pending, see bench/test_rope.py): one program
per (sequence, block of tokens, block of heads) rotates a block of q heads and the matching
block of k heads, loading cos/sin for its tokens once. A block holds ~4K elements (all 32 heads
of a D = 128 token in one program), loaded with 16-byte vectors along D; the interleaved pairs
are split in registers (reshape + split), not by strided loads.

The package: ``kernel.py`` (the ``@triton.jit`` device code), ``launch.py`` (host launchers and
their block sizes), ``op.py`` (the ``torch.library`` ops with fake implementations and
autograd), ``reference.py`` (the plain-PyTorch reference). This ``__init__`` imports no triton;
the kernels run wherever ``replab_fast.kernels.triton_unusable_reason`` finds nothing against it.
"""
