"""Host launchers of the attention kernels: validate the arguments, pick block sizes (the config
table), allocate, launch. No autograd here (``op.py``)."""

import math
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor

from .. import SUPPORTED_DTYPES
from .._triton import cdiv, check_device, launch, next_power_of_2, num_sms, runs_interpreted
from . import DECODE_MAX_ROWS, MAX_HEAD_DIM, MIN_HEAD_DIM
from .kernel import (
    _attention_bwd_dkdv_kernel,
    _attention_bwd_dq_kernel,
    _attention_bwd_preprocess_kernel,
    _attention_decode_combine_kernel,
    _attention_decode_kernel,
    _attention_fwd_kernel,
)

__all__ = ["AttentionConfig", "attention_backward", "attention_config", "attention_forward", "with_config"]

LOG2E = 1.4426950408889634  # log2(e): folded into the fp32 kernels' qk_scale (host side)


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


def with_config(config: AttentionConfig, **changes) -> AttentionConfig:
    """``config`` with some fields changed (tests)."""
    return replace(config, **changes)
