"""Host launcher of the RoPE kernel: validate, pick block sizes, allocate, launch. No autograd
here (``op.py``)."""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .. import SUPPORTED_DTYPES
from .._triton import cdiv, check_device, launch, next_power_of_2, runs_interpreted
from .kernel import _rope_kernel

__all__ = ["MAX_HEAD_DIM", "RopeConfig", "rope_config", "rope_forward"]

MAX_HEAD_DIM = 1024  # widest head one program rotates


@dataclass(frozen=True)
class RopeConfig:
    """Block sizes and launch options of one RoPE launch (``rope_config`` picks them; tests may force one)."""

    block_t: int  # tokens per program
    block_hq: int  # q heads per program
    block_hk: int  # k heads per program
    num_warps: int  # warps per program (ignored by the interpreter)


def rope_config(T: int, Hq: int, Hk: int, D: int, device: torch.device) -> RopeConfig:
    block_d = 2 * next_power_of_2(D // 2)
    # GPU: ~4K elements of q per program (all 32 heads of a D = 128 token). The interpreter runs
    # each program as numpy calls: fewer, larger programs are much faster there.
    target = 32768 if runs_interpreted(device) else 4096
    block_hq = min(next_power_of_2(Hq), max(1, target // block_d))
    block_hk = next_power_of_2(cdiv(Hk, cdiv(Hq, block_hq)))
    block_t = max(1, min(target // (block_hq * block_d), next_power_of_2(T)))
    num_warps = max(2, min(8, block_t * block_hq * block_d // 512))
    return RopeConfig(block_t=block_t, block_hq=block_hq, block_hk=block_hk, num_warps=num_warps)


def _check_args(op: str, q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> torch.device:
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{op} expects {name} to be a tensor, got {type(t).__name__}")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(
            f"{op} expects q of shape (B, T, Hq, D) and k of shape (B, T, Hk, D), got {tuple(q.shape)} and "
            f"{tuple(k.shape)}"
        )
    B, T, Hq, D = q.shape
    if k.shape[3] != D:
        raise ValueError(f"{op}: q and k have different head dims (q: D={D}, k: D={k.shape[3]})")
    if k.shape[0] != B or k.shape[1] != T:
        raise ValueError(
            f"{op}: q and k must have the same batch and sequence sizes, got q (B={B}, T={T}) and "
            f"k (B={k.shape[0]}, T={k.shape[1]})"
        )
    Hk = k.shape[2]
    if Hk < 1 or Hq % Hk != 0:
        raise ValueError(f"{op}: k's head count Hk={Hk} must divide q's Hq={Hq} (grouped-query attention)")
    if D % 2 != 0:
        raise ValueError(f"{op}: the head dim D={D} must be even (RoPE rotates pairs)")
    if D > MAX_HEAD_DIM:
        raise ValueError(f"{op}: head dims up to {MAX_HEAD_DIM} are supported, got D={D}")
    if cos.dim() != 2 or cos.shape != sin.shape:
        raise ValueError(
            f"{op} expects cos and sin of one shape (T, D/2), got {tuple(cos.shape)} and {tuple(sin.shape)}"
        )
    if cos.shape[1] != D // 2:
        raise ValueError(f"{op}: cos and sin must have D/2 = {D // 2} columns for head dim {D}, got {cos.shape[1]}")
    if cos.shape[0] < T:
        raise ValueError(
            f"{op}: cos and sin are too short: they cover {cos.shape[0]} positions but q and k have T={T} tokens"
        )
    if q.dtype != k.dtype:
        raise TypeError(f"{op}: q and k must have one dtype, got {q.dtype} and {k.dtype}")
    if cos.dtype != sin.dtype:
        raise TypeError(f"{op}: cos and sin must have one dtype, got {cos.dtype} and {sin.dtype}")
    for name, t in (("q", q), ("cos", cos)):
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{op} supports float16, bfloat16, float32 and float64, got {name} of dtype {t.dtype}")
    return check_device(op, q=q, k=k, cos=cos, sin=sin)


def _last_dim_contiguous(t: Tensor) -> Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous()


def rope_forward(
    q: Tensor,
    k: Tensor,
    cos: Tensor,
    sin: Tensor,
    interleaved: bool = True,
    inverse: bool = False,
    *,
    config: Optional[RopeConfig] = None,
) -> tuple[Tensor, Tensor]:
    """Rotate q (B, T, Hq, D) and k (B, T, Hk, D) by the angles of cos/sin (>= T, D/2), in one launch.

    ``inverse`` rotates by the negative angles (the backward). Returns new contiguous tensors.
    """
    op = "rope_backward" if inverse else "rope"
    device = _check_args(op, q, k, cos, sin)
    q_out = q.new_empty(q.shape)
    k_out = k.new_empty(k.shape)
    B, T, Hq, D = q.shape
    Hk = k.shape[2]
    if q.numel() == 0 and k.numel() == 0:
        return q_out, k_out
    q_in, k_in = _last_dim_contiguous(q), _last_dim_contiguous(k)
    cos_in, sin_in = _last_dim_contiguous(cos), _last_dim_contiguous(sin)
    cfg = config or rope_config(T, Hq, Hk, D, device)
    grid = (B * cdiv(T, cfg.block_t), max(cdiv(Hq, cfg.block_hq), cdiv(Hk, cfg.block_hk)))
    launch(
        _rope_kernel, grid, device,
        q_in, q_in.stride(0), q_in.stride(1), q_in.stride(2),
        k_in, k_in.stride(0), k_in.stride(1), k_in.stride(2),
        cos_in, cos_in.stride(0), sin_in, sin_in.stride(0),
        q_out, k_out, T, Hq, Hk,
        HEAD_DIM=D, BLOCK_HALF=next_power_of_2(D // 2), BLOCK_T=cfg.block_t, BLOCK_HQ=cfg.block_hq,
        BLOCK_HK=cfg.block_hk, INTERLEAVED=bool(interleaved), INVERSE=bool(inverse),
        IS_FP64=q.dtype == torch.float64, INTERPRETED=runs_interpreted(device), num_warps=cfg.num_warps,
    )  # fmt: skip
    return q_out, k_out
