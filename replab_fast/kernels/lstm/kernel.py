"""The LSTM cell's device code: the gate math as device functions, and the fused pointwise kernels
of one time step, forward and backward (the math is in the package docstring,
``replab_fast.kernels.lstm``). The persistent whole-sequence kernels are in ``persistent.py``.

Gate tiles. A tile of BLOCK_H hidden units starting at unit u0 holds the pre-activations (or the
activated gates, or their gradients) of all four gates as one (BLOCK_B, 4 BLOCK_H) block, column
n = 4 j + q for unit u0 + j and gate q (0: i, 1: f, 2: g, 3: o); in memory, a (., 4H) row keeps
torch.nn.LSTM's gate-major order, column q H + u0 + j (``_gate_cols`` maps one to the other).
One load, one product with W_hh and one store per tile serve all four gates, and the
interleaving makes the split into i, f, g, o (``_split_gates``) a reshape and two splits of
pairs.
"""

import triton
import triton.language as tl

from .._triton import cast_for_store, device_function


@device_function
def _sigmoid(x):
    """1 / (1 + exp(-x)) without overflow at any |x|: z = exp(-|x|) lies in (0, 1]."""
    z = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0, z) / (1.0 + z)


@device_function
def _tanh(x):
    """sign(x) (1 - z) / (1 + z) with z = exp(-2|x|) in (0, 1] (= 2 sigmoid(2x) - 1): no inf or NaN
    at any |x| (absolute error a few units of the last place, as 1 - 2 / (exp(2|x|) + 1))."""
    z = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - z) / (1.0 + z)
    return tl.where(x >= 0, t, -t)


@device_function
def _activate(pre, is_g):
    """The gates from a tile of pre-activations: sigmoid, and tanh in the g columns (``is_g``), as
    s sigmoid(s x) - (s - 1) with s = 2 there and 1 elsewhere (one sigmoid over the whole tile)."""
    s = tl.where(is_g, 2.0, 1.0)[None, :]
    return s * _sigmoid(s * pre) - (s - 1.0)


@device_function
def _gate_cols(u0, hidden, BLOCK_H: tl.constexpr):
    """For the gate tile of units u0 .. u0 + BLOCK_H - 1: each tile column's column in a (., 4H)
    row (q H + unit), whether that unit exists (unit < H), and whether it is a g column; (4 BLOCK_H,) each."""
    n = tl.arange(0, 4 * BLOCK_H)
    unit = u0 + n // 4
    return (n % 4) * hidden + unit, unit < hidden, (n % 4) == 2


