"""The attention kernels' device code: the ``@triton.jit`` kernels and the device functions they
share (the math is in the package docstring, ``replab_fast.kernels.attention``)."""

import triton
import triton.language as tl

from .._triton import block_loop, cast_for_store, device_function

LN2: tl.constexpr = tl.constexpr(0.6931471805599453)  # ln(2): fp64's lse conversions, in the kernels
# (a kernel reads a module-level global only if it is a tl.constexpr, compiled and interpreted)


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
def _fwd_step(state, args, start_n, FLAGS: tl.constexpr):
    """One online-softmax update (FlashAttention-2) with the key block at start_n; a ``block_loop`` step.

    state: (acc, l_i, m_i): acc (BLOCK_M, BLOCK_D) the running unnormalized output (compute
        dtype), l_i (BLOCK_M,) the running sum of exponentials, m_i (BLOCK_M,) the running max
        of the scaled scores (exponent domain).
    args: (q, k_base, v_base, k_stride_s, v_stride_s, rows, d, d_mask, seq_k, causal_offset,
        qk_scale): the (BLOCK_M, BLOCK_D) queries; pointers to key and value 0 of this (sequence,
        KV head) and the elements between keys / values; each tile row's query index t; the
        head-dim offsets and d < HEAD_DIM; S; S - T (row t sees keys j <= t + S - T); the scale,
        times log2(e) unless IS_FP64.
    FLAGS: (BLOCK_N keys per block, MASKED: apply the key-bounds and causal masks (diagonal /
        last blocks), CAUSAL, IS_FP64: fp64 compute with exp, else fp32 with exp2, INTERPRETED).
    """
    BLOCK_N: tl.constexpr = FLAGS[0]
    MASKED: tl.constexpr = FLAGS[1]
    CAUSAL: tl.constexpr = FLAGS[2]
    IS_FP64: tl.constexpr = FLAGS[3]
    INTERPRETED: tl.constexpr = FLAGS[4]
    acc, l_i, m_i = state
    q, k_base, v_base, k_stride_s, v_stride_s, rows, d, d_mask, seq_k, causal_offset, qk_scale = args
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
    args = (q, k_base, v_base, k_stride_s, v_stride_s, rows, d, d_mask, seq_k, causal_offset, qk_scale)
    acc, l_i, m_i = block_loop(_fwd_step, (acc, l_i, m_i), args, 0, full_end, BLOCK_N,
                               (BLOCK_N, False, CAUSAL, IS_FP64, INTERPRETED), INTERPRETED)  # fmt: skip
    acc, l_i, m_i = block_loop(_fwd_step, (acc, l_i, m_i), args, full_end, hi, BLOCK_N,
                               (BLOCK_N, True, CAUSAL, IS_FP64, INTERPRETED), INTERPRETED)  # fmt: skip

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
    args = (q, k_base, v_base, k_stride_s, v_stride_s, t, d, d_mask, seq_k, seq_k - seq_q, qk_scale)
    acc, l_i, m_i = block_loop(_fwd_step, (acc, l_i, m_i), args, lo, hi, BLOCK_N,
                               (BLOCK_N, True, CAUSAL, IS_FP64, INTERPRETED), INTERPRETED)  # fmt: skip
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
def _dkdv_step(state, args, start_m, FLAGS: tl.constexpr):
    """dv += P^T do and dk += dS^T q for the block of queries at start_m (P rebuilt from the saved
    lse); a ``block_loop`` step.

    state: (dk, dv), (BLOCK_N, BLOCK_D) each, compute dtype: the running dk / scale and dv.
    args: (k, v, q_base, do_base, q_stride_t, do_stride_t, lse_row, delta_row, n, n_mask, d,
        d_mask, seq_q, causal_offset, qk_scale): this program's (BLOCK_N, BLOCK_D) keys and
        values; pointers to query 0 and to row 0 of do of this (sequence, query head) and the
        elements between their tokens; pointers to lse[b, h, 0] (base 2) and delta[b, h, 0]; the
        key indices and n < S; the head-dim offsets and d < HEAD_DIM; T; S - T; the scale, times
        log2(e) unless IS_FP64.
    FLAGS: (BLOCK_M queries per block, CAUSAL, IS_FP64, INTERPRETED).
    """
    BLOCK_M: tl.constexpr = FLAGS[0]
    CAUSAL: tl.constexpr = FLAGS[1]
    IS_FP64: tl.constexpr = FLAGS[2]
    INTERPRETED: tl.constexpr = FLAGS[3]
    dk, dv = state
    k, v, q_base, do_base, q_stride_t, do_stride_t, lse_row, delta_row, n, n_mask, d, d_mask, seq_q, causal_offset, \
        qk_scale = args  # fmt: skip
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
def _dq_step(state, args, start_n, FLAGS: tl.constexpr):
    """dq += dS k for the block of keys at start_n; a ``block_loop`` step.

    state: (dq,), (BLOCK_M, BLOCK_D), compute dtype: the running dq / scale.
    args: (q, do, lse_hi, lse_lo, delta, k_base, v_base, k_stride_s, v_stride_s, m, m_mask, d,
        d_mask, seq_k, causal_offset, qk_scale): this program's (BLOCK_M, BLOCK_D) queries and
        their output gradients; their lse (base 2) = lse_hi + lse_lo as ``_lse_parts`` splits it,
        and delta, compute dtype; pointers to key and value 0 of this (sequence, KV head) and the
        elements between keys / values; the query indices and m < T; the head-dim offsets and
        d < HEAD_DIM; S; S - T; the scale, times log2(e) unless IS_FP64.
    FLAGS: (BLOCK_N keys per block, CAUSAL, IS_FP64, INTERPRETED).
    """
    BLOCK_N: tl.constexpr = FLAGS[0]
    CAUSAL: tl.constexpr = FLAGS[1]
    IS_FP64: tl.constexpr = FLAGS[2]
    INTERPRETED: tl.constexpr = FLAGS[3]
    (dq,) = state
    q, do, lse_hi, lse_lo, delta, k_base, v_base, k_stride_s, v_stride_s, m, m_mask, d, d_mask, seq_k, \
        causal_offset, qk_scale = args  # fmt: skip
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
    return (dq,)


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
        args = (k, v, q_base, do_base, q_stride_t, do_stride_t, lse_ptr + stats_base, delta_ptr + stats_base, n,
                n_mask, d, d_mask, seq_q, causal_offset, qk_scale)
        dk, dv = block_loop(_dkdv_step, (dk, dv), args, lo, seq_q, BLOCK_M, (BLOCK_M, CAUSAL, IS_FP64, INTERPRETED),
                            INTERPRETED)  # fmt: skip
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
    args = (q, do, lse_hi, lse_lo, delta, k_base, v_base, k_stride_s, v_stride_s, m, m_mask, d, d_mask, seq_k,
            causal_offset, qk_scale)
    (dq,) = block_loop(_dq_step, (dq,), args, 0, hi, BLOCK_N, (BLOCK_N, CAUSAL, IS_FP64, INTERPRETED), INTERPRETED)
    dq = dq * sm_scale
    out_offs = ((b * seq_q + m64[:, None]) * n_q_heads + h64) * HEAD_DIM + d[None, :]
    tl.store(dq_ptr + out_offs, cast_for_store(dq, dq_ptr.dtype.element_ty, INTERPRETED), mask=qd_mask)
