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
"""

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..models.llama import attention_ref
from ._triton import (
    cast_for_store,
    cdiv,
    check_device,
    device_function,
    launch,
    next_power_of_2,
    num_sms,
    register_op,
    runs_interpreted,
)

__all__ = [
    "attention_forward",
    "attention_backward",
    "attention_ref",
    "AttentionConfig",
    "attention_config",
    "with_config",
    "attention_op",
    "attention_backward_op",
    "MIN_HEAD_DIM",
    "MAX_HEAD_DIM",
    "SUPPORTED_DTYPES",
]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MIN_HEAD_DIM, MAX_HEAD_DIM = 16, 256
DECODE_MAX_ROWS = 64  # T * Hq / Hk up to this: the flash-decoding path
LOG2E = 1.4426950408889634  # log2(e): folded into the fp32 kernels' qk_scale (host side)
LN2: tl.constexpr = tl.constexpr(0.6931471805599453)  # ln(2): fp64's lse conversions, in the kernels
# (a kernel reads a module-level global only if it is a tl.constexpr, compiled and interpreted)


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


@device_function
def _dot(a, b, INTERPRETED: tl.constexpr):
    """``tl.dot(a, b)`` accumulating in fp32 (fp64 for fp64). float32 operands run as 3xTF32 on the
    tensor cores (about fp32 accuracy; plain TF32 would give ~1e-3), float64 as IEEE fp64.
    Triton's interpreter (3.6, 3.9) multiplies bfloat16 operands as their raw uint16 bits, so
    there they are upcast to fp32 first (exact: a product of two bf16 values fits in fp32).
    Interpreted float32 operands are multiplied in fp64 and the result rounded once to fp32:
    numpy's float32 matmul (BLAS) rounds an element differently with the operands' shapes and
    memory layout (a transposed view, a 16-row tile), so the backward's recomputed scores
    (k q^T, other tiles) would differ from the forward's q k^T by an ulp, an error of ~2^-24 |s|
    in the exponent of P at large logits (a single key's P, exactly 1, came out ~350 ulp off).
    Exact products summed in fp64 round to the same fp32 score in every layout."""
    if INTERPRETED:
        if a.dtype == tl.float32:
            return tl.dot(a.to(tl.float64), b.to(tl.float64), input_precision="ieee").to(tl.float32)
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    if a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="tf32x3")
    elif a.dtype == tl.float64:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@device_function
def _saved_lse(m_i, l_i, LSE_DTYPE: tl.constexpr, IS_FP64: tl.constexpr):
    """The logsumexp the kernels save, base 2 (log2 sum_j exp(s_ij)), from a row's running max m_i
    and sum l_i > 0 in the exponent domain; LSE_DTYPE is the saved dtype. fp32 compute:
    m_i + log2(l_i), exactly m_i when l_i = 1 (one key), the sum left unrounded (in fp64) when it
    is saved in fp64 (fp32 inputs, see _lse_parts). fp64 runs in the natural domain:
    (m_i + log(l_i)) / ln 2, in fp64."""
    if IS_FP64:
        return (m_i + tl.log(l_i)) / tl.full([], LN2, tl.float64)
    elif LSE_DTYPE == tl.float64:
        return m_i.to(tl.float64) + tl.log2(l_i).to(tl.float64)
    else:
        return m_i + tl.log2(l_i)


@device_function
def _lse_parts(lse, IS_FP64: tl.constexpr):
    """A saved lse row vector as (hi, lo), lse = hi + lo, in the compute dtype. fp32 inputs save it
    in fp64, split here into two fp32 numbers: one fp32 number would be off by up to 2^-24 |lse|,
    an error in every exponent of its row (the whole row of P ~2^-24 |lse| too large or too
    small), where in (x - hi) - lo the first difference is exact near the row's max and only the
    small lo is rounded. 16-bit inputs (their P is rounded to 16 bits anyway) save it in fp32, and
    fp64 computes in fp64: lo = 0."""
    if IS_FP64:
        return lse, tl.full(lse.shape, 0.0, tl.float64)
    elif lse.dtype == tl.float64:
        hi = lse.to(tl.float32)
        return hi, (lse - hi.to(tl.float64)).to(tl.float32)
    else:
        return lse, tl.full(lse.shape, 0.0, tl.float32)


@device_function
def _probs(x, lse_hi, lse_lo, IS_FP64: tl.constexpr):
    """The softmax probabilities exp(s - lse ln 2) from x, the scores in the exponent domain
    (``qk * qk_scale``, as the forward computed them), and the saved base-2 lse as
    ``_lse_parts`` splits it (broadcast to x). fp32: exp2((x - hi) - lo), the forward's own
    exponent; fp64: exp(x - lse ln 2), in fp64 (lo = 0)."""
    if IS_FP64:
        return tl.exp(x - lse_hi * tl.full([], LN2, tl.float64))
    else:
        return tl.exp2((x - lse_hi) - lse_lo)


@device_function
def _fwd_step(
    acc,  # (BLOCK_M, BLOCK_D) running unnormalized output, compute dtype
    l_i,  # (BLOCK_M,) running sum of exponentials
    m_i,  # (BLOCK_M,) running max of the scaled scores (exponent domain)
    q,  # (BLOCK_M, BLOCK_D) queries, input dtype
    k_base,  # pointer to key 0 of this (sequence, KV head)
    v_base,  # pointer to value 0 of this (sequence, KV head)
    k_stride_s,  # elements between keys
    v_stride_s,  # elements between values
    rows,  # (BLOCK_M,) query row index t of each tile row
    d,  # (BLOCK_D,) head-dim offsets
    d_mask,  # (BLOCK_D,) d < HEAD_DIM
    start_n,  # first key of this block
    seq_k,  # S
    causal_offset,  # S - T: row t sees keys j <= t + S - T
    qk_scale,  # scale, times log2(e) unless IS_FP64
    BLOCK_N: tl.constexpr,  # keys per block
    MASKED: tl.constexpr,  # apply the key-bounds and causal masks (diagonal / last blocks)
    CAUSAL: tl.constexpr,  # causal attention
    IS_FP64: tl.constexpr,  # fp64 compute with exp, else fp32 with exp2
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter (see cast_for_store)
):
    """One online-softmax update (FlashAttention-2) with the key block at start_n."""
    n = start_n + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    n64 = n.to(tl.int64)
    kv_mask = (n < seq_k)[:, None] & d_mask[None, :]
    k = tl.load(k_base + n64[:, None] * k_stride_s + d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + n64[:, None] * v_stride_s + d[None, :], mask=kv_mask, other=0.0)
    qk = _dot(q, tl.trans(k), INTERPRETED) * qk_scale  # (BLOCK_M, BLOCK_N)
    if MASKED:
        allowed = (n < seq_k)[None, :]
        if CAUSAL:
            allowed = allowed & (n[None, :] <= rows[:, None] + causal_offset)
        qk = tl.where(allowed, qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.reduce(qk, 1, tl.standard._elementwise_max))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet: no NaN
    if IS_FP64:
        alpha = tl.exp(m_i - m_safe)
        p = tl.exp(qk - m_safe[:, None])
    else:
        alpha = tl.exp2(m_i - m_safe)
        p = tl.exp2(qk - m_safe[:, None])
    l_i = l_i * alpha + tl.reduce(p, 1, tl.standard._sum_combine)
    pv = _dot(cast_for_store(p, v.dtype, INTERPRETED), v, INTERPRETED)
    acc = acc * alpha[:, None] + pv.to(acc.dtype)
    return acc, l_i, m_new


@device_function
def _fwd_inner(
    acc, l_i, m_i, q, k_base, v_base, k_stride_s, v_stride_s, rows, d, d_mask,
    lo,  # first key of the loop (a multiple of BLOCK_N)
    hi,  # end of the loop
    seq_k, causal_offset, qk_scale,
    BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, IS_FP64: tl.constexpr,
    INTERPRETED: tl.constexpr,
):  # fmt: skip
    """``_fwd_step`` over the key blocks [lo, hi) (arguments as there). Compiled: a ``range`` loop,
    which Triton software-pipelines (``num_stages``; a ``while`` loop it does not). Interpreted:
    a ``while`` loop (the rule in _triton.py: triton 3.6's interpreter cannot take run-time
    ``range`` bounds with numpy >= 2.4)."""
    if INTERPRETED:
        start_n = lo
        while start_n < hi:
            acc, l_i, m_i = _fwd_step(
                acc, l_i, m_i, q, k_base, v_base, k_stride_s, v_stride_s, rows, d, d_mask, start_n, seq_k,
                causal_offset, qk_scale, BLOCK_N, MASKED, CAUSAL, IS_FP64, INTERPRETED,
            )  # fmt: skip
            start_n += BLOCK_N
    else:
        for start_n in range(lo, hi, BLOCK_N):
            acc, l_i, m_i = _fwd_step(
                acc, l_i, m_i, q, k_base, v_base, k_stride_s, v_stride_s, rows, d, d_mask, start_n, seq_k,
                causal_offset, qk_scale, BLOCK_N, MASKED, CAUSAL, IS_FP64, INTERPRETED,
            )  # fmt: skip
    return acc, l_i, m_i


@triton.jit
def _attention_fwd_kernel(
    q_ptr,  # (B, T, Hq, D) queries, last dimension contiguous
    q_stride_b,  # elements between sequences of q
    q_stride_t,  # elements between tokens of q
    q_stride_h,  # elements between heads of q
    k_ptr,  # (B, S, Hk, D) keys, last dimension contiguous
    k_stride_b,  # elements between sequences of k
    k_stride_s,  # elements between keys
    k_stride_h,  # elements between heads of k
    v_ptr,  # (B, S, Hk, D) values, last dimension contiguous
    v_stride_b,  # elements between sequences of v
    v_stride_s,  # elements between values
    v_stride_h,  # elements between heads of v
    o_ptr,  # (B, T, Hq, D) output, contiguous, q's dtype
    lse_ptr,  # (B, Hq, T) logsumexp of each row's scaled scores (base 2), contiguous
    seq_q,  # T
    seq_k,  # S
    n_q_heads,  # Hq
    group,  # Hq // Hk: query heads per KV head
    qk_scale,  # softmax scale, times log2(e) unless IS_FP64
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_D: tl.constexpr,  # next power of two >= D
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per iteration
    CAUSAL: tl.constexpr,  # causal mask aligned to the end of the keys
    IS_FP64: tl.constexpr,  # compute in fp64, else fp32
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter
):
    """o = softmax(scale q k^T [+ causal mask]) v and lse for BLOCK_M queries of one (sequence, head)."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    pid_m = tl.program_id(0)
    if CAUSAL:  # the last query blocks see the most keys: start them first (load balance)
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_q_heads).to(tl.int64)
    h = pid_bh % n_q_heads
    hk = (h // group).to(tl.int64)
    h64 = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    rows = start_m + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    row_mask = rows < seq_q
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q_ptrs = q_ptr + b * q_stride_b + h64 * q_stride_h + rows.to(tl.int64)[:, None] * q_stride_t + d[None, :]
    q = tl.load(q_ptrs, mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    k_base = k_ptr + b * k_stride_b + hk * k_stride_h
    v_base = v_ptr + b * v_stride_b + hk * v_stride_h

    causal_offset = seq_k - seq_q
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=cdt)
    l_i = tl.full([BLOCK_M], 0.0, dtype=cdt)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=cdt)
    if CAUSAL:
        hi = tl.minimum(seq_k, start_m + BLOCK_M + causal_offset)  # keys past the last row's diagonal: none
        full_end = tl.maximum(tl.minimum(seq_k, start_m + causal_offset + 1), 0)  # keys every row sees
    else:
        hi = seq_k
        full_end = seq_k
    full_end = (full_end // BLOCK_N) * BLOCK_N
    # Blocks every row sees in full: no mask arithmetic. Then the diagonal / last partial blocks.
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, k_stride_s, v_stride_s, rows, d, d_mask, 0, full_end, seq_k,
        causal_offset, qk_scale, BLOCK_N, False, CAUSAL, IS_FP64, INTERPRETED,
    )  # fmt: skip
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, k_stride_s, v_stride_s, rows, d, d_mask, full_end, hi, seq_k,
        causal_offset, qk_scale, BLOCK_N, True, CAUSAL, IS_FP64, INTERPRETED,
    )  # fmt: skip

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = _saved_lse(m_i, l_safe, lse_ptr.dtype.element_ty, IS_FP64)
    o_ptrs = o_ptr + ((b * seq_q + rows.to(tl.int64)[:, None]) * n_q_heads + h64) * HEAD_DIM + d[None, :]
    tl.store(o_ptrs, cast_for_store(out, o_ptr.dtype.element_ty, INTERPRETED), mask=row_mask[:, None] & d_mask[None, :])
    tl.store(lse_ptr + (b * n_q_heads + h64) * seq_q + rows, lse.to(lse_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def _attention_decode_kernel(
    q_ptr,  # (B, T, Hq, D) queries, last dimension contiguous
    q_stride_b,  # elements between sequences of q
    q_stride_t,  # elements between tokens of q
    q_stride_h,  # elements between heads of q
    k_ptr,  # (B, S, Hk, D) keys (e.g. a KV cache), last dimension contiguous
    k_stride_b,  # elements between sequences of k
    k_stride_s,  # elements between keys
    k_stride_h,  # elements between heads of k
    v_ptr,  # (B, S, Hk, D) values, last dimension contiguous
    v_stride_b,  # elements between sequences of v
    v_stride_s,  # elements between values
    v_stride_h,  # elements between heads of v
    part_o_ptr,  # (B * Hk, n_splits, BLOCK_M, BLOCK_D) fp32/fp64: each slice's normalized output
    part_lse_ptr,  # (B * Hk, n_splits, BLOCK_M) each slice's logsumexp (base 2; -inf: no key)
    seq_q,  # T
    seq_k,  # S
    n_kv_heads,  # Hk
    group,  # Hq // Hk
    split_len,  # keys per slice (a multiple of BLOCK_N)
    n_splits,  # slices of the keys
    qk_scale,  # softmax scale, times log2(e) unless IS_FP64
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_D: tl.constexpr,  # next power of two >= D
    BLOCK_M: tl.constexpr,  # rows per tile >= T * group: row r is token r // group, head hk * group + r % group
    BLOCK_N: tl.constexpr,  # keys per iteration
    CAUSAL: tl.constexpr,  # causal mask aligned to the end of the keys
    IS_FP64: tl.constexpr,  # compute in fp64, else fp32
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter
):
    """Flash-decoding, step 1: every query row of one KV head against one slice of the keys."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    pid_split = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    b = (pid_bhk // n_kv_heads).to(tl.int64)
    hk = (pid_bhk % n_kv_heads).to(tl.int64)
    r = tl.arange(0, BLOCK_M)
    t = r // group  # token of each row
    h = hk * group + (r % group)  # query head of each row
    row_mask = r < seq_q * group
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    q_ptrs = q_ptr + b * q_stride_b + t.to(tl.int64)[:, None] * q_stride_t + h[:, None] * q_stride_h + d[None, :]
    q = tl.load(q_ptrs, mask=row_mask[:, None] & d_mask[None, :], other=0.0)
    k_base = k_ptr + b * k_stride_b + hk * k_stride_h
    v_base = v_ptr + b * v_stride_b + hk * v_stride_h

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=cdt)
    l_i = tl.full([BLOCK_M], 0.0, dtype=cdt)
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=cdt)
    lo = pid_split * split_len
    hi = tl.minimum(seq_k, lo + split_len)
    acc, l_i, m_i = _fwd_inner(
        acc, l_i, m_i, q, k_base, v_base, k_stride_s, v_stride_s, t, d, d_mask, lo, hi, seq_k,
        seq_k - seq_q, qk_scale, BLOCK_N, True, CAUSAL, IS_FP64, INTERPRETED,
    )  # fmt: skip
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    lse = _saved_lse(m_i, l_safe, part_lse_ptr.dtype.element_ty, IS_FP64)
    lse = tl.where(l_i == 0.0, float("-inf"), lse)  # a slice with no key for this row
    part = pid_bhk.to(tl.int64) * n_splits + pid_split
    tl.store(part_o_ptr + (part * BLOCK_M + r[:, None]) * BLOCK_D + d[None, :], out)
    tl.store(part_lse_ptr + part * BLOCK_M + r, lse)


@triton.jit
def _attention_decode_combine_kernel(
    part_o_ptr,  # (B * Hk, n_splits, BLOCK_M, BLOCK_D) the slices' normalized outputs, compute dtype
    part_lse_ptr,  # (B * Hk, n_splits, BLOCK_M) the slices' logsumexps (base 2; -inf: no key in a slice)
    o_ptr,  # (B, T, Hq, D) output, contiguous, q's dtype
    lse_ptr,  # (B, Hq, T) logsumexp (base 2), contiguous, part_lse's dtype
    seq_q,  # T
    n_kv_heads,  # Hk
    group,  # Hq // Hk
    n_splits,  # slices of the keys
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_D: tl.constexpr,  # next power of two >= D
    BLOCK_M: tl.constexpr,  # rows per tile (as in the decode kernel)
    IS_FP64: tl.constexpr,  # fp64 partials, else fp32
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter
):
    """Flash-decoding, step 2: o = sum_s exp2(lse_s - lse) o_s with lse = log2 sum_s exp2(lse_s)
    (base 2, as the slices' lse_s, for every dtype)."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    ldt = part_lse_ptr.dtype.element_ty  # the saved lse's dtype (fp64 for fp32 inputs, see _lse_parts)
    pid_bhk = tl.program_id(0)
    b = (pid_bhk // n_kv_heads).to(tl.int64)
    hk = (pid_bhk % n_kv_heads).to(tl.int64)
    r = tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    base = pid_bhk.to(tl.int64) * n_splits
    # Pass 1: the largest slice lse of each row (every row has a key in at least one slice).
    m = tl.full([BLOCK_M], float("-inf"), dtype=ldt)
    s = 0
    while s < n_splits:
        m = tl.maximum(m, tl.load(part_lse_ptr + (base + s) * BLOCK_M + r))
        s += 1
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    # Pass 2: weights exp2(lse_s - m), the weighted sum of the slices' outputs.
    acc = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=cdt)
    wsum = tl.full([BLOCK_M], 0.0, dtype=cdt)
    s = 0
    while s < n_splits:
        lse_s = tl.load(part_lse_ptr + (base + s) * BLOCK_M + r)
        w = tl.exp2(lse_s - m_safe).to(cdt)
        o_s = tl.load(part_o_ptr + ((base + s) * BLOCK_M + r[:, None]) * BLOCK_D + d[None, :])
        acc += w[:, None] * o_s
        wsum += w
        s += 1
    w_safe = tl.where(wsum == 0.0, 1.0, wsum)
    out = acc / w_safe[:, None]
    lse = m_safe + tl.log2(w_safe).to(ldt)
    t = (r // group).to(tl.int64)
    h = hk * group + (r % group)
    n_q_heads = n_kv_heads * group
    row_mask = r < seq_q * group
    o_ptrs = o_ptr + ((b * seq_q + t[:, None]) * n_q_heads + h[:, None]) * HEAD_DIM + d[None, :]
    mask = row_mask[:, None] & (d < HEAD_DIM)[None, :]
    tl.store(o_ptrs, cast_for_store(out, o_ptr.dtype.element_ty, INTERPRETED), mask=mask)
    tl.store(lse_ptr + (b * n_q_heads + h) * seq_q + t, lse.to(lse_ptr.dtype.element_ty), mask=row_mask)


@triton.jit
def _attention_bwd_preprocess_kernel(
    o_ptr,  # (B, T, Hq, D) forward output, contiguous
    do_ptr,  # (B, T, Hq, D) gradient of the output, last dimension contiguous
    do_stride_b,  # elements between sequences of do
    do_stride_t,  # elements between tokens of do
    do_stride_h,  # elements between heads of do
    delta_ptr,  # (B, Hq, T) output: delta = rowsum(do * o), fp32 (fp64 for fp64)
    seq_q,  # T
    n_q_heads,  # Hq
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_D: tl.constexpr,  # next power of two >= D
    BLOCK_M: tl.constexpr,  # rows per program
    IS_FP64: tl.constexpr,  # compute in fp64, else fp32
):
    """delta_i = <do_i, o_i> for BLOCK_M rows of one (sequence, head)."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_q_heads).to(tl.int64)
    h = (pid_bh % n_q_heads).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows64 = rows.to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    mask = (rows < seq_q)[:, None] & (d < HEAD_DIM)[None, :]
    o = tl.load(o_ptr + ((b * seq_q + rows64[:, None]) * n_q_heads + h) * HEAD_DIM + d[None, :], mask=mask, other=0.0)
    do = tl.load(
        do_ptr + b * do_stride_b + h * do_stride_h + rows64[:, None] * do_stride_t + d[None, :], mask=mask, other=0.0
    )
    delta = tl.reduce(o.to(cdt) * do.to(cdt), 1, tl.standard._sum_combine)
    tl.store(delta_ptr + (b * n_q_heads + h) * seq_q + rows, delta, mask=rows < seq_q)


@device_function
def _dkdv_step(
    dk,  # (BLOCK_N, BLOCK_D) running dk / scale, compute dtype
    dv,  # (BLOCK_N, BLOCK_D) running dv, compute dtype
    k,  # (BLOCK_N, BLOCK_D) this program's keys
    v,  # (BLOCK_N, BLOCK_D) this program's values
    q_base,  # pointer to query 0 of this (sequence, query head)
    do_base,  # pointer to row 0 of do for this (sequence, query head)
    q_stride_t,  # elements between tokens of q
    do_stride_t,  # elements between tokens of do
    lse_row,  # pointer to lse[b, h, 0] (base 2)
    delta_row,  # pointer to delta[b, h, 0]
    start_m,  # first query of this block
    n,  # (BLOCK_N,) key indices
    n_mask,  # (BLOCK_N,) n < S
    d,  # (BLOCK_D,) head-dim offsets
    d_mask,  # (BLOCK_D,) d < HEAD_DIM
    seq_q,  # T
    causal_offset,  # S - T
    qk_scale,  # scale, times log2(e) unless IS_FP64
    BLOCK_M: tl.constexpr,  # queries per block
    CAUSAL: tl.constexpr,  # causal attention
    IS_FP64: tl.constexpr,  # fp64 compute with exp, else fp32 with exp2
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter
):
    """dv += P^T do and dk += dS^T q for one block of queries (P rebuilt from the saved lse)."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    m = start_m + tl.arange(0, BLOCK_M)
    m64 = m.to(tl.int64)
    m_mask = m < seq_q
    qd_mask = m_mask[:, None] & d_mask[None, :]
    q = tl.load(q_base + m64[:, None] * q_stride_t + d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(do_base + m64[:, None] * do_stride_t + d[None, :], mask=qd_mask, other=0.0)
    lse_hi, lse_lo = _lse_parts(tl.load(lse_row + m, mask=m_mask, other=0.0), IS_FP64)
    delta = tl.load(delta_row + m, mask=m_mask, other=0.0).to(cdt)
    kq = _dot(k, tl.trans(q), INTERPRETED)  # (BLOCK_N, BLOCK_M): s^T / scale
    allowed = n_mask[:, None] & m_mask[None, :]
    if CAUSAL:
        allowed = allowed & (n[:, None] <= m[None, :] + causal_offset)
    p_t = _probs(kq * qk_scale, lse_hi[None, :], lse_lo[None, :], IS_FP64)  # x as the forward computed it
    p_t = tl.where(allowed, p_t, 0.0)  # (BLOCK_N, BLOCK_M)
    dv += _dot(cast_for_store(p_t, do.dtype, INTERPRETED), do, INTERPRETED).to(cdt)
    dp_t = _dot(v, tl.trans(do), INTERPRETED).to(cdt)  # (BLOCK_N, BLOCK_M)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += _dot(cast_for_store(ds_t, q.dtype, INTERPRETED), q, INTERPRETED).to(cdt)
    return dk, dv


@device_function
def _dq_step(
    dq,  # (BLOCK_M, BLOCK_D) running dq / scale, compute dtype
    q,  # (BLOCK_M, BLOCK_D) this program's queries
    do,  # (BLOCK_M, BLOCK_D) their output gradients
    lse_hi,  # (BLOCK_M,) their lse (base 2) = lse_hi + lse_lo, as _lse_parts splits it, compute dtype
    lse_lo,  # (BLOCK_M,) the low part (0 unless the lse was saved in fp64 for fp32 inputs)
    delta,  # (BLOCK_M,) their delta, compute dtype
    k_base,  # pointer to key 0 of this (sequence, KV head)
    v_base,  # pointer to value 0 of this (sequence, KV head)
    k_stride_s,  # elements between keys
    v_stride_s,  # elements between values
    start_n,  # first key of this block
    m,  # (BLOCK_M,) query indices
    m_mask,  # (BLOCK_M,) m < T
    d,  # (BLOCK_D,) head-dim offsets
    d_mask,  # (BLOCK_D,) d < HEAD_DIM
    seq_k,  # S
    causal_offset,  # S - T
    qk_scale,  # scale, times log2(e) unless IS_FP64
    BLOCK_N: tl.constexpr,  # keys per block
    CAUSAL: tl.constexpr,  # causal attention
    IS_FP64: tl.constexpr,  # fp64 compute with exp, else fp32 with exp2
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter
):
    """dq += dS k for one block of keys."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    n = start_n + tl.arange(0, BLOCK_N)
    n64 = n.to(tl.int64)
    kv_mask = (n < seq_k)[:, None] & d_mask[None, :]
    k = tl.load(k_base + n64[:, None] * k_stride_s + d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(v_base + n64[:, None] * v_stride_s + d[None, :], mask=kv_mask, other=0.0)
    qk = _dot(q, tl.trans(k), INTERPRETED)  # (BLOCK_M, BLOCK_N)
    allowed = m_mask[:, None] & (n < seq_k)[None, :]
    if CAUSAL:
        allowed = allowed & (n[None, :] <= m[:, None] + causal_offset)
    p = _probs(qk * qk_scale, lse_hi[:, None], lse_lo[:, None], IS_FP64)
    p = tl.where(allowed, p, 0.0)
    dp = _dot(do, tl.trans(v), INTERPRETED).to(cdt)
    ds = p * (dp - delta[:, None])
    dq += _dot(cast_for_store(ds, k.dtype, INTERPRETED), k, INTERPRETED).to(cdt)
    return dq


@triton.jit
def _attention_bwd_dkdv_kernel(
    q_ptr,  # (B, T, Hq, D) queries, last dimension contiguous
    q_stride_b,  # elements between sequences of q
    q_stride_t,  # elements between tokens of q
    q_stride_h,  # elements between heads of q
    k_ptr,  # (B, S, Hk, D) keys, last dimension contiguous
    k_stride_b,  # elements between sequences of k
    k_stride_s,  # elements between keys
    k_stride_h,  # elements between heads of k
    v_ptr,  # (B, S, Hk, D) values, last dimension contiguous
    v_stride_b,  # elements between sequences of v
    v_stride_s,  # elements between values
    v_stride_h,  # elements between heads of v
    do_ptr,  # (B, T, Hq, D) gradient of the output, last dimension contiguous
    do_stride_b,  # elements between sequences of do
    do_stride_t,  # elements between tokens of do
    do_stride_h,  # elements between heads of do
    lse_ptr,  # (B, Hq, T) forward logsumexp (base 2)
    delta_ptr,  # (B, Hq, T) rowsum(do * o)
    dk_ptr,  # (B, S, Hk, D) output, contiguous, k's dtype
    dv_ptr,  # (B, S, Hk, D) output, contiguous, v's dtype
    seq_q,  # T
    seq_k,  # S
    n_kv_heads,  # Hk
    group,  # Hq // Hk
    qk_scale,  # softmax scale, times log2(e) unless IS_FP64
    sm_scale,  # softmax scale
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_D: tl.constexpr,  # next power of two >= D
    BLOCK_M: tl.constexpr,  # queries per iteration
    BLOCK_N: tl.constexpr,  # keys per program
    CAUSAL: tl.constexpr,  # causal mask aligned to the end of the keys
    IS_FP64: tl.constexpr,  # compute in fp64, else fp32
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter
):
    """dk, dv for BLOCK_N keys of one KV head, summed over the query heads of its group."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    pid_n = tl.program_id(0)
    pid_bhk = tl.program_id(1)
    b = (pid_bhk // n_kv_heads).to(tl.int64)
    hk = (pid_bhk % n_kv_heads).to(tl.int64)
    start_n = pid_n * BLOCK_N
    n = start_n + tl.arange(0, BLOCK_N)
    n64 = n.to(tl.int64)
    n_mask = n < seq_k
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    kv_mask = n_mask[:, None] & d_mask[None, :]
    k_rows = k_ptr + b * k_stride_b + hk * k_stride_h + n64[:, None] * k_stride_s
    v_rows = v_ptr + b * v_stride_b + hk * v_stride_h + n64[:, None] * v_stride_s
    k = tl.load(k_rows + d[None, :], mask=kv_mask, other=0.0)  # stays in registers for the whole loop
    v = tl.load(v_rows + d[None, :], mask=kv_mask, other=0.0)
    dk = tl.full([BLOCK_N, BLOCK_D], 0.0, dtype=cdt)
    dv = tl.full([BLOCK_N, BLOCK_D], 0.0, dtype=cdt)
    causal_offset = seq_k - seq_q
    lo = 0
    if CAUSAL:  # queries before start_n - (S - T) see none of these keys
        lo = tl.maximum(start_n - causal_offset, 0)
        lo = (lo // BLOCK_M) * BLOCK_M
    n_q_heads = n_kv_heads * group
    g = 0
    while g < group:
        h = hk * group + g
        q_base = q_ptr + b * q_stride_b + h * q_stride_h
        do_base = do_ptr + b * do_stride_b + h * do_stride_h
        stats_base = (b * n_q_heads + h) * seq_q
        if INTERPRETED:
            start_m = lo
            while start_m < seq_q:
                dk, dv = _dkdv_step(
                    dk, dv, k, v, q_base, do_base, q_stride_t, do_stride_t, lse_ptr + stats_base,
                    delta_ptr + stats_base, start_m, n, n_mask, d, d_mask, seq_q, causal_offset, qk_scale,
                    BLOCK_M, CAUSAL, IS_FP64, INTERPRETED,
                )  # fmt: skip
                start_m += BLOCK_M
        else:
            for start_m in range(lo, seq_q, BLOCK_M):
                dk, dv = _dkdv_step(
                    dk, dv, k, v, q_base, do_base, q_stride_t, do_stride_t, lse_ptr + stats_base,
                    delta_ptr + stats_base, start_m, n, n_mask, d, d_mask, seq_q, causal_offset, qk_scale,
                    BLOCK_M, CAUSAL, IS_FP64, INTERPRETED,
                )  # fmt: skip
        g += 1
    dk = dk * sm_scale
    out_offs = ((b * seq_k + n64[:, None]) * n_kv_heads + hk) * HEAD_DIM + d[None, :]
    tl.store(dk_ptr + out_offs, cast_for_store(dk, dk_ptr.dtype.element_ty, INTERPRETED), mask=kv_mask)
    tl.store(dv_ptr + out_offs, cast_for_store(dv, dv_ptr.dtype.element_ty, INTERPRETED), mask=kv_mask)


@triton.jit
def _attention_bwd_dq_kernel(
    q_ptr,  # (B, T, Hq, D) queries, last dimension contiguous
    q_stride_b,  # elements between sequences of q
    q_stride_t,  # elements between tokens of q
    q_stride_h,  # elements between heads of q
    k_ptr,  # (B, S, Hk, D) keys, last dimension contiguous
    k_stride_b,  # elements between sequences of k
    k_stride_s,  # elements between keys
    k_stride_h,  # elements between heads of k
    v_ptr,  # (B, S, Hk, D) values, last dimension contiguous
    v_stride_b,  # elements between sequences of v
    v_stride_s,  # elements between values
    v_stride_h,  # elements between heads of v
    do_ptr,  # (B, T, Hq, D) gradient of the output, last dimension contiguous
    do_stride_b,  # elements between sequences of do
    do_stride_t,  # elements between tokens of do
    do_stride_h,  # elements between heads of do
    lse_ptr,  # (B, Hq, T) forward logsumexp (base 2)
    delta_ptr,  # (B, Hq, T) rowsum(do * o)
    dq_ptr,  # (B, T, Hq, D) output, contiguous, q's dtype
    seq_q,  # T
    seq_k,  # S
    n_q_heads,  # Hq
    group,  # Hq // Hk
    qk_scale,  # softmax scale, times log2(e) unless IS_FP64
    sm_scale,  # softmax scale
    HEAD_DIM: tl.constexpr,  # D
    BLOCK_D: tl.constexpr,  # next power of two >= D
    BLOCK_M: tl.constexpr,  # queries per program
    BLOCK_N: tl.constexpr,  # keys per iteration
    CAUSAL: tl.constexpr,  # causal mask aligned to the end of the keys
    IS_FP64: tl.constexpr,  # compute in fp64, else fp32
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter
):
    """dq for BLOCK_M queries of one (sequence, head), looping over the keys they see."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    pid_m = tl.program_id(0)
    if CAUSAL:  # the last query blocks see the most keys: start them first
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = (pid_bh // n_q_heads).to(tl.int64)
    h = pid_bh % n_q_heads
    hk = (h // group).to(tl.int64)
    h64 = h.to(tl.int64)
    start_m = pid_m * BLOCK_M
    m = start_m + tl.arange(0, BLOCK_M)
    m64 = m.to(tl.int64)
    m_mask = m < seq_q
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HEAD_DIM
    qd_mask = m_mask[:, None] & d_mask[None, :]
    q_rows = q_ptr + b * q_stride_b + h64 * q_stride_h + m64[:, None] * q_stride_t
    q = tl.load(q_rows + d[None, :], mask=qd_mask, other=0.0)
    do = tl.load(
        do_ptr + b * do_stride_b + h64 * do_stride_h + m64[:, None] * do_stride_t + d[None, :], mask=qd_mask, other=0.0
    )
    stats_base = (b * n_q_heads + h64) * seq_q
    lse_hi, lse_lo = _lse_parts(tl.load(lse_ptr + stats_base + m, mask=m_mask, other=0.0), IS_FP64)
    delta = tl.load(delta_ptr + stats_base + m, mask=m_mask, other=0.0).to(cdt)
    k_base = k_ptr + b * k_stride_b + hk * k_stride_h
    v_base = v_ptr + b * v_stride_b + hk * v_stride_h
    causal_offset = seq_k - seq_q
    if CAUSAL:
        hi = tl.minimum(seq_k, start_m + BLOCK_M + causal_offset)
    else:
        hi = seq_k
    dq = tl.full([BLOCK_M, BLOCK_D], 0.0, dtype=cdt)
    if INTERPRETED:
        start_n = 0
        while start_n < hi:
            dq = _dq_step(
                dq, q, do, lse_hi, lse_lo, delta, k_base, v_base, k_stride_s, v_stride_s, start_n, m, m_mask, d,
                d_mask, seq_k, causal_offset, qk_scale, BLOCK_N, CAUSAL, IS_FP64, INTERPRETED,
            )  # fmt: skip
            start_n += BLOCK_N
    else:
        for start_n in range(0, hi, BLOCK_N):
            dq = _dq_step(
                dq, q, do, lse_hi, lse_lo, delta, k_base, v_base, k_stride_s, v_stride_s, start_n, m, m_mask, d,
                d_mask, seq_k, causal_offset, qk_scale, BLOCK_N, CAUSAL, IS_FP64, INTERPRETED,
            )  # fmt: skip
    dq = dq * sm_scale
    out_offs = ((b * seq_q + m64[:, None]) * n_q_heads + h64) * HEAD_DIM + d[None, :]
    tl.store(dq_ptr + out_offs, cast_for_store(dq, dq_ptr.dtype.element_ty, INTERPRETED), mask=qd_mask)


# --------------------------------------------------------------------------------------------
# Host launchers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionConfig:
    """Block sizes and launch options (``attention_config`` picks them; tests may force one)."""

    block_m: int  # forward: queries per program
    block_n: int  # forward: keys per iteration
    num_warps: int  # forward warps per program (ignored by the interpreter)
    num_stages: int  # software-pipelining depth of the key loops (ignored by the interpreter)
    bwd_block_m: int  # dk/dv kernel: queries per iteration; dq kernel: keys per iteration
    bwd_block_n: int  # dk/dv kernel: keys per program; dq kernel: queries per program
    bwd_num_warps: int  # backward warps per program
    decode_block_n: int  # flash-decoding: keys per iteration
    decode: Optional[bool] = None  # None: flash-decoding when T * Hq / Hk <= DECODE_MAX_ROWS; True/False forces
    num_splits: Optional[int] = None  # flash-decoding: slices of the keys (None: enough to fill the GPU)
    bwd_num_stages: int = 2  # software-pipelining depth of the backward's loops


def attention_config(D: int, dtype: torch.dtype, device: torch.device) -> AttentionConfig:
    """Block sizes by head dim and dtype on CUDA (a small table, H100/H200 in mind, checked with
    ptxas for sm_90: wgmma for 16-bit inputs, no spills up to D = 128); small fixed blocks for the
    interpreter (each program iteration costs ~1 ms of numpy there, whatever the block)."""
    if runs_interpreted(device):
        return AttentionConfig(64, 64, 4, 1, 32, 64, 4, 64, bwd_num_stages=1)
    if dtype == torch.float64:  # gradcheck-grade precision, not speed
        return AttentionConfig(32, 16, 4, 1, 16, 32, 4, 16, bwd_num_stages=1)
    if dtype == torch.float32:  # 3xTF32 products (their split operands spill: correct, not tuned)
        if D <= 128:
            return AttentionConfig(64, 32, 4 if D <= 64 else 8, 2, 32, 64, 8, 32)
        return AttentionConfig(64, 16, 8, 2, 16, 32, 8, 16)
    # float16 / bfloat16, checked with ptxas for sm_90 (wgmma, no spills up to D = 128):
    #                      fwd: block_m, block_n, warps, stages; bwd: block_m, block_n, warps; decode block_n
    if D <= 64:
        return AttentionConfig(128, 64, 4, 3, 32, 128, 8, 64, bwd_num_stages=3)
    if D <= 128:
        return AttentionConfig(128, 64, 8, 3, 32, 128, 8, 64, bwd_num_stages=2)
    return AttentionConfig(64, 32, 8, 2, 16, 64, 8, 32, bwd_num_stages=2)  # D = 256: the backward spills (~300 B)


def _check_args(op: str, q: Tensor, k: Tensor, v: Tensor, causal: bool) -> torch.device:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op} expects {name} to be a tensor, got {type(t).__name__}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"{op} expects q of shape (B, T, Hq, D), k and v of shape (B, S, Hk, D), got {tuple(q.shape)}, "
            f"{tuple(k.shape)} and {tuple(v.shape)}"
        )
    B, T, Hq, D = q.shape
    if k.shape[3] != D or v.shape[3] != D:
        raise ValueError(
            f"{op}: q, k and v must have one head dim, got q: D={D}, k: D={k.shape[3]}, v: D={v.shape[3]}"
        )
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have one shape (B, S, Hk, D), got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != B:
        raise ValueError(f"{op}: q and k must have one batch size, got q: B={B} and k: B={k.shape[0]}")
    S, Hk = k.shape[1], k.shape[2]
    if Hk < 1 or Hq % Hk != 0:
        raise ValueError(f"{op}: k's head count Hk={Hk} must divide q's Hq={Hq} (grouped-query attention)")
    if not MIN_HEAD_DIM <= D <= MAX_HEAD_DIM:
        raise ValueError(f"{op}: head dims from {MIN_HEAD_DIM} to {MAX_HEAD_DIM} are supported, got D={D}")
    if causal and T > S:
        raise ValueError(
            f"{op}: causal attention needs T <= S (the T queries are the last T positions of the S keys; "
            f"with T > S the end-aligned mask is undefined), got T={T} and S={S}"
        )
    if S == 0 and T > 0 and B > 0:
        raise ValueError(f"{op}: no keys (S=0) for T={T} queries: the softmax is undefined")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"{op}: q, k and v must have one dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if q.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op} supports float16, bfloat16, float32 and float64, got dtype {q.dtype}")
    return check_device(op, q=q, k=k, v=v)


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def _common(q: Tensor, scale: float) -> dict:
    is_fp64 = q.dtype == torch.float64
    return dict(
        qk_scale=float(scale) if is_fp64 else float(scale) * LOG2E,
        IS_FP64=is_fp64,
    )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' compute dtype for inputs of ``dtype`` (also delta's and the decode partials')."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The saved lse's dtype: fp64 for fp32 (and fp64) inputs, whose backward needs it to better
    than fp32 precision (``_lse_parts``); fp32 for fp16 / bf16, whose P is rounded to 16 bits."""
    return torch.float64 if dtype in (torch.float32, torch.float64) else torch.float32


def _num_splits(S: int, BHk: int, block_n: int, device: torch.device) -> int:
    """Slices of the keys for flash-decoding: ~2 programs per SM, each slice >= 2 key blocks."""
    if runs_interpreted(device):
        return 1
    want = cdiv(2 * num_sms(device), max(BHk, 1))
    return max(1, min(want, cdiv(S, 2 * block_n)))


def attention_forward(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = True, scale: Optional[float] = None, *,
    config: Optional[AttentionConfig] = None,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Attention of q (B, T, Hq, D) over k, v (B, S, Hk, D); returns (o (B, T, Hq, D), lse (B, Hq, T)).

    lse is the base-2 logsumexp of each row's scaled scores, log2 sum_j exp(s_ij) (the natural one
    is lse * ln 2), fp64 for fp32 and fp64 inputs, fp32 for fp16 / bf16: what ``attention_backward``
    takes back.
    """
    device = _check_args("attention", q, k, v, causal)
    B, T, Hq, D = q.shape
    S, Hk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    out = q.new_empty((B, T, Hq, D))
    lse = torch.empty((B, Hq, T), dtype=_lse_dtype(q.dtype), device=q.device)
    if out.numel() == 0:
        return out, lse
    q, k, v = (_last_dim_contiguous(t) for t in (q, k, v))
    cfg = config or attention_config(D, q.dtype, device)
    group = Hq // Hk
    interp = runs_interpreted(device)
    common = _common(q, scale)
    block_d = max(16, next_power_of_2(D))
    strides = (q, *q.stride()[:3], k, *k.stride()[:3], v, *v.stride()[:3])
    decode = cfg.decode if cfg.decode is not None else T * group <= DECODE_MAX_ROWS
    if decode:
        block_m = max(16, next_power_of_2(T * group))
        n_splits = cfg.num_splits or _num_splits(S, B * Hk, cfg.decode_block_n, device)
        split_len = cdiv(cdiv(S, n_splits), cfg.decode_block_n) * cfg.decode_block_n
        n_splits = cdiv(S, split_len)
        part_o = torch.empty((B * Hk, n_splits, block_m, block_d), dtype=_compute_dtype(q.dtype), device=q.device)
        part_lse = torch.empty((B * Hk, n_splits, block_m), dtype=lse.dtype, device=q.device)
        launch(
            _attention_decode_kernel, (n_splits, B * Hk), device, *strides, part_o, part_lse,
            T, S, Hk, group, split_len, n_splits, common["qk_scale"],
            HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=cfg.decode_block_n, CAUSAL=bool(causal),
            IS_FP64=common["IS_FP64"], INTERPRETED=interp,
            num_warps=4, num_stages=cfg.num_stages,
        )  # fmt: skip
        launch(
            _attention_decode_combine_kernel, (B * Hk,), device, part_o, part_lse, out, lse, T, Hk, group, n_splits,
            HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=block_m, IS_FP64=common["IS_FP64"], INTERPRETED=interp, num_warps=4,
        )  # fmt: skip
        return out, lse
    grid = (cdiv(T, cfg.block_m), B * Hq)
    launch(
        _attention_fwd_kernel, grid, device, *strides, out, lse, T, S, Hq, group, common["qk_scale"],
        HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, CAUSAL=bool(causal),
        IS_FP64=common["IS_FP64"], INTERPRETED=interp,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return out, lse


def attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool = True,
    scale: Optional[float] = None, grad_lse: Optional[Tensor] = None, *, config: Optional[AttentionConfig] = None,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """dq, dk, dv (contiguous, the inputs' dtype) from the output gradient and the forward's out and lse
    (``attention_forward``'s base-2 lse, used as it is: P is rebuilt as exp2(s log2(e) - lse)).

    ``grad_lse`` (B, Hq, T), the gradient reaching that base-2 lse, if any: d lse_i / d s_ij =
    log2(e) p_ij, so it enters as ds_ij = p_ij (dp_ij - (delta_i - log2(e) grad_lse_i)).
    """
    device = _check_args("attention_backward", q, k, v, causal)
    B, T, Hq, D = q.shape
    S, Hk = k.shape[1], k.shape[2]
    if grad_out.shape != q.shape or out.shape != q.shape or lse.shape != (B, Hq, T):
        raise ValueError(
            f"attention_backward: grad_out and out must have q's shape {tuple(q.shape)} and lse (B, Hq, T) = "
            f"{(B, Hq, T)}, got {tuple(grad_out.shape)}, {tuple(out.shape)} and {tuple(lse.shape)}"
        )
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    dq = q.new_empty((B, T, Hq, D))
    dk = k.new_empty((B, S, Hk, D))
    dv = v.new_empty((B, S, Hk, D))
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    q, k, v, grad_out = (_last_dim_contiguous(t) for t in (q, k, v, grad_out))
    out, lse = out.contiguous(), lse.contiguous()
    grad_out = grad_out.to(q.dtype)
    cfg = config or attention_config(D, q.dtype, device)
    group = Hq // Hk
    interp = runs_interpreted(device)
    common = _common(q, scale)
    block_d = max(16, next_power_of_2(D))
    delta = torch.empty((B, Hq, T), dtype=_compute_dtype(q.dtype), device=q.device)
    launch(
        _attention_bwd_preprocess_kernel, (cdiv(T, cfg.bwd_block_n), B * Hq), device, out, grad_out,
        *grad_out.stride()[:3], delta, T, Hq, HEAD_DIM=D, BLOCK_D=block_d, BLOCK_M=cfg.bwd_block_n,
        IS_FP64=common["IS_FP64"], num_warps=4,
    )  # fmt: skip
    if grad_lse is not None:
        delta = delta - grad_lse.to(delta.dtype) * LOG2E
    inputs = (q, *q.stride()[:3], k, *k.stride()[:3], v, *v.stride()[:3], grad_out, *grad_out.stride()[:3], lse, delta)
    consts = dict(
        HEAD_DIM=D, BLOCK_D=block_d, CAUSAL=bool(causal), IS_FP64=common["IS_FP64"], INTERPRETED=interp,
        num_warps=cfg.bwd_num_warps, num_stages=cfg.bwd_num_stages,
    )  # fmt: skip
    launch(
        _attention_bwd_dkdv_kernel, (cdiv(S, cfg.bwd_block_n), B * Hk), device, *inputs, dk, dv, T, S, Hk, group,
        common["qk_scale"], scale, BLOCK_M=cfg.bwd_block_m, BLOCK_N=cfg.bwd_block_n, **consts,
    )  # fmt: skip
    launch(
        _attention_bwd_dq_kernel, (cdiv(T, cfg.bwd_block_n), B * Hq), device, *inputs, dq, T, S, Hq, group,
        common["qk_scale"], scale, BLOCK_M=cfg.bwd_block_n, BLOCK_N=cfg.bwd_block_m, **consts,
    )  # fmt: skip
    return dq, dk, dv


# --------------------------------------------------------------------------------------------
# torch.library ops: replab_fast::attention, ::attention_backward
# --------------------------------------------------------------------------------------------


def _attention_impl(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """replab_fast::attention: (out (B, T, Hq, D), lse (B, Hq, T)), lse the base-2 logsumexp
    log2 sum_j exp(s_ij) as ``attention_forward`` returns it; both outputs are differentiable."""
    return attention_forward(q, k, v, causal, scale)


def _attention_fake(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float) -> tuple[Tensor, Tensor]:
    """The outputs' metadata: out like q; lse (B, Hq, T), base 2, in ``_lse_dtype`` (fp64 for fp32
    and fp64 inputs, fp32 for fp16 / bf16)."""
    _check_args("attention", q, k, v, causal)
    B, T, Hq, D = q.shape
    return q.new_empty((B, T, Hq, D)), q.new_empty((B, Hq, T), dtype=_lse_dtype(q.dtype))


def _attention_backward_impl(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool, scale: float,
    grad_lse: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    return attention_backward(grad_out, q, k, v, out, lse, causal, scale, grad_lse)


def _attention_backward_fake(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, causal: bool, scale: float,
    grad_lse: Optional[Tensor],
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    _check_args("attention_backward", q, k, v, causal)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


attention_op = register_op("replab_fast::attention", _attention_impl, _attention_fake)
attention_backward_op = register_op(
    "replab_fast::attention_backward", _attention_backward_impl, _attention_backward_fake
)


def _setup_attention(ctx, inputs, output) -> None:
    q, k, v, causal, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.causal, ctx.scale = causal, scale
    ctx.set_materialize_grads(False)


def _backward_attention(ctx, grad_out, grad_lse):
    """grad_lse is the gradient of the base-2 lse output; attention_backward applies its log2(e)."""
    if grad_out is None and grad_lse is None:
        return None, None, None, None, None
    q, k, v, out, lse = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = torch.ops.replab_fast.attention_backward(
        grad_out, q, k, v, out, lse, ctx.causal, ctx.scale, grad_lse
    )
    return dq, dk, dv, None, None


attention_op.register_autograd(_backward_attention, setup_context=_setup_attention)


def with_config(config: AttentionConfig, **changes) -> AttentionConfig:
    """``config`` with some fields changed (tests)."""
    return replace(config, **changes)
