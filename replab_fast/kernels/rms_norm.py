"""RMSNorm, and residual-add + RMSNorm, as Triton kernels.

Math (Zhang & Sennrich 2019, "Root Mean Square Layer Normalization"; the reference is
``replab_fast.models.llama.RMSNorm``, Meta's LLaMA RMSNorm), per row x of N elements:

    rstd = 1 / sqrt(mean(x^2) + eps)                  fp32 (fp64 for fp64 inputs)
    y    = x * rstd * w                               returned in promote(x.dtype, w.dtype)

Backward, with g = dy * w:

    dx = rstd * g - x * rstd^3 * mean(g * x)
    dw = sum over rows of dy * x * rstd

Fused residual add (``rms_norm_residual``): h = x + residual, rounded to x's dtype exactly as
``torch.add`` rounds it, then y = rmsnorm(h); both y and h are returned. The gradient reaching h
is the norm's backward plus the gradient of h's other use (the residual stream), and it is the
gradient of both x and residual.

Reference vs kernel: the reference rounds x * rstd to x's dtype before multiplying by w (Meta's
``norm(x.float()).type_as(x) * weight``); the kernel rounds once, at the end (more accurate; the
tests hold it to the 2x rule against the reference run at the same dtype). rstd is not saved
by the forward: the backward recomputes it from the row it loads anyway.

Layout: x (..., N) is viewed as (M, N) rows. Leading dimensions that collapse to one row stride
(any contiguous tensor, a slice of wider rows, ...) are read in place through that stride;
anything else (and an x whose last dimension is strided) is copied to contiguous rows first.
Outputs are contiguous.

Performance plan (H100/H200; GPU verification pending, see bench/test_rms_norm.py). Bytes are
the floor: forward reads x and writes y once; backward reads x and dy and writes dx once.
- forward: one program per BLOCK_M rows (several rows for narrow N, so that a program moves
  >= 4 KB), the whole row in registers up to N = 16384 with num_warps scaled to the block,
  16-byte loads; wider rows in chunks (sum of squares, then normalize: x is read twice).
- backward: a persistent grid of as many programs as fit at once (1 to 4 per SM), each walking
  row tiles and keeping its dweight partial sum in registers; the (programs, N) partials are
  reduced by a small second kernel. No atomics. Up to N = 8192 a row is one block; up to 16384
  one program takes it in two blocks (the second processed while in registers, the first re-read
  from L1/L2); wider rows get a row-statistics kernel first (x and dy read twice).
- what ptxas makes of it is checked without a GPU (tests ``test_compiled_path_builds_for_hopper``:
  sm_90 builds, 16-byte loads, no spills except float32 backward at N = 16384, ~40 bytes/thread).
"""

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.func import functional_call

from ..models.llama import RMSNorm
from ._triton import (
    cast_for_store,
    device_function,
    cdiv,
    check_device,
    launch,
    next_power_of_2,
    num_sms,
    register_op,
    runs_interpreted,
)

__all__ = [
    "rms_norm_forward",
    "rms_norm_backward",
    "rms_norm_ref",
    "rms_norm_residual_ref",
    "RMSNormConfig",
    "rms_norm_op",
    "rms_norm_residual_op",
    "rms_norm_backward_op",
]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_BLOCK_N = 16384  # widest row one program holds whole in registers (fp32); wider rows go in chunks


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Host launchers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RMSNormConfig:
    """Block sizes and launch options of one RMSNorm launch (``*_config`` pick them; tests may force one)."""

    block_m: int  # rows per program (forward) or per tile (backward)
    block_n: int  # columns per chunk, a power of two
    num_warps: int  # warps per program (ignored by the interpreter)
    programs: int = 0  # backward: persistent programs along the rows (0 in the forward)


def _elements_per_program(device: torch.device) -> int:
    # GPU: ~4K elements keep a program's registers small and the SMs full. The interpreter runs
    # each program as a sequence of numpy calls: fewer, larger programs are much faster there.
    return 65536 if runs_interpreted(device) else 4096


