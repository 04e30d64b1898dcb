"""Host launchers of the LSTM kernels: validate, allocate, run the GEMMs (torch: cuBLAS on CUDA),
pick the path and its block sizes (the config table), launch. No autograd here (``op.py``)."""

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .. import SUPPORTED_DTYPES
from .._triton import cdiv, check_device, launch, next_power_of_2, runs_interpreted
from . import PERSISTENT_MAX_HIDDEN, state_dtype
from .kernel import _lstm_cell_bwd_kernel, _lstm_cell_fwd_kernel
from .persistent import _lstm_persistent_bwd_kernel, _lstm_persistent_fwd_kernel

__all__ = [
    "LSTMConfig",
    "lstm_backward",
    "lstm_cell_backward",
    "lstm_cell_forward",
    "lstm_config",
    "lstm_forward",
]


@dataclass(frozen=True)
class LSTMConfig:
    """How one layer runs (``lstm_config`` picks it; tests may force one).

    persistent: one launch for all T steps (``persistent.py``), else a GEMM and a pointwise kernel per step.
    block_b: batch rows per program (persistent, compiled: >= 16, tl.dot's M; the batch is padded to it).
    block_h: hidden units per tile, a power of two; persistent with H <= block_h: resident.
    block_k: persistent, streamed: the reduction chunk (over H forward, over 4H backward).
    """

    persistent: bool
    block_b: int
    block_h: int
    block_k: int = 16
    num_warps: int = 4
    num_stages: int = 1  # 1: no software pipelining across the streamed kernels' barriers

    def resident(self, hidden: int) -> bool:
        """Whether the persistent kernels keep W_hh and the state on chip (one tile of units)."""
        return self.persistent and hidden <= self.block_h


def _padded(hidden: int) -> int:
    return max(16, next_power_of_2(hidden))


