"""Fused softmax attention (FlashAttention-2 style) with grouped-query heads, as Triton kernels.

Math (Dao 2023, "FlashAttention-2"; the reference is ``attention_ref`` in
``replab_fast.models.llama``), per batch b, query head h and its KV head hk = h // (Hq / Hk):

    s_ij = scale * <q_i, k_j>                         fp32 (fp64 for fp64 inputs)
    causal: s_ij = -inf for j > i + (S - T)           mask aligned to the end of the keys
    lse_i = log2 sum_j exp(s_ij)                      base 2 (below); online: running max m_i, sum l_i
    p_ij  = exp2(s_ij log2(e) - lse_i)                = softmax_j(s_ij)
    o_i   = sum_j p_ij v_j                            returned in q's dtype

Backward (FlashAttention-2's recomputation; P is rebuilt from q, k and the saved lse):

    delta_i = <do_i, o_i>                             (preprocess kernel)
    p_ij as above;  dp_ij = <do_i, v_j>;  ds_ij = p_ij (dp_ij - delta_i)
    dv_j = sum_i p_ij do_i;  dk_j = scale sum_i ds_ij q_i;  dq_i = scale sum_j ds_ij k_j

The logsumexp is kept in base 2, the kernels' exponent domain: they run on x_ij = s_ij log2(e)
(log2(e) folded into ``qk_scale``) with exp2 and log2; the forward saves lse_i = m_i + log2(l_i)
(m_i the running max of x_ij, l_i the sum of exp2(x_ij - m_i)) and the backward rebuilds
p_ij = exp2(x_ij - lse_i) from the same x_ij, with no change of base in between. (A natural-log
lse, (m_i + log2 l_i) ln 2 and back times log2(e), put ~2^-24 |lse| into every exponent: at
|lse| ~ 100, gradients several times less accurate than the float32 reference's.) With one key
lse_i = m_i = x_ij exactly, and p_ij = 1. For fp32 inputs the saved lse is fp64, m_i + log2(l_i)
unrounded, which the backward splits into two fp32 numbers (``_lse_parts``): rounded to fp32 it
would still be off by up to 2^-24 |lse|, one more such error. fp64 inputs compute in the
natural domain (exp, log and the plain scale: compiled, Triton passes a float argument as fp32,
exact for a scale such as 1/sqrt(16) but not once log2(e) is folded in) and convert their lse
to base 2 and back in fp64. ``_saved_lse``, ``_lse_parts`` and ``_probs`` are the only places
that know the domains.

dk and dv of a KV head are reduced over the Hq / Hk query heads of its group inside one program
(it loops over the group's heads and the query blocks), so no atomics and no repeated K/V.

Layout: q (B, T, Hq, D), k and v (B, S, Hk, D), read through their strides (a transposed
(B, H, T, D) storage or a slice of a fused projection is read in place); only a strided last
dimension is copied first. Outputs are contiguous (B, T, Hq, D); lse is (B, Hq, T), base 2
(log2 sum_j exp(s_ij); the natural logsumexp is lse * ln 2), fp64 for fp32 and fp64 inputs,
fp32 for fp16 / bf16. Any T and S (masked blocks), head dims 16 to 256, including ones that are
not powers of two (the head is padded to a power of two in registers, masked in memory).

Precision: fp16 / bf16 products accumulate in fp32; P (and dS) are rounded to the input dtype
before their matrix products, as FlashAttention does. fp32 inputs: compiled, the products run as
3xTF32 on the tensor cores (each operand split into a TF32 high part and a TF32 remainder:
about fp32 accuracy, ~1e-6 relative, where plain TF32 gives ~1e-3); interpreted, as exact
products summed in fp64 and rounded to fp32 (``_dot``). fp64 inputs compute in fp64 (for
gradcheck). fp32 and fp64 are the accurate paths, not the fast ones.

Decoding (flash-decoding): when the T queries of a KV group are few (T * Hq / Hk <= 64 rows),
one program takes every query row of a KV head (the group's heads times the T tokens, stacked
as the rows of one tile: K/V are read once per group, and the tile is big enough for tensor
cores) and a slice of the keys; the slices' partial outputs and logsumexps are combined by a
second kernel. The number of slices is chosen so that B * Hk * slices fills the GPU (one token
at cache length 32k splits into ~2 programs per SM). Its lse is the same, so the same backward
applies. The slices' logsumexps and their combination are base 2 as well (-inf: a slice with
no key for that row).

Performance plan (H100/H200; GPU verification pending, see bench/test_attention.py). FLOPs are
the floor at long T (4 B H T S D forward, halved when causal; 2.5x that backward): the matrix
products must run on Hopper's wgmma. The forward is one program per (128 queries, head), the
K/V blocks of 64 keys streamed through a ``range`` loop that Triton software-pipelines
(``num_stages`` = 3: cp.async copies of the next blocks while the current one is multiplied);
the causal loop is split into the blocks every row sees (no mask arithmetic) and the diagonal
ones, and the query blocks with the most keys start first. Backward: dk/dv programs own 128
keys and loop over 32-query blocks of each head of the group; dq programs own 128 queries. Block
sizes come from a small table by head dim and dtype (``attention_config``), checked with
ptxas for sm_90 without a GPU (tests ``test_compiled_path_builds_for_hopper``: wgmma, cp.async
pipelining, no spills up to D = 128 in 16-bit; D = 256 and fp32's 3xTF32 spill). The interpreter
(CPU) uses small fixed blocks.

The package: ``kernel.py`` (the ``@triton.jit`` device code), ``launch.py`` (host launchers
with their block-size table), ``op.py`` (the ``torch.library`` ops ``replab_fast::attention`` and
``::attention_backward`` with fake implementations and autograd). The reference is
``attention_ref`` in ``replab_fast.models.llama``. This ``__init__`` imports no triton: it says
what the kernels support and why they cannot run a module.
"""

from __future__ import annotations

from typing import Optional

from torch import nn

from .. import SUPPORTED_DTYPES, triton_unusable_reason

__all__ = ["DECODE_MAX_ROWS", "MAX_HEAD_DIM", "MIN_HEAD_DIM", "SUPPORTED_DTYPES", "unusable_reason"]

MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256  # the head dims the kernels take
DECODE_MAX_ROWS = 64  # T * Hq / Hk up to this: the flash-decoding path


def unusable_reason(module: nn.Module) -> Optional[str]:
    """Why the attention kernels cannot run ``module`` (LLaMA's ``Attention``), or None."""
    reason = triton_unusable_reason(module)
    if reason is None and not MIN_HEAD_DIM <= module.head_dim <= MAX_HEAD_DIM:
        reason = f"head dim {module.head_dim} unsupported (the attention kernels take {MIN_HEAD_DIM} to {MAX_HEAD_DIM})"
    return reason
