"""Host launchers of the RMSNorm kernels: validate, reshape to rows, allocate, pick block sizes
and warps, launch. No autograd here (``op.py``)."""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .. import SUPPORTED_DTYPES
from .._triton import cdiv, check_device, launch, next_power_of_2, num_sms, runs_interpreted
from .kernel import _rms_norm_bwd_kernel, _rms_norm_bwd_stats_kernel, _rms_norm_dw_kernel, _rms_norm_fwd_kernel

__all__ = ["MAX_BLOCK_N", "RMSNormConfig", "backward_config", "forward_config", "rms_norm_backward", "rms_norm_forward"]

MAX_BLOCK_N = 16384  # widest row one program holds whole in registers (fp32); wider rows go in chunks


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