def forward_config(n_rows: int, n_cols: int, device: torch.device) -> RMSNormConfig:
    block_n = min(next_power_of_2(n_cols), MAX_BLOCK_N)
    target = _elements_per_program(device) // (1 if runs_interpreted(device) else 2)
    block_m = max(1, min(target // block_n, 64, next_power_of_2(n_rows)))
    num_warps = max(4, min(16, block_m * block_n // 512))
    return RMSNormConfig(block_m=block_m, block_n=block_n, num_warps=num_warps)


def backward_config(n_rows: int, n_cols: int, device: torch.device, element_size: int = 2) -> RMSNormConfig:
    # The backward holds x, dy, w and the dweight accumulator per element: up to 8192 columns
    # per block (16 warps, ~100 registers, no spills on sm_90); rows up to 16384 wide go in two
    # blocks by one program (32 warps for 4-byte inputs, which hold twice the registers), wider
    # rows through the row-statistics kernel.
    block_n = min(next_power_of_2(n_cols), MAX_BLOCK_N // 2)
    wide = 2 if element_size >= 8 else 1  # fp64 holds twice the registers per element
    target = _elements_per_program(device) // wide
    block_m = max(1, min(target // block_n, 64, next_power_of_2(n_rows)))
    num_warps = max(4, min(16, wide * block_m * block_n // 512))
    if cdiv(n_cols, block_n) == 2 and element_size >= 4:
        num_warps = 32
    tiles = cdiv(n_rows, block_m)
    # Persistent programs: on a GPU as many as fit at once (16 warps per SM of ~100 registers:
    # 4 programs of 4 warps, 2 of 8, 1 of 16), each holding a dweight partial of block_n floats;
    # 2 in the interpreter, so that tests walk the multi-tile loop and the two-stage reduction.
    per_sm = max(1, 16 // num_warps)
    programs = max(1, min(tiles, 2 if runs_interpreted(device) else per_sm * num_sms(device)))
    return RMSNormConfig(block_m=block_m, block_n=block_n, num_warps=num_warps, programs=programs)


def _check_args(op: str, x: Tensor, weight: Tensor, eps: float, residual: Optional[Tensor] = None) -> torch.device:
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise TypeError(f"{op} expects tensors x and weight, got {type(x).__name__} and {type(weight).__name__}")
    if x.dim() < 1:
        raise ValueError(f"{op} expects x of shape (..., N), got a 0-d tensor")
    if weight.dim() != 1 or weight.shape[0] != x.shape[-1]:
        raise ValueError(
            f"{op}: weight must have shape (N,) = ({x.shape[-1]},) to match x's last dimension, "
            f"got weight of shape {tuple(weight.shape)} for x of shape {tuple(x.shape)}"
        )
    for name, t in (("x", x), ("weight", weight)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{op} supports float16, bfloat16, float32 and float64, got {name} of dtype {t.dtype}")
    tensors = {"x": x, "weight": weight}
    if residual is not None:
        if residual.shape != x.shape:
            raise ValueError(
                f"{op}: residual must have x's shape {tuple(x.shape)}, got {tuple(residual.shape)}"
            )
        if residual.dtype != x.dtype:
            raise TypeError(f"{op}: x and residual must have one dtype, got {x.dtype} and {residual.dtype}")
        tensors["residual"] = residual
    if not eps >= 0:
        raise ValueError(f"{op}: eps must be >= 0, got {eps}")
    return check_device(op, **tensors)


def _rows(t: Tensor, n_cols: int) -> Tensor:
    """t (..., N) as (M, N) rows with a unit column stride: a view where one row stride exists, else a copy."""
    t2 = t.reshape(-1, n_cols)
    if t2.stride(-1) != 1 and t2.shape[-1] > 1:
        t2 = t2.contiguous()
    return t2


def _forward_outputs(x: Tensor, weight: Tensor, residual: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    y = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype))
    h = x.new_empty(x.shape) if residual is not None else None
    return y, h


def rms_norm_forward(
    x: Tensor, weight: Tensor, eps: float, residual: Optional[Tensor] = None, *, config: Optional[RMSNormConfig] = None
) -> tuple[Tensor, Optional[Tensor]]:
    """RMSNorm of x (..., N) over its last dimension: (y, h), h = x + residual (None without a residual).

    y has dtype promote(x.dtype, weight.dtype), h x's dtype; both contiguous, of x's shape.
    """
    op = "rms_norm_residual" if residual is not None else "rms_norm"
    device = _check_args(op, x, weight, eps, residual)
    y, h = _forward_outputs(x, weight, residual)
    n_cols = x.shape[-1]
    if x.numel() == 0:
        return y, h
    x2 = _rows(x, n_cols)
    r2 = _rows(residual, n_cols) if residual is not None else x2
    w = weight.contiguous()
    n_rows = x2.shape[0]
    cfg = config or forward_config(n_rows, n_cols, device)
    launch(
        _rms_norm_fwd_kernel, (cdiv(n_rows, cfg.block_m),), device,
        x2, x2.stride(0), r2, r2.stride(0), w, y, h if h is not None else y, n_rows, n_cols, float(eps),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, NUM_CHUNKS=cdiv(n_cols, cfg.block_n),
        HAS_RESIDUAL=residual is not None, IS_FP64=torch.float64 in (x.dtype, weight.dtype),
        INTERPRETED=runs_interpreted(device), num_warps=cfg.num_warps,
    )  # fmt: skip
    return y, h


def _check_backward_args(dy: Tensor, x: Tensor, weight: Tensor, eps: float, dres: Optional[Tensor]) -> torch.device:
    device = _check_args("rms_norm_backward", x, weight, eps)
    for name, t in (("grad_out", dy), ("grad_residual", dres)):
        if t is None:
            continue
        if t.shape != x.shape:
            raise ValueError(f"rms_norm_backward: {name} must have x's shape {tuple(x.shape)}, got {tuple(t.shape)}")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"rms_norm_backward: {name} has unsupported dtype {t.dtype}")
        check_device("rms_norm_backward", x=x, **{name: t})
    return device


def rms_norm_backward(
    dy: Tensor,
    x: Tensor,
    weight: Tensor,
    eps: float,
    dres: Optional[Tensor] = None,
    *,
    config: Optional[RMSNormConfig] = None,
) -> tuple[Tensor, Tensor]:
    """Gradients (dx, dweight) of y = rmsnorm(x) * weight given dy; dres (optional) is added to dx.

    x is the normalized input (h for the fused op); dx has x's dtype, dweight weight's dtype.
    """
    device = _check_backward_args(dy, x, weight, eps, dres)
    n_cols = x.shape[-1]
    dx = x.new_empty(x.shape)
    if x.numel() == 0:
        return dx, weight.new_zeros(weight.shape)
    x2, dy2 = _rows(x, n_cols), _rows(dy, n_cols)
    w = weight.contiguous()
    dres2 = _rows(dres, n_cols) if dres is not None else dy2
    n_rows = x2.shape[0]
    cfg = config or backward_config(n_rows, n_cols, device, max(x.element_size(), dy.element_size()))
    is_fp64 = torch.float64 in (x.dtype, weight.dtype)
    cdt = torch.float64 if is_fp64 else torch.float32
    num_chunks = cdiv(n_cols, cfg.block_n)
    row_blocks = num_chunks if num_chunks <= 2 else 0  # see _rms_norm_bwd_kernel
    if row_blocks:
        rstd = coef = dy2  # unused
    else:
        rstd = torch.empty(n_rows, dtype=cdt, device=device)
        coef = torch.empty(n_rows, dtype=cdt, device=device)
        launch(
            _rms_norm_bwd_stats_kernel, (cdiv(n_rows, cfg.block_m),), device,
            dy2, dy2.stride(0), x2, x2.stride(0), w, rstd, coef, n_rows, n_cols, float(eps),
            BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, NUM_CHUNKS=num_chunks, IS_FP64=is_fp64,
            num_warps=cfg.num_warps,
        )  # fmt: skip
    partial = torch.empty(cfg.programs, n_cols, dtype=cdt, device=device)
    launch(
        _rms_norm_bwd_kernel, (cfg.programs, 1 if row_blocks else num_chunks), device,
        dy2, dy2.stride(0), x2, x2.stride(0), w, dres2, dres2.stride(0), dx, partial, rstd, coef,
        n_rows, n_cols, float(eps),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, ROW_BLOCKS=row_blocks, HAS_DRES=dres is not None,
        IS_FP64=is_fp64, INTERPRETED=runs_interpreted(device), num_warps=cfg.num_warps,
    )  # fmt: skip
    dw = weight.new_empty(weight.shape)
    block_n = max(16, min(128, next_power_of_2(cdiv(n_cols, 128))))
    block_p = max(1, min(8192 // block_n, next_power_of_2(cfg.programs)))
    launch(
        _rms_norm_dw_kernel, (cdiv(n_cols, block_n),), device,
        partial, dw, cfg.programs, n_cols, BLOCK_P=block_p, BLOCK_N=block_n, INTERPRETED=runs_interpreted(device),
        num_warps=4,
    )  # fmt: skip
    return dx, dw


# --------------------------------------------------------------------------------------------
# torch.library ops: replab_fast::rms_norm, ::rms_norm_residual, ::rms_norm_backward
# --------------------------------------------------------------------------------------------


def _rms_norm_impl(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return rms_norm_forward(x, weight, eps)[0]


def _rms_norm_fake(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    _check_args("rms_norm", x, weight, eps)
    return _forward_outputs(x, weight, None)[0]


def _rms_norm_residual_impl(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    y, h = rms_norm_forward(x, weight, eps, residual)
    return y, h


def _rms_norm_residual_fake(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    _check_args("rms_norm_residual", x, weight, eps, residual)
    y, h = _forward_outputs(x, weight, residual)
    return y, h


def _rms_norm_backward_impl(
    grad_out: Tensor, x: Tensor, weight: Tensor, eps: float, grad_residual: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    return rms_norm_backward(grad_out, x, weight, eps, grad_residual)


def _rms_norm_backward_fake(
    grad_out: Tensor, x: Tensor, weight: Tensor, eps: float, grad_residual: Optional[Tensor]
) -> tuple[Tensor, Tensor]:
    _check_backward_args(grad_out, x, weight, eps, grad_residual)
    return x.new_empty(x.shape), weight.new_empty(weight.shape)


rms_norm_op = register_op("replab_fast::rms_norm", _rms_norm_impl, _rms_norm_fake)
rms_norm_residual_op = register_op("replab_fast::rms_norm_residual", _rms_norm_residual_impl, _rms_norm_residual_fake)
rms_norm_backward_op = register_op("replab_fast::rms_norm_backward", _rms_norm_backward_impl, _rms_norm_backward_fake)


def _setup_rms_norm(ctx, inputs, output) -> None:
    x, weight, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps


def _backward_rms_norm(ctx, grad_y):
    x, weight = ctx.saved_tensors
    dx, dw = torch.ops.replab_fast.rms_norm_backward(grad_y, x, weight, ctx.eps, None)
    return dx, dw, None


def _setup_rms_norm_residual(ctx, inputs, output) -> None:
    _, _, weight, eps = inputs
    ctx.save_for_backward(output[1], weight)  # h, the normalized input
    ctx.eps = eps
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None (no zeros to read)


def _backward_rms_norm_residual(ctx, grad_y, grad_h):
    h, weight = ctx.saved_tensors
    if grad_y is None:  # only h was used: it passes its gradient to x and residual unchanged
        return grad_h, grad_h, None, None
    dh, dw = torch.ops.replab_fast.rms_norm_backward(grad_y, h, weight, ctx.eps, grad_h)
    return dh, dh, dw, None


rms_norm_op.register_autograd(_backward_rms_norm, setup_context=_setup_rms_norm)
rms_norm_residual_op.register_autograd(_backward_rms_norm_residual, setup_context=_setup_rms_norm_residual)


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------


def rms_norm_ref(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """The reference: ``replab_fast.models.llama.RMSNorm``'s forward, run on (x, weight, eps)."""
    module = RMSNorm(weight.shape[0], eps, device="meta", dtype=weight.dtype)
    return functional_call(module, {"weight": weight}, (x,))


def rms_norm_residual_ref(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """The reference of the fused op, as the LLaMA block computes it: h = x + residual; (RMSNorm(h), h)."""
    h = x + residual
    return rms_norm_ref(h, weight, eps), h