@device_function
def _split_gates(tile, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """A (BLOCK_B, 4 BLOCK_H) gate tile as its four gates i, f, g, o, (BLOCK_B, BLOCK_H) each."""
    pairs = tl.reshape(tile, (BLOCK_B, BLOCK_H, 2, 2))  # [b, j, a, e]: gate q = 2 a + e
    even, odd = tl.split(pairs)  # e = 0: gates (i, g); e = 1: gates (f, o)
    i, g = tl.split(even)
    f, o = tl.split(odd)
    return i, f, g, o


@device_function
def _join_gates(i, f, g, o, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """Four (BLOCK_B, BLOCK_H) gates as one (BLOCK_B, 4 BLOCK_H) gate tile (``_split_gates``'s inverse)."""
    return tl.reshape(tl.join(tl.join(i, g), tl.join(f, o)), (BLOCK_B, 4 * BLOCK_H))


@device_function
def _cell(pre, is_g, c_prev, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """One step from a tile of pre-activations: (the activated gate tile, c' = f c + i g, h' = o tanh(c'))."""
    act = _activate(pre, is_g)
    i, f, g, o = _split_gates(act, BLOCK_B, BLOCK_H)
    c = f * c_prev + i * g
    return act, c, o * _tanh(c)


@device_function
def _cell_backward(dh, dc_next, act, c, c_prev, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """(the gate tile of d(pre-activations), dc_{t-1}) from dh (the total gradient of h_t), dc_next
    (the gradient reaching c_t from step t+1), the saved activated gate tile and the cell states."""
    i, f, g, o = _split_gates(act, BLOCK_B, BLOCK_H)
    tc = _tanh(c)
    dc = dc_next + dh * o * (1.0 - tc * tc)
    d_i = dc * g * i * (1.0 - i)
    d_f = dc * c_prev * f * (1.0 - f)
    d_g = dc * i * (1.0 - g * g)
    d_o = dh * tc * o * (1.0 - o)
    return _join_gates(d_i, d_f, d_g, d_o, BLOCK_B, BLOCK_H), dc * f


@device_function
def _row_offsets(step, rows, n_batch, width):
    """Element offsets of rows (step, b) of a contiguous (T, B, width) tensor, in int64: T * B * 4H
    passes 2^31 sooner than one expects (T = 2048, B = 256, H = 1024), so the step is promoted
    before anything is multiplied."""
    return (tl.cast(step, tl.int64) * n_batch + rows) * width


@device_function
def _bias_cols(b_ih_ptr, b_hh_ptr, cols, col_mask, cdt: tl.constexpr):
    """b_ih + b_hh at the gate tile's columns, (4 BLOCK_H,), added in cdt."""
    b = tl.load(b_ih_ptr + cols, mask=col_mask, other=0.0).to(cdt)
    return b + tl.load(b_hh_ptr + cols, mask=col_mask, other=0.0).to(cdt)


@device_function
def _dot(a, b, INTERPRETED: tl.constexpr):
    """``tl.dot(a, b)`` accumulating in fp32 (fp64 for fp64). float32 operands run as 3xTF32 on the
    tensor cores (about fp32 accuracy; plain TF32 would give ~1e-3). Triton's interpreter (3.6,
    3.9) multiplies bfloat16 operands as their raw uint16 bits, so there they are upcast first
    (exact: a product of two bf16 values fits in fp32)."""
    if INTERPRETED:
        if a.dtype == tl.bfloat16:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        if a.dtype == tl.float32:
            return tl.dot(a, b, input_precision="ieee")
    if a.dtype == tl.float32:
        return tl.dot(a, b, input_precision="tf32x3")
    elif a.dtype == tl.float64:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@device_function
def _cell_tile(n_batch, hidden, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr):
    """This program's tile of a one-step cell kernel: batch rows program_id(0) * BLOCK_B + ..., hidden
    units program_id(1) * BLOCK_H + ... of every gate. Returns the gate columns, their mask and
    g-gate flags (4 BLOCK_H,), then the offsets and masks of the (B, 4H) tile (BLOCK_B, 4 BLOCK_H)
    and of the (B, H) tile (BLOCK_B, BLOCK_H)."""
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BLOCK_B,)
    u0 = tl.program_id(1) * BLOCK_H
    units = u0 + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
    cols, col_mask, is_g = _gate_cols(u0, hidden, BLOCK_H)  # (4 BLOCK_H,)
    row_mask = rows < n_batch
    gate_mask = row_mask[:, None] & col_mask[None, :]
    mask = row_mask[:, None] & (units < hidden)[None, :]
    gate_rows = _row_offsets(0, rows, n_batch, 4 * hidden)[:, None] + cols[None, :]  # (BLOCK_B, 4 BLOCK_H)
    state_rows = _row_offsets(0, rows, n_batch, hidden)[:, None] + units[None, :]  # (BLOCK_B, BLOCK_H)
    return cols, col_mask, is_g, gate_rows, gate_mask, state_rows, mask


@triton.jit
def _lstm_cell_fwd_kernel(
    xg_ptr,  # (B, 4H) input projection x_t W_ih^T, contiguous
    hg_ptr,  # (B, 4H) recurrent projection h_{t-1} W_hh^T, contiguous
    b_ih_ptr,  # (4H,) bias of the input projection
    b_hh_ptr,  # (4H,) bias of the recurrent projection
    c_prev_ptr,  # (B, H) cell state c_{t-1}, contiguous
    h_ptr,  # (B, H) output h_t, contiguous
    c_ptr,  # (B, H) output c_t, contiguous (the state dtype inside a layer, c's dtype for one cell)
    gates_ptr,  # (B, 4H) output: the activated gates i, f, g, o, contiguous
    n_batch,  # B
    hidden,  # H
    BLOCK_B: tl.constexpr,  # batch rows per program
    BLOCK_H: tl.constexpr,  # hidden units per program
    IS_FP64: tl.constexpr,  # compute in fp64, else fp32
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter (see cast_for_store)
):
    """One step, pointwise: gates = sigma(xg + hg + b_ih + b_hh), c_t = f c_{t-1} + i g,
    h_t = o tanh(c_t), for BLOCK_B x BLOCK_H units of every gate. (A layer passes the (B, .)
    slices of its (T, B, .) tensors: their offsets are formed by torch, in int64.)"""
    cdt = tl.float64 if IS_FP64 else tl.float32
    cols, col_mask, is_g, gate_rows, gate_mask, state_rows, mask = _cell_tile(n_batch, hidden, BLOCK_B, BLOCK_H)
    pre = tl.load(xg_ptr + gate_rows, mask=gate_mask, other=0.0).to(cdt)
    pre += tl.load(hg_ptr + gate_rows, mask=gate_mask, other=0.0).to(cdt)
    pre += _bias_cols(b_ih_ptr, b_hh_ptr, cols, col_mask, cdt)[None, :]
    c_prev = tl.load(c_prev_ptr + state_rows, mask=mask, other=0.0).to(cdt)
    act, c, h = _cell(pre, is_g, c_prev, BLOCK_B, BLOCK_H)
    tl.store(gates_ptr + gate_rows, cast_for_store(act, gates_ptr.dtype.element_ty, INTERPRETED), mask=gate_mask)
    tl.store(c_ptr + state_rows, cast_for_store(c, c_ptr.dtype.element_ty, INTERPRETED), mask=mask)
    tl.store(h_ptr + state_rows, cast_for_store(h, h_ptr.dtype.element_ty, INTERPRETED), mask=mask)


@triton.jit
def _lstm_cell_bwd_kernel(
    dy_ptr,  # (B, H) gradient of the output h_t, contiguous (read when HAS_DY)
    dh_rec_ptr,  # (B, H) gradient reaching h_t through step t+1, contiguous (read when HAS_DH_REC)
    dc_ptr,  # (B, H) in: the gradient reaching c_t from step t+1; out: that of c_{t-1} (state dtype)
    gates_ptr,  # (B, 4H) the forward's activated gates, contiguous
    c_ptr,  # (B, H) the forward's cell state c_t, contiguous
    c_prev_ptr,  # (B, H) the cell state c_{t-1}, contiguous
    dgates_ptr,  # (B, 4H) output: gradient of the gate pre-activations, contiguous
    n_batch,  # B
    hidden,  # H
    BLOCK_B: tl.constexpr,  # batch rows per program
    BLOCK_H: tl.constexpr,  # hidden units per program
    HAS_DY: tl.constexpr,  # dy given (else zero)
    HAS_DH_REC: tl.constexpr,  # dh_rec given (else zero)
    IS_FP64: tl.constexpr,  # compute in fp64, else fp32
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter (see cast_for_store)
):
    """One step backward, pointwise: d(pre-activations) of the four gates and dc_{t-1} from
    dh_t = dy_t + dh_rec and dc_t (see ``_cell_backward``); dc is updated in place."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    cols, col_mask, is_g, gate_rows, gate_mask, state_rows, mask = _cell_tile(n_batch, hidden, BLOCK_B, BLOCK_H)
    dh = tl.full([BLOCK_B, BLOCK_H], 0.0, dtype=cdt)
    if HAS_DY:
        dh += tl.load(dy_ptr + state_rows, mask=mask, other=0.0).to(cdt)
    if HAS_DH_REC:
        dh += tl.load(dh_rec_ptr + state_rows, mask=mask, other=0.0).to(cdt)
    dc = tl.load(dc_ptr + state_rows, mask=mask, other=0.0).to(cdt)
    act = tl.load(gates_ptr + gate_rows, mask=gate_mask, other=0.0).to(cdt)
    c = tl.load(c_ptr + state_rows, mask=mask, other=0.0).to(cdt)
    c_prev = tl.load(c_prev_ptr + state_rows, mask=mask, other=0.0).to(cdt)
    dgates, dc_prev = _cell_backward(dh, dc, act, c, c_prev, BLOCK_B, BLOCK_H)
    tl.store(dgates_ptr + gate_rows, cast_for_store(dgates, dgates_ptr.dtype.element_ty, INTERPRETED), mask=gate_mask)
    tl.store(dc_ptr + state_rows, cast_for_store(dc_prev, dc_ptr.dtype.element_ty, INTERPRETED), mask=mask)
