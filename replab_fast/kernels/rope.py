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
"""

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..models.llama import apply_rope, apply_rope_rotate_half
from ._triton import cast_for_store, cdiv, check_device, launch, next_power_of_2, register_op, runs_interpreted

__all__ = ["rope_forward", "rope_ref", "RopeConfig", "rope_op", "rope_backward_op"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_HEAD_DIM = 1024  # widest head one program rotates (the issue asks for D <= 256)


# --------------------------------------------------------------------------------------------
# Kernel
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Host launcher
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# torch.library ops: replab_fast::rope, ::rope_backward
# --------------------------------------------------------------------------------------------


def _rope_impl(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> tuple[Tensor, Tensor]:
    return rope_forward(q, k, cos, sin, interleaved)


def _rope_fake(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> tuple[Tensor, Tensor]:
    _check_args("rope", q, k, cos, sin)
    return q.new_empty(q.shape), k.new_empty(k.shape)


def _rope_backward_impl(
    grad_q: Tensor, grad_k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool
) -> tuple[Tensor, Tensor]:
    return rope_forward(grad_q, grad_k, cos, sin, interleaved, inverse=True)


def _rope_backward_fake(
    grad_q: Tensor, grad_k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool
) -> tuple[Tensor, Tensor]:
    _check_args("rope_backward", grad_q, grad_k, cos, sin)
    return grad_q.new_empty(grad_q.shape), grad_k.new_empty(grad_k.shape)


rope_op = register_op("replab_fast::rope", _rope_impl, _rope_fake)
rope_backward_op = register_op("replab_fast::rope_backward", _rope_backward_impl, _rope_backward_fake)


def _setup_rope(ctx, inputs, output) -> None:
    q, k, cos, sin, interleaved = inputs
    ctx.save_for_backward(cos, sin)
    ctx.interleaved = interleaved
    ctx.q_meta = (q.shape, q.dtype)
    ctx.k_meta = (k.shape, k.dtype)
    ctx.set_materialize_grads(False)


def _backward_rope(ctx, grad_q, grad_k):
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        raise RuntimeError(
            "rope: gradients with respect to cos and sin are not implemented (pass tables that do not require grad)"
        )
    cos, sin = ctx.saved_tensors
    if grad_q is None and grad_k is None:
        return None, None, None, None, None
    if grad_q is None:
        grad_q = grad_k.new_zeros(ctx.q_meta[0], dtype=ctx.q_meta[1])
    if grad_k is None:
        grad_k = grad_q.new_zeros(ctx.k_meta[0], dtype=ctx.k_meta[1])
    dq, dk = torch.ops.replab_fast.rope_backward(grad_q, grad_k, cos, sin, ctx.interleaved)
    return dq, dk, None, None, None


rope_op.register_autograd(_backward_rope, setup_context=_setup_rope)


# --------------------------------------------------------------------------------------------
# Reference
# --------------------------------------------------------------------------------------------


def rope_ref(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor, interleaved: bool = True) -> tuple[Tensor, Tensor]:
    """The reference: the LLaMA model's ``apply_rope`` (interleaved) or ``apply_rope_rotate_half``, on
    q and k, with cos/sin cut to the T tokens."""
    T = q.shape[1]
    fn = apply_rope if interleaved else apply_rope_rotate_half
    return fn(q, cos[:T], sin[:T]), fn(k, cos[:T], sin[:T])
