"""The RMSNorm kernels' device code: the ``@triton.jit`` kernels and their device functions (the
math is in the package docstring, ``replab_fast.kernels.rms_norm``)."""

import triton
import triton.language as tl

from .._triton import cast_for_store, device_function


@device_function
def _load_h(x_ptrs, r_ptrs, mask, h_dtype: tl.constexpr, cdt: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
            INTERPRETED: tl.constexpr):
    """A chunk of h = x + residual, rounded to h's dtype as ``x + residual`` is (or x itself)."""
    x = tl.load(x_ptrs, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(r_ptrs, mask=mask, other=0.0)
        return cast_for_store(x.to(cdt) + r.to(cdt), h_dtype, INTERPRETED)
    else:
        return x


@device_function
def _rstd(sum_sq, n_cols, eps, IS_FP64: tl.constexpr):
    """1 / sqrt(mean(x^2) + eps), the square root correctly rounded."""
    if IS_FP64:
        return 1.0 / tl.sqrt(sum_sq / n_cols + eps)
    else:
        return 1.0 / tl.sqrt_rn(sum_sq / n_cols + eps)


@triton.jit
def _rms_norm_fwd_kernel(
    x_ptr,  # (M, N) input rows, read through x_row_stride (last dimension contiguous)
    x_row_stride,  # elements between consecutive rows of x
    res_ptr,  # (M, N) residual added to x first (read only when HAS_RESIDUAL)
    res_row_stride,  # elements between consecutive rows of the residual
    w_ptr,  # (N,) weight
    y_ptr,  # (M, N) output, contiguous; its element type is the output dtype
    h_ptr,  # (M, N) output h = x + residual in x's dtype, contiguous (written when HAS_RESIDUAL)
    n_rows,  # M
    n_cols,  # N
    eps,  # added to mean(x^2) before the square root
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # columns per chunk (a power of two >= N when NUM_CHUNKS == 1)
    NUM_CHUNKS: tl.constexpr,  # cdiv(N, BLOCK_N): 1 keeps the row in registers, more loops twice
    HAS_RESIDUAL: tl.constexpr,  # fused h = x + residual
    IS_FP64: tl.constexpr,  # compute in fp64 (fp64 inputs), else fp32
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter (see cast_for_store)
):
    """y = x * rstd * w with rstd = 1/sqrt(mean(x^2) + eps) per row (and h = x + residual first)."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < n_rows
    rows64 = rows.to(tl.int64)
    x_rows = x_ptr + rows64[:, None] * x_row_stride
    r_rows = res_ptr + rows64[:, None] * res_row_stride
    y_rows = y_ptr + rows64[:, None] * n_cols
    h_rows = h_ptr + rows64[:, None] * n_cols
    if NUM_CHUNKS == 1:
        cols = tl.arange(0, BLOCK_N)
        col_mask = cols < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        h = _load_h(x_rows + cols[None, :], r_rows + cols[None, :], mask, h_ptr.dtype.element_ty, cdt, HAS_RESIDUAL,
                    INTERPRETED)  # fmt: skip
        if HAS_RESIDUAL:
            tl.store(h_rows + cols[None, :], h, mask=mask)
        xf = h.to(cdt)
        sum_sq = tl.reduce(xf * xf, 1, tl.standard._sum_combine)  # (BLOCK_M,)
        rstd = _rstd(sum_sq, n_cols, eps, IS_FP64)
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(cdt)
        y = xf * rstd[:, None] * w[None, :]
        tl.store(y_rows + cols[None, :], cast_for_store(y, y_ptr.dtype.element_ty, INTERPRETED), mask=mask)
    else:
        # Pass 1: sum of squares over the chunks (and h stored).
        acc = tl.full([BLOCK_M], 0.0, dtype=cdt)
        for c in range(NUM_CHUNKS):
            cols1 = c * BLOCK_N + tl.arange(0, BLOCK_N)
            mask1 = row_mask[:, None] & (cols1 < n_cols)[None, :]
            h1 = _load_h(x_rows + cols1[None, :], r_rows + cols1[None, :], mask1, h_ptr.dtype.element_ty, cdt,
                         HAS_RESIDUAL, INTERPRETED)  # fmt: skip
            if HAS_RESIDUAL:
                tl.store(h_rows + cols1[None, :], h1, mask=mask1)
            xf1 = h1.to(cdt)
            acc += tl.reduce(xf1 * xf1, 1, tl.standard._sum_combine)
        rstd2 = _rstd(acc, n_cols, eps, IS_FP64)
        # Pass 2: normalize. h is recomputed from x and residual (same rounding), not re-read:
        # no program reads what another thread of it just wrote.
        for c in range(NUM_CHUNKS):
            cols2 = c * BLOCK_N + tl.arange(0, BLOCK_N)
            col_mask2 = cols2 < n_cols
            mask2 = row_mask[:, None] & col_mask2[None, :]
            xf2 = _load_h(x_rows + cols2[None, :], r_rows + cols2[None, :], mask2, h_ptr.dtype.element_ty, cdt,
                          HAS_RESIDUAL, INTERPRETED).to(cdt)  # fmt: skip
            w2 = tl.load(w_ptr + cols2, mask=col_mask2, other=0.0).to(cdt)
            y2 = xf2 * rstd2[:, None] * w2[None, :]
            tl.store(y_rows + cols2[None, :], cast_for_store(y2, y_ptr.dtype.element_ty, INTERPRETED), mask=mask2)


@triton.jit
def _rms_norm_bwd_stats_kernel(
    dy_ptr,  # (M, N) gradient of y, read through dy_row_stride
    dy_row_stride,  # elements between consecutive rows of dy
    x_ptr,  # (M, N) the normalized input (h for the fused op), read through x_row_stride
    x_row_stride,  # elements between consecutive rows of x
    w_ptr,  # (N,) weight
    rstd_ptr,  # (M,) output: 1/sqrt(mean(x^2) + eps), compute dtype
    coef_ptr,  # (M,) output: rstd^3 * mean(dy * w * x), compute dtype
    n_rows,  # M
    n_cols,  # N
    eps,  # as in the forward
    BLOCK_M: tl.constexpr,  # rows per program
    BLOCK_N: tl.constexpr,  # columns per chunk
    NUM_CHUNKS: tl.constexpr,  # cdiv(N, BLOCK_N)
    IS_FP64: tl.constexpr,  # compute in fp64, else fp32
):
    """Per-row statistics of the backward for rows too wide for one pass: rstd and rstd^3 * mean(g * x)."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < n_rows
    rows64 = rows.to(tl.int64)
    sum_sq = tl.full([BLOCK_M], 0.0, dtype=cdt)
    sum_gx = tl.full([BLOCK_M], 0.0, dtype=cdt)
    for c in range(NUM_CHUNKS):
        cols = c * BLOCK_N + tl.arange(0, BLOCK_N)
        col_mask = cols < n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        xf = tl.load(x_ptr + rows64[:, None] * x_row_stride + cols[None, :], mask=mask, other=0.0).to(cdt)
        dyf = tl.load(dy_ptr + rows64[:, None] * dy_row_stride + cols[None, :], mask=mask, other=0.0).to(cdt)
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(cdt)
        sum_sq += tl.reduce(xf * xf, 1, tl.standard._sum_combine)
        sum_gx += tl.reduce(dyf * w[None, :] * xf, 1, tl.standard._sum_combine)
    rstd = _rstd(sum_sq, n_cols, eps, IS_FP64)
    coef = rstd * rstd * rstd * (sum_gx / n_cols)
    tl.store(rstd_ptr + rows, rstd, mask=row_mask)
    tl.store(coef_ptr + rows, coef, mask=row_mask)


@triton.jit
def _rms_norm_bwd_kernel(
    dy_ptr,  # (M, N) gradient of y, read through dy_row_stride
    dy_row_stride,  # elements between consecutive rows of dy
    x_ptr,  # (M, N) the normalized input (h for the fused op), read through x_row_stride
    x_row_stride,  # elements between consecutive rows of x
    w_ptr,  # (N,) weight
    dres_ptr,  # (M, N) gradient of h from its other use, added to dx (read only when HAS_DRES)
    dres_row_stride,  # elements between consecutive rows of dres
    dx_ptr,  # (M, N) output gradient of x, contiguous, x's dtype
    dw_partial_ptr,  # (num_programs(0), N) output: this program's dweight partial sums, compute dtype
    rstd_ptr,  # (M,) precomputed rstd (read only when ROW_BLOCKS == 0)
    coef_ptr,  # (M,) precomputed rstd^3 * mean(g * x) (read only when ROW_BLOCKS == 0)
    n_rows,  # M
    n_cols,  # N
    eps,  # as in the forward (used when ROW_BLOCKS > 0)
    BLOCK_M: tl.constexpr,  # rows per tile
    BLOCK_N: tl.constexpr,  # columns per block
    ROW_BLOCKS: tl.constexpr,  # 1: the row is one block; 2: two blocks, both handled here (the
    #   second half of a wide row is processed while still in registers, the first is re-read
    #   from L1/L2); 0: rstd/coef precomputed, axis 1 of the grid walks the column blocks
    HAS_DRES: tl.constexpr,  # add dres to dx (the fused residual op)
    IS_FP64: tl.constexpr,  # compute in fp64, else fp32
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter (see cast_for_store)
):
    """dx = rstd * g - x * rstd^3 * mean(g * x), g = dy * w; dweight partials = sum_rows dy * x * rstd.

    Persistent: program (p, c) walks row tiles p, p + P, p + 2P, ... (of column block c when
    ROW_BLOCKS == 0) and keeps its share of dweight in registers, written once at the end (no
    atomics). The weight is re-read per tile (an L1 hit) rather than held in registers.
    """
    cdt = tl.float64 if IS_FP64 else tl.float32
    pid_m = tl.program_id(0)
    num_pm = tl.num_programs(0)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # block a (the only block unless ROW_BLOCKS == 2)
    col_mask = cols < n_cols
    cols_b = BLOCK_N + tl.arange(0, BLOCK_N)  # block b (ROW_BLOCKS == 2)
    col_mask_b = cols_b < n_cols
    dw_acc = tl.full([BLOCK_N], 0.0, dtype=cdt)
    dw_acc_b = tl.full([BLOCK_N], 0.0, dtype=cdt)
    n_tiles = (n_rows + BLOCK_M - 1) // BLOCK_M
    tile = pid_m
    while tile < n_tiles:  # a while loop: triton 3.6's interpreter cannot range() over run-time bounds
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        row_mask = rows < n_rows
        rows64 = rows.to(tl.int64)
        x_rows = x_ptr + rows64[:, None] * x_row_stride
        dy_rows = dy_ptr + rows64[:, None] * dy_row_stride
        dres_rows = dres_ptr + rows64[:, None] * dres_row_stride
        dx_rows = dx_ptr + rows64[:, None] * n_cols
        mask = row_mask[:, None] & col_mask[None, :]
        xf = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(cdt)
        dyf = tl.load(dy_rows + cols[None, :], mask=mask, other=0.0).to(cdt)
        w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(cdt)
        if ROW_BLOCKS == 0:
            rstd = tl.load(rstd_ptr + rows, mask=row_mask, other=0.0)
            coef = tl.load(coef_ptr + rows, mask=row_mask, other=0.0)
        else:
            sum_sq = tl.reduce(xf * xf, 1, tl.standard._sum_combine)
            sum_gx = tl.reduce(dyf * w[None, :] * xf, 1, tl.standard._sum_combine)
            if ROW_BLOCKS == 2:
                mask_b = row_mask[:, None] & col_mask_b[None, :]
                xf_b = tl.load(x_rows + cols_b[None, :], mask=mask_b, other=0.0).to(cdt)
                dyf_b = tl.load(dy_rows + cols_b[None, :], mask=mask_b, other=0.0).to(cdt)
                w_b = tl.load(w_ptr + cols_b, mask=col_mask_b, other=0.0).to(cdt)
                sum_sq += tl.reduce(xf_b * xf_b, 1, tl.standard._sum_combine)
                sum_gx += tl.reduce(dyf_b * w_b[None, :] * xf_b, 1, tl.standard._sum_combine)
            rstd_all = _rstd(sum_sq, n_cols, eps, IS_FP64)
            rstd = tl.where(row_mask, rstd_all, 0.0)  # padding rows contribute nothing, even with eps = 0
            coef = rstd * rstd * rstd * (sum_gx / n_cols)
            if ROW_BLOCKS == 2:  # block b first, while it is in registers
                dx_b = dyf_b * w_b[None, :] * rstd[:, None] - xf_b * coef[:, None]
                if HAS_DRES:
                    dres_b = tl.load(dres_rows + cols_b[None, :], mask=mask_b, other=0.0)
                    dx_b = dx_b + dres_b.to(cdt)
                tl.store(dx_rows + cols_b[None, :], cast_for_store(dx_b, dx_ptr.dtype.element_ty, INTERPRETED),
                         mask=mask_b)
                dw_acc_b += tl.reduce(dyf_b * xf_b * rstd[:, None], 0, tl.standard._sum_combine)
                # block a again: re-read (L1/L2) instead of holding both halves in registers
                xf = tl.load(x_rows + cols[None, :], mask=mask, other=0.0).to(cdt)
                dyf = tl.load(dy_rows + cols[None, :], mask=mask, other=0.0).to(cdt)
                w = tl.load(w_ptr + cols, mask=col_mask, other=0.0).to(cdt)
        dx = dyf * w[None, :] * rstd[:, None] - xf * coef[:, None]
        if HAS_DRES:
            dres = tl.load(dres_rows + cols[None, :], mask=mask, other=0.0)
            dx = dx + dres.to(cdt)
        tl.store(dx_rows + cols[None, :], cast_for_store(dx, dx_ptr.dtype.element_ty, INTERPRETED), mask=mask)
        dw_acc += tl.reduce(dyf * xf * rstd[:, None], 0, tl.standard._sum_combine)
        tile += num_pm
    partial_row = dw_partial_ptr + pid_m.to(tl.int64) * n_cols
    tl.store(partial_row + cols, dw_acc, mask=col_mask)
    if ROW_BLOCKS == 2:
        tl.store(partial_row + cols_b, dw_acc_b, mask=col_mask_b)


@triton.jit
def _rms_norm_dw_kernel(
    partial_ptr,  # (P, N) dweight partial sums of the backward programs, compute dtype
    dw_ptr,  # (N,) output dweight, weight's dtype
    n_partials,  # P
    n_cols,  # N
    BLOCK_P: tl.constexpr,  # partial rows summed per step
    BLOCK_N: tl.constexpr,  # columns per program
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter (see cast_for_store)
):
    """dw[j] = sum_p partial[p, j]: the second stage of the dweight reduction."""
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < n_cols
    acc = tl.full([BLOCK_N], 0.0, dtype=partial_ptr.dtype.element_ty)
    p0 = 0
    while p0 < n_partials:  # see _rms_norm_bwd_kernel on while loops
        prows = p0 + tl.arange(0, BLOCK_P)
        mask = (prows < n_partials)[:, None] & col_mask[None, :]
        part = tl.load(partial_ptr + prows.to(tl.int64)[:, None] * n_cols + cols[None, :], mask=mask, other=0.0)
        acc += tl.reduce(part, 0, tl.standard._sum_combine)
        p0 += BLOCK_P
    tl.store(dw_ptr + cols, cast_for_store(acc, dw_ptr.dtype.element_ty, INTERPRETED), mask=col_mask)
