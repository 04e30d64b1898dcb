"""The RoPE kernel's device code (the math is in the package docstring, ``replab_fast.kernels.rope``)."""

import triton
import triton.language as tl

from .._triton import cast_for_store


@triton.jit
def _rope_kernel(
    q_ptr,  # (B, T, Hq, D) queries, last dimension contiguous
    q_stride_b,  # elements between sequences of q
    q_stride_t,  # elements between tokens of q
    q_stride_h,  # elements between heads of q
    k_ptr,  # (B, T, Hk, D) keys, last dimension contiguous
    k_stride_b,  # elements between sequences of k
    k_stride_t,  # elements between tokens of k
    k_stride_h,  # elements between heads of k
    cos_ptr,  # (>= T, D/2) cosines, row t for token t, last dimension contiguous
    cos_stride_t,  # elements between rows of cos
    sin_ptr,  # (>= T, D/2) sines, same layout as cos
    sin_stride_t,  # elements between rows of sin
    q_out_ptr,  # (B, T, Hq, D) output, contiguous, q's dtype
    k_out_ptr,  # (B, T, Hk, D) output, contiguous, k's dtype
    seq_len,  # T
    n_q_heads,  # Hq
    n_k_heads,  # Hk
    HEAD_DIM: tl.constexpr,  # D (even)
    BLOCK_HALF: tl.constexpr,  # next power of two >= D/2 (pairs per head, padded)
    BLOCK_T: tl.constexpr,  # tokens per program
    BLOCK_HQ: tl.constexpr,  # q heads per program
    BLOCK_HK: tl.constexpr,  # k heads per program (head block j covers k heads [j*BLOCK_HK, ...))
    INTERLEAVED: tl.constexpr,  # pairs (2i, 2i+1) if True, (i, i + D/2) if False
    INVERSE: tl.constexpr,  # rotate by the negative angle (the backward)
    IS_FP64: tl.constexpr,  # compute in fp64, else fp32
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter (see cast_for_store)
):
    """(a, b) -> (a cos - b sin, a sin + b cos) on every pair of every q and k head of a token block."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    HALF: tl.constexpr = HEAD_DIM // 2
    pid_bt = tl.program_id(0)
    pid_h = tl.program_id(1)
    n_tblocks = (seq_len + BLOCK_T - 1) // BLOCK_T
    b = (pid_bt // n_tblocks).to(tl.int64)
    t = (pid_bt % n_tblocks) * BLOCK_T + tl.arange(0, BLOCK_T)  # (BLOCK_T,)
    t_mask = t < seq_len
    t64 = t.to(tl.int64)
    pair = tl.arange(0, BLOCK_HALF)  # (BLOCK_HALF,)
    pair_mask = pair < HALF

    # cos/sin for these tokens, once: (BLOCK_T, 1, BLOCK_HALF)
    cs_mask = t_mask[:, None] & pair_mask[None, :]
    cos = tl.load(cos_ptr + t64[:, None] * cos_stride_t + pair[None, :], mask=cs_mask, other=0.0).to(cdt)
    sin = tl.load(sin_ptr + t64[:, None] * sin_stride_t + pair[None, :], mask=cs_mask, other=0.0).to(cdt)
    if INVERSE:
        sin = -sin
    cos = cos[:, None, :]
    sin = sin[:, None, :]

    hq = pid_h * BLOCK_HQ + tl.arange(0, BLOCK_HQ)  # (BLOCK_HQ,)
    hk = pid_h * BLOCK_HK + tl.arange(0, BLOCK_HK)  # (BLOCK_HK,)
    q_rows = q_ptr + b * q_stride_b + t64[:, None, None] * q_stride_t + hq.to(tl.int64)[None, :, None] * q_stride_h
    k_rows = k_ptr + b * k_stride_b + t64[:, None, None] * k_stride_t + hk.to(tl.int64)[None, :, None] * k_stride_h
    qo_rows = q_out_ptr + ((b * seq_len + t64[:, None, None]) * n_q_heads + hq[None, :, None]) * HEAD_DIM
    ko_rows = k_out_ptr + ((b * seq_len + t64[:, None, None]) * n_k_heads + hk[None, :, None]) * HEAD_DIM
    q_head_mask = t_mask[:, None, None] & (hq < n_q_heads)[None, :, None]  # (BLOCK_T, BLOCK_HQ, 1)
    k_head_mask = t_mask[:, None, None] & (hk < n_k_heads)[None, :, None]  # (BLOCK_T, BLOCK_HK, 1)

    if INTERLEAVED:
        # Whole head rows, contiguous (vectorized), split into (even, odd) pairs in registers.
        d = tl.arange(0, 2 * BLOCK_HALF)[None, None, :]  # (1, 1, 2 * BLOCK_HALF)
        q_mask = q_head_mask & (d < HEAD_DIM)
        k_mask = k_head_mask & (d < HEAD_DIM)
        qx = tl.load(q_rows + d, mask=q_mask, other=0.0).to(cdt)
        kx = tl.load(k_rows + d, mask=k_mask, other=0.0).to(cdt)
        q_even, q_odd = tl.split(tl.reshape(qx, [BLOCK_T, BLOCK_HQ, BLOCK_HALF, 2]))
        k_even, k_odd = tl.split(tl.reshape(kx, [BLOCK_T, BLOCK_HK, BLOCK_HALF, 2]))
        q_rot = tl.join(q_even * cos - q_odd * sin, q_even * sin + q_odd * cos)
        k_rot = tl.join(k_even * cos - k_odd * sin, k_even * sin + k_odd * cos)
        q_out = tl.reshape(q_rot, [BLOCK_T, BLOCK_HQ, 2 * BLOCK_HALF])
        k_out = tl.reshape(k_rot, [BLOCK_T, BLOCK_HK, 2 * BLOCK_HALF])
        tl.store(qo_rows + d, cast_for_store(q_out, q_out_ptr.dtype.element_ty, INTERPRETED), mask=q_mask)
        tl.store(ko_rows + d, cast_for_store(k_out, k_out_ptr.dtype.element_ty, INTERPRETED), mask=k_mask)
    else:
        # Two contiguous halves per head: x1 = x[:D/2], x2 = x[D/2:].
        p = pair[None, None, :]  # (1, 1, BLOCK_HALF)
        q_mask = q_head_mask & (p < HALF)
        k_mask = k_head_mask & (p < HALF)
        q1 = tl.load(q_rows + p, mask=q_mask, other=0.0).to(cdt)
        q2 = tl.load(q_rows + HALF + p, mask=q_mask, other=0.0).to(cdt)
        k1 = tl.load(k_rows + p, mask=k_mask, other=0.0).to(cdt)
        k2 = tl.load(k_rows + HALF + p, mask=k_mask, other=0.0).to(cdt)
        q_dt = q_out_ptr.dtype.element_ty
        k_dt = k_out_ptr.dtype.element_ty
        tl.store(qo_rows + p, cast_for_store(q1 * cos - q2 * sin, q_dt, INTERPRETED), mask=q_mask)
        tl.store(qo_rows + HALF + p, cast_for_store(q2 * cos + q1 * sin, q_dt, INTERPRETED), mask=q_mask)
        tl.store(ko_rows + p, cast_for_store(k1 * cos - k2 * sin, k_dt, INTERPRETED), mask=k_mask)
        tl.store(ko_rows + HALF + p, cast_for_store(k2 * cos + k1 * sin, k_dt, INTERPRETED), mask=k_mask)