def pointwise_config(n_batch: int, hidden: int, device: torch.device) -> LSTMConfig:
    """Tiles of the per-step pointwise kernels: up to 1024 units (4096 gate values) per program on a
    GPU (no spills on sm_90); in the interpreter, where each program is a sequence of numpy calls,
    one large tile."""
    if runs_interpreted(device):
        block_h = min(_padded(hidden), 1024)
        return LSTMConfig(False, max(1, min(next_power_of_2(n_batch), 65536 // block_h)), block_h)
    block_h = min(_padded(hidden), 64)
    return LSTMConfig(False, max(1, min(next_power_of_2(n_batch), 1024 // block_h)), block_h, num_warps=4)


def lstm_config(n_batch: int, hidden: int, dtype: torch.dtype, device: torch.device) -> LSTMConfig:
    """The path and block sizes of one layer (H100/H200 in mind), by padded H and dtype. The
    persistent kernels take H up to ``PERSISTENT_MAX_HIDDEN`` (the package docstring says why);
    larger H runs per step. Checked with ptxas for sm_90 by the tests (no spills with triton 3.9,
    at most 16 bytes per thread with 3.6; shared memory within the SM's 227 KB): resident W_hh up
    to HP = 128 in 16-bit (128 KB of shared memory), HP = 32 in float32 (resident at HP = 64, its
    3xTF32 operands take 144 KB and triton 3.6 spills ~300 bytes); streamed above. In the
    interpreter the persistent path is always resident (the fewest numpy calls per step), on a
    batch tile of the batch's size (its tl.dot takes any M)."""
    hp = _padded(hidden)
    if hp > PERSISTENT_MAX_HIDDEN[dtype]:
        return pointwise_config(n_batch, hidden, device)
    if runs_interpreted(device):
        return LSTMConfig(True, min(next_power_of_2(n_batch), 64), hp, hp)
    if dtype in (torch.float16, torch.bfloat16):
        if hp <= 128:
            return LSTMConfig(True, 16, hp, hp, num_warps=8 if hp <= 64 else 16)
        return LSTMConfig(True, 16, 64, 64, num_warps=8)
    if dtype == torch.float32:
        if hp <= 32:
            return LSTMConfig(True, 16, hp, hp, num_warps=4)
        return LSTMConfig(True, 16, 16, 32, num_warps=4)
    return LSTMConfig(True, 16, 16, 16, num_warps=4)  # float64: exactness, not speed


# --------------------------------------------------------------------------------------------
# Validation and allocation (shared with the fake implementations in op.py)
# --------------------------------------------------------------------------------------------


def _require_tensors(op: str, **tensors) -> None:
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{op} expects {name} to be a tensor, got {type(t).__name__}")


def _check_dtypes(op: str, **tensors: Tensor) -> None:
    name0, t0 = next(iter(tensors.items()))
    if t0.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"{op} supports float16, bfloat16, float32 and float64, got {name0} of dtype {t0.dtype}")
    for name, t in tensors.items():
        if t.dtype != t0.dtype:
            raise TypeError(f"{op}: every tensor must have one dtype, got {name0}: {t0.dtype} and {name}: {t.dtype}")


def _check_shape(op: str, name: str, t: Tensor, expected: tuple, meaning: str) -> None:
    if tuple(t.shape) != expected:
        raise ValueError(f"{op} expects {name} of shape {meaning} = {expected}, got {tuple(t.shape)}")


def _check_weights(op: str, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, n_input: int) -> int:
    """The hidden size H from weight_hh (4H, H); every weight's shape checked against it."""
    if w_hh.dim() != 2 or w_hh.shape[0] != 4 * w_hh.shape[1] or w_hh.shape[1] < 1:
        raise ValueError(f"{op} expects weight_hh of shape (4H, H) with H >= 1, got {tuple(w_hh.shape)}")
    H = w_hh.shape[1]
    _check_shape(op, "weight_ih", w_ih, (4 * H, n_input), "(4H, input_size)")
    _check_shape(op, "bias_ih", b_ih, (4 * H,), "(4H,)")
    _check_shape(op, "bias_hh", b_hh, (4 * H,), "(4H,)")
    return H


def check_cell_args(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                    b_hh: Tensor) -> torch.device:  # fmt: skip
    op = "lstm_cell"
    tensors = dict(x=x, h=h, c=c, weight_ih=w_ih, weight_hh=w_hh, bias_ih=b_ih, bias_hh=b_hh)
    _require_tensors(op, **tensors)
    if x.dim() != 2 or x.shape[1] < 1:
        raise ValueError(f"{op} expects x of shape (B, input_size) with input_size >= 1, got {tuple(x.shape)}")
    H = _check_weights(op, w_ih, w_hh, b_ih, b_hh, x.shape[1])
    _check_shape(op, "h", h, (x.shape[0], H), "(B, H)")
    _check_shape(op, "c", c, (x.shape[0], H), "(B, H)")
    _check_dtypes(op, **tensors)
    return check_device(op, **tensors)


def check_layer_args(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                     b_hh: Tensor) -> torch.device:  # fmt: skip
    op = "lstm"
    tensors = dict(x=x, h0=h0, c0=c0, weight_ih=w_ih, weight_hh=w_hh, bias_ih=b_ih, bias_hh=b_hh)
    _require_tensors(op, **tensors)
    if x.dim() != 3 or x.shape[0] < 1 or x.shape[2] < 1:
        raise ValueError(
            f"{op} expects x of shape (T, B, input_size) with T >= 1 and input_size >= 1, got {tuple(x.shape)}"
        )
    H = _check_weights(op, w_ih, w_hh, b_ih, b_hh, x.shape[2])
    _check_shape(op, "h0", h0, (x.shape[1], H), "(B, H)")
    _check_shape(op, "c0", c0, (x.shape[1], H), "(B, H)")
    _check_dtypes(op, **tensors)
    return check_device(op, **tensors)


def check_grads(op: str, like: Tensor, **grads: Optional[Tensor]) -> None:
    """Each given gradient (None: zero) a tensor of ``like``'s shape (its forward output's), a
    supported dtype, on ``like``'s device."""
    for name, t in grads.items():
        if t is None:
            continue
        _require_tensors(op, **{name: t})
        _check_shape(op, name, t, tuple(like.shape), "(its forward output's)")
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"{op}: {name} has unsupported dtype {t.dtype}")
        check_device(op, output=like, **{name: t})


def check_layer_grads(dy: Optional[Tensor], dh_n: Optional[Tensor], dc_n: Optional[Tensor], y: Tensor,
                      h0: Tensor) -> None:  # fmt: skip
    check_grads("lstm_backward", y, grad_y=dy)
    check_grads("lstm_backward", h0, grad_h_n=dh_n, grad_c_n=dc_n)


def cell_outputs(x: Tensor, c: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(h_next (B, H), c_next (B, H), gates (B, 4H)), uninitialized, in the inputs' dtype."""
    B, H = x.shape[0], w_hh.shape[1]
    return x.new_empty((B, H)), c.new_empty((B, H)), x.new_empty((B, 4 * H))


def layer_outputs(x: Tensor, w_hh: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y (T, B, H), h_n (B, H), c_n (B, H), gates (T, B, 4H), cs (T + 1, B, H): c0, c_1, ... c_T in
    the state dtype), uninitialized."""
    T, B, H = x.shape[0], x.shape[1], w_hh.shape[1]
    cs = x.new_empty((T + 1, B, H), dtype=state_dtype(x.dtype))
    return x.new_empty((T, B, H)), x.new_empty((B, H)), x.new_empty((B, H)), x.new_empty((T, B, 4 * H)), cs


def _consts(dtype: torch.dtype, device: torch.device) -> dict:
    return dict(IS_FP64=dtype == torch.float64, INTERPRETED=runs_interpreted(device))


def _bias_grad(dgates2: Tensor) -> Tensor:
    """sum over rows of the (N, 4H) gate gradients, accumulated in fp32 (fp64) for every dtype."""
    return dgates2.sum(0, dtype=state_dtype(dgates2.dtype)).to(dgates2.dtype)


# --------------------------------------------------------------------------------------------
# One step: lstm_cell
# --------------------------------------------------------------------------------------------


def lstm_cell_forward(x: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor,
                      b_hh: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """One step: (h_next, c_next, gates). The two projections by torch (cuBLAS), then one fused
    pointwise kernel; ``gates`` holds the activated i, f, g, o the backward needs."""
    device = check_cell_args(x, h, c, w_ih, w_hh, b_ih, b_hh)
    h_next, c_next, gates = cell_outputs(x, c, w_hh)
    B, H = h_next.shape
    if B == 0:
        return h_next, c_next, gates
    xg = torch.mm(x, w_ih.t())  # (B, 4H)
    hg = torch.mm(h, w_hh.t())  # (B, 4H)
    cfg = pointwise_config(B, H, device)
    launch(
        _lstm_cell_fwd_kernel, (cdiv(B, cfg.block_b), cdiv(H, cfg.block_h)), device,
        xg, hg, b_ih.contiguous(), b_hh.contiguous(), c.contiguous(), h_next, c_next, gates, B, H,
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, **_consts(x.dtype, device), num_warps=cfg.num_warps,
    )  # fmt: skip
    return h_next, c_next, gates


def _dc_state(grad_c: Optional[Tensor], like: Tensor) -> Tensor:
    """A fresh (B, H) buffer in the state dtype holding grad_c (zeros for None): the kernels update it in place."""
    dc = torch.zeros(like.shape, dtype=state_dtype(like.dtype), device=like.device)
    if grad_c is not None:
        dc.copy_(grad_c)
    return dc


def lstm_cell_backward(
    grad_h: Optional[Tensor], grad_c: Optional[Tensor], x: Tensor, h: Tensor, c: Tensor, c_next: Tensor,
    gates: Tensor, w_ih: Tensor, w_hh: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(dx, dh, dc, dweight_ih, dweight_hh, dbias) of one step from the gradients of h_next and
    c_next (None: zero) and what the forward saved (c_next, gates); dbias is the gradient of both biases."""
    device = check_device("lstm_cell_backward", x=x, h=h, c=c, c_next=c_next, gates=gates)
    check_grads("lstm_cell_backward", c, grad_h=grad_h, grad_c=grad_c)
    B, H = c.shape
    dgates = gates.new_empty((B, 4 * H))
    dc_state = _dc_state(grad_c, c)
    if B > 0:
        cfg = pointwise_config(B, H, device)
        dy = grad_h.contiguous() if grad_h is not None else dgates
        launch(
            _lstm_cell_bwd_kernel, (cdiv(B, cfg.block_b), cdiv(H, cfg.block_h)), device,
            dy, dgates, dc_state, gates, c_next.contiguous(), c.contiguous(), dgates, B, H,
            BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, HAS_DY=grad_h is not None, HAS_DH_REC=False,
            **_consts(x.dtype, device), num_warps=cfg.num_warps,
        )  # fmt: skip
    dx = torch.mm(dgates, w_ih)  # (B, in)
    dh = torch.mm(dgates, w_hh)  # (B, H)
    return dx, dh, dc_state.to(c.dtype), torch.mm(dgates.t(), x), torch.mm(dgates.t(), h), _bias_grad(dgates)


# --------------------------------------------------------------------------------------------
# A whole layer: lstm
# --------------------------------------------------------------------------------------------


def _per_step_forward(xg: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0: Tensor, y: Tensor,
                      cs: Tensor, gates: Tensor, cfg: LSTMConfig, device: torch.device) -> None:  # fmt: skip
    """Per step: h_{t-1} W_hh^T by torch (cuBLAS), then the fused pointwise kernel on the step's slices."""
    T, B, H = y.shape
    grid = (cdiv(B, cfg.block_b), cdiv(H, cfg.block_h))
    w_t = w_hh.t()
    h_prev = h0
    for t in range(T):
        hg = torch.mm(h_prev, w_t)  # (B, 4H)
        launch(
            _lstm_cell_fwd_kernel, grid, device, xg[t], hg, b_ih, b_hh, cs[t], y[t], cs[t + 1], gates[t], B, H,
            BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, **_consts(y.dtype, device), num_warps=cfg.num_warps,
        )  # fmt: skip
        h_prev = y[t]


def _persistent_forward(xg: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0: Tensor, y: Tensor,
                        cs: Tensor, gates: Tensor, cfg: LSTMConfig, device: torch.device) -> None:  # fmt: skip
    T, B, H = y.shape
    launch(
        _lstm_persistent_fwd_kernel, (cdiv(B, cfg.block_b),), device,
        xg, w_hh, b_ih, b_hh, h0, y, cs, gates, T, B, H,
        BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, HIDDEN_TILES=cdiv(H, cfg.block_h),
        K_TILES=cdiv(H, cfg.block_k), RESIDENT=cfg.resident(H), **_consts(y.dtype, device),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip


def lstm_forward(
    x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, *,
    config: Optional[LSTMConfig] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """One layer over x (T, B, in): (y (T, B, H), h_n, c_n (B, H), gates (T, B, 4H), cs (T + 1, B, H)).

    The input projection of all steps is one GEMM (torch); the recurrence runs persistent or per
    step (``lstm_config``). gates (activated, the inputs' dtype) and cs (c0 then every c_t, in the
    state dtype) are what ``lstm_backward`` takes back.
    """
    device = check_layer_args(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    y, h_n, c_n, gates, cs = layer_outputs(x, w_hh)
    T, B, H = y.shape
    if B == 0:
        return y, h_n, c_n, gates, cs
    xg = torch.mm(x.reshape(T * B, x.shape[2]), w_ih.t()).view(T, B, 4 * H)  # every step's x_t W_ih^T at once
    w_hh, b_ih, b_hh, h0 = (t.contiguous() for t in (w_hh, b_ih, b_hh, h0))
    cs[0].copy_(c0)  # the state dtype from here on
    cfg = config or lstm_config(B, H, x.dtype, device)
    run = _persistent_forward if cfg.persistent else _per_step_forward
    run(xg, w_hh, b_ih, b_hh, h0, y, cs, gates, cfg, device)
    h_n.copy_(y[T - 1])
    c_n.copy_(cs[T])
    return y, h_n, c_n, gates, cs


def _per_step_backward(dy: Optional[Tensor], dh_n: Optional[Tensor], w_hh: Tensor, gates: Tensor, cs: Tensor,
                       dgates: Tensor, dc: Tensor, cfg: LSTMConfig, device: torch.device) -> Tensor:  # fmt: skip
    """Steps T-1 .. 0: the fused pointwise backward kernel on the step's slices, then dgates_t W_hh
    by torch; returns dh0."""
    T, B, H = gates.shape[0], gates.shape[1], w_hh.shape[1]
    grid = (cdiv(B, cfg.block_b), cdiv(H, cfg.block_h))
    dh_rec = dh_n
    for t in reversed(range(T)):
        launch(
            _lstm_cell_bwd_kernel, grid, device, dy[t] if dy is not None else dc,
            dh_rec if dh_rec is not None else dc, dc, gates[t], cs[t + 1], cs[t], dgates[t], B, H,
            BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, HAS_DY=dy is not None, HAS_DH_REC=dh_rec is not None,
            **_consts(gates.dtype, device), num_warps=cfg.num_warps,
        )  # fmt: skip
        dh_rec = torch.mm(dgates[t], w_hh)  # (B, H): the gradient reaching h_{t-1} through step t
    return dh_rec


def _persistent_backward(dy: Optional[Tensor], dh_n: Optional[Tensor], w_hh: Tensor, gates: Tensor, cs: Tensor,
                         dgates: Tensor, dc: Tensor, cfg: LSTMConfig, device: torch.device) -> Tensor:  # fmt: skip
    T, B, H = gates.shape[0], gates.shape[1], w_hh.shape[1]
    dh0 = gates.new_empty((B, H))
    launch(
        _lstm_persistent_bwd_kernel, (cdiv(B, cfg.block_b),), device,
        dy if dy is not None else dgates, dh_n if dh_n is not None else dgates, w_hh, gates, cs, dgates, dh0, dc,
        T, B, H, BLOCK_B=cfg.block_b, BLOCK_H=cfg.block_h, BLOCK_K=cfg.block_k, HIDDEN_TILES=cdiv(H, cfg.block_h),
        K_TILES=cdiv(4 * H, cfg.block_k), RESIDENT=cfg.resident(H), HAS_DY=dy is not None, HAS_DH_N=dh_n is not None,
        **_consts(gates.dtype, device), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    return dh0


def lstm_backward(
    dy: Optional[Tensor], dh_n: Optional[Tensor], dc_n: Optional[Tensor], x: Tensor, h0: Tensor, w_ih: Tensor,
    w_hh: Tensor, y: Tensor, gates: Tensor, cs: Tensor, *, config: Optional[LSTMConfig] = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(dx, dh0, dc0, dweight_ih, dweight_hh, dbias) of one layer from the gradients of y, h_n and
    c_n (None: zero) and what ``lstm_forward`` saved (y, gates, cs: c0 is its row 0); dbias is both
    biases' gradient; dc0 has h0's dtype (every input has one).

    Backward through time in kernels (persistent or per step, as the forward), then the weight
    gradients, dx and dbias as GEMMs and a sum over all T * B rows at once.
    """
    device = check_device("lstm_backward", x=x, h0=h0, weight_ih=w_ih, weight_hh=w_hh, y=y, gates=gates, cs=cs)
    check_layer_grads(dy, dh_n, dc_n, y, h0)
    T, B, H = y.shape
    dgates = gates.new_empty((T, B, 4 * H))
    dc = _dc_state(dc_n, h0)
    if B == 0:
        dh0 = h0.new_zeros(h0.shape)
    else:
        dy, dh_n = (t.contiguous() if t is not None else None for t in (dy, dh_n))  # read in their own dtype
        cfg = config or lstm_config(B, H, x.dtype, device)
        run = _persistent_backward if cfg.persistent else _per_step_backward
        dh0 = run(dy, dh_n, w_hh.contiguous(), gates, cs, dgates, dc, cfg, device)
    dgates2 = dgates.view(T * B, 4 * H)
    h_prev = torch.cat([h0.unsqueeze(0), y[: T - 1]]).view(T * B, H)  # h_{t-1} of every step
    dx = torch.mm(dgates2, w_ih).view(x.shape)
    dw_ih = torch.mm(dgates2.t(), x.reshape(T * B, x.shape[2]))
    dw_hh = torch.mm(dgates2.t(), h_prev)
    return dx, dh0, dc.to(h0.dtype), dw_ih, dw_hh, _bias_grad(dgates2)
