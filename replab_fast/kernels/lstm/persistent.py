"""The persistent LSTM kernels: one launch runs a whole layer over all T steps, forward or
backward, each program owning a tile of batch rows for every step (why, and which sizes run
here: the package docstring, ``replab_fast.kernels.lstm``).

Two variants, chosen by the ``RESIDENT`` constexpr:
- resident (H padded to one tile, HP <= BLOCK_H): W_hh, as one (HP, 4 HP) block of gate columns
  (``kernel._gate_cols``), is loaded once, before the time loop, and h and c (backward: dh and
  dc) are carried across steps in registers; nothing a step needs comes back from memory.
- streamed (larger H): per step, every tile of hidden units reduces h_{t-1} (backward: the gate
  gradients of step t+1) against W_hh in chunks of BLOCK_K, W_hh coming from L2 / L1; h_{t-1} is
  read back from the output written at step t-1 (backward: dgates of step t+1) and c from the
  saved states, after a barrier that orders the program's own stores of step t-1 before its
  loads of step t.

The cell states are saved as cs (T + 1, B, H): row 0 is c0 (the launcher copies it there), row
t + 1 is c_t, so step t reads c_{t-1} at row t with no special first step.
"""

import triton
import triton.language as tl

from .._triton import block_loop, cast_for_store, device_function
from .kernel import _bias_cols, _cell, _cell_backward, _dot, _gate_cols, _row_offsets


@device_function
def _w_gate_cols(w_ptr, cols, col_mask, k, hidden):
    """(BLOCK_K, 4 BLOCK_H) block of W_hh^T at the gate tile's columns: element [k, n] = W_hh[cols[n], k]."""
    mask = (k < hidden)[:, None] & col_mask[None, :]
    return tl.load(w_ptr + cols[None, :].to(tl.int64) * hidden + k[:, None], mask=mask, other=0.0)


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------


@device_function
def _resident_fwd_step(state, args, t, FLAGS: tl.constexpr):
    """Step t of the resident forward; a ``block_loop`` step.

    state: (h, c), (BLOCK_B, HP): h_{t-1} in the input dtype (as the dot reads it), c_{t-1} in the
        compute dtype.
    args: (xg_ptr, y_ptr, cs_ptr, gates_ptr, gate_rows, state_rows, gate_mask, mask, is_g, gate_stride,
        state_stride, w_t, bias): the (BLOCK_B, 4 HP) offsets of the program's gate tile in step 0 of
        the (T, B, 4H) tensors and the (BLOCK_B, HP) ones in step 0 of the (T, B, H) tensors, their
        masks, the g columns; the elements of one step of each, B 4H and B H (int64: step t's
        offsets t * stride are int64 too); W_hh^T at the gate columns (HP, 4 HP), b_ih + b_hh (4 HP,).
    FLAGS: (BLOCK_B, BLOCK_H, IS_FP64, INTERPRETED).
    """
    BLOCK_B: tl.constexpr = FLAGS[0]
    BLOCK_H: tl.constexpr = FLAGS[1]
    IS_FP64: tl.constexpr = FLAGS[2]
    INTERPRETED: tl.constexpr = FLAGS[3]
    cdt = tl.float64 if IS_FP64 else tl.float32
    h, c = state
    xg_ptr, y_ptr, cs_ptr, gates_ptr, gate_rows, state_rows, gate_mask, mask, is_g, gate_stride, state_stride, w_t, \
        bias = args  # fmt: skip
    gate_step = t * gate_stride  # element offset of step t in a (T, B, 4H) tensor, int64
    state_step = t * state_stride
    pre = _dot(h, w_t, INTERPRETED) + tl.load(xg_ptr + gate_step + gate_rows, mask=gate_mask, other=0.0).to(cdt)
    act, c, h_new = _cell(pre + bias[None, :], is_g, c, BLOCK_B, BLOCK_H)
    tl.store(gates_ptr + gate_step + gate_rows, cast_for_store(act, gates_ptr.dtype.element_ty, INTERPRETED),
             mask=gate_mask)  # fmt: skip
    c_step = state_step + state_stride  # c_t: row t + 1 of cs
    tl.store(cs_ptr + c_step + state_rows, cast_for_store(c, cs_ptr.dtype.element_ty, INTERPRETED), mask=mask)
    h = cast_for_store(h_new, y_ptr.dtype.element_ty, INTERPRETED)
    tl.store(y_ptr + state_step + state_rows, h, mask=mask)
    return h, c


@device_function
def _streamed_fwd_body(h_src, t, args, FLAGS: tl.constexpr):
    """Step t of the streamed forward over every tile of hidden units; h_src points at h_{t-1}
    (a (B, H) slice, contiguous: h0 or step t - 1 of y). Ends with the program's barrier.

    args: (xg_ptr, w_ptr, b_ih_ptr, b_hh_ptr, y_ptr, cs_ptr, gates_ptr, rows, n_batch, hidden, seq_len).
    FLAGS: (BLOCK_B, BLOCK_H, BLOCK_K, HIDDEN_TILES, K_TILES, IS_FP64, INTERPRETED).
    """
    BLOCK_B: tl.constexpr = FLAGS[0]
    BLOCK_H: tl.constexpr = FLAGS[1]
    BLOCK_K: tl.constexpr = FLAGS[2]
    HIDDEN_TILES: tl.constexpr = FLAGS[3]
    K_TILES: tl.constexpr = FLAGS[4]
    IS_FP64: tl.constexpr = FLAGS[5]
    INTERPRETED: tl.constexpr = FLAGS[6]
    cdt = tl.float64 if IS_FP64 else tl.float32
    xg_ptr, w_ptr, b_ih_ptr, b_hh_ptr, y_ptr, cs_ptr, gates_ptr, rows, n_batch, hidden, seq_len = args
    row_mask = rows < n_batch
    src_rows = _row_offsets(0, rows, n_batch, hidden)  # (BLOCK_B,) rows of the (B, H) source
    gate_base = _row_offsets(t, rows, n_batch, 4 * hidden)
    state_base = _row_offsets(t, rows, n_batch, hidden)  # also c_{t-1}'s rows in cs
    for jt in range(HIDDEN_TILES):
        units = jt * BLOCK_H + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
        cols, col_mask, is_g = _gate_cols(jt * BLOCK_H, hidden, BLOCK_H)  # (4 BLOCK_H,)
        acc = tl.full([BLOCK_B, 4 * BLOCK_H], 0.0, dtype=cdt)  # h_{t-1} W_hh^T at the tile's gate columns
        for kt in range(K_TILES):
            k = kt * BLOCK_K + tl.arange(0, BLOCK_K)  # (BLOCK_K,)
            hk = tl.load(h_src + src_rows[:, None] + k[None, :], mask=row_mask[:, None] & (k < hidden)[None, :],
                         other=0.0)  # fmt: skip
            acc += _dot(hk, _w_gate_cols(w_ptr, cols, col_mask, k, hidden), INTERPRETED)
        gate_mask = row_mask[:, None] & col_mask[None, :]
        mask = row_mask[:, None] & (units < hidden)[None, :]
        gate_rows = gate_base[:, None] + cols[None, :]  # (BLOCK_B, 4 BLOCK_H)
        state_rows = state_base[:, None] + units[None, :]  # (BLOCK_B, BLOCK_H)
        pre = acc + tl.load(xg_ptr + gate_rows, mask=gate_mask, other=0.0).to(cdt)
        pre += _bias_cols(b_ih_ptr, b_hh_ptr, cols, col_mask, cdt)[None, :]
        c_prev = tl.load(cs_ptr + state_rows, mask=mask, other=0.0).to(cdt)  # row t of cs
        act, c, h = _cell(pre, is_g, c_prev, BLOCK_B, BLOCK_H)
        tl.store(gates_ptr + gate_rows, cast_for_store(act, gates_ptr.dtype.element_ty, INTERPRETED), mask=gate_mask)
        c_rows = state_rows + n_batch * hidden  # c_t: row t + 1 of cs
        tl.store(cs_ptr + c_rows, cast_for_store(c, cs_ptr.dtype.element_ty, INTERPRETED), mask=mask)
        tl.store(y_ptr + state_rows, cast_for_store(h, y_ptr.dtype.element_ty, INTERPRETED), mask=mask)
    tl.debug_barrier()  # this step's h_t and c_t, stored by all of the program's threads, before step t+1 reads them


@device_function
def _streamed_fwd_step(state, args, t, FLAGS: tl.constexpr):
    """Step t >= 1 of the streamed forward (h_{t-1} from y); a ``block_loop`` step. state: (steps done,)."""
    (done,) = state
    xg_ptr, w_ptr, b_ih_ptr, b_hh_ptr, y_ptr, cs_ptr, gates_ptr, rows, n_batch, hidden, seq_len = args
    _streamed_fwd_body(y_ptr + _row_offsets(t - 1, 0, n_batch, hidden), t, args, FLAGS)
    return (done + 1,)


@triton.jit
def _lstm_persistent_fwd_kernel(
    xg_ptr,  # (T, B, 4H) input projections x_t W_ih^T (no bias), contiguous
    w_ptr,  # (4H, H) W_hh, contiguous
    b_ih_ptr,  # (4H,) bias of the input projection
    b_hh_ptr,  # (4H,) bias of the recurrent projection
    h0_ptr,  # (B, H) initial hidden state, contiguous
    y_ptr,  # (T, B, H) output: h_t of every step, contiguous
    cs_ptr,  # (T + 1, B, H) in: c0 at row 0; out: c_t at row t + 1 (the state dtype), contiguous
    gates_ptr,  # (T, B, 4H) output: the activated gates i, f, g, o of every step, contiguous
    seq_len,  # T
    n_batch,  # B
    hidden,  # H
    BLOCK_B: tl.constexpr,  # batch rows per program (>= 16: tl.dot's M)
    BLOCK_H: tl.constexpr,  # hidden units per tile (resident: the padded H)
    BLOCK_K: tl.constexpr,  # streamed: the chunk of H each dot reduces over
    HIDDEN_TILES: tl.constexpr,  # streamed: cdiv(H, BLOCK_H)
    K_TILES: tl.constexpr,  # streamed: cdiv(H, BLOCK_K)
    RESIDENT: tl.constexpr,  # W_hh, h and c kept on chip across steps (one tile of HP units)
    IS_FP64: tl.constexpr,  # compute in fp64, else fp32
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter (see cast_for_store)
):
    """The whole layer forward, h_t = LSTM(x_t, h_{t-1}, c_{t-1}) for t = 0 .. T-1, for the
    program's BLOCK_B batch rows: it owns every unit of its rows, so no step waits on another program."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BLOCK_B,)
    if RESIDENT:
        units = tl.arange(0, BLOCK_H)  # (HP,)
        cols, col_mask, is_g = _gate_cols(0, hidden, BLOCK_H)  # (4 HP,)
        row_mask = rows < n_batch
        gate_mask = row_mask[:, None] & col_mask[None, :]
        mask = row_mask[:, None] & (units < hidden)[None, :]
        gate_rows = _row_offsets(0, rows, n_batch, 4 * hidden)[:, None] + cols[None, :]  # (BLOCK_B, 4 HP)
        state_rows = _row_offsets(0, rows, n_batch, hidden)[:, None] + units[None, :]  # (BLOCK_B, HP)
        w_t = _w_gate_cols(w_ptr, cols, col_mask, units, hidden)  # (HP, 4 HP), on chip for the whole loop
        bias = _bias_cols(b_ih_ptr, b_hh_ptr, cols, col_mask, cdt)
        h = tl.load(h0_ptr + state_rows, mask=mask, other=0.0)
        c = tl.load(cs_ptr + state_rows, mask=mask, other=0.0).to(cdt)  # c0: row 0 of cs
        gate_stride = _row_offsets(1, 0, n_batch, 4 * hidden)  # B 4H elements per step, int64
        state_stride = _row_offsets(1, 0, n_batch, hidden)  # B H
        args = (xg_ptr, y_ptr, cs_ptr, gates_ptr, gate_rows, state_rows, gate_mask, mask, is_g, gate_stride,
                state_stride, w_t, bias)  # fmt: skip
        block_loop(_resident_fwd_step, (h, c), args, 0, seq_len, 1, (BLOCK_B, BLOCK_H, IS_FP64, INTERPRETED),
                   INTERPRETED)  # fmt: skip
    else:
        args = (xg_ptr, w_ptr, b_ih_ptr, b_hh_ptr, y_ptr, cs_ptr, gates_ptr, rows, n_batch, hidden, seq_len)
        _streamed_fwd_body(h0_ptr, 0, args, (BLOCK_B, BLOCK_H, BLOCK_K, HIDDEN_TILES, K_TILES, IS_FP64, INTERPRETED))
        block_loop(_streamed_fwd_step, (tl.program_id(0) * 0,), args, 1, seq_len, 1,
                   (BLOCK_B, BLOCK_H, BLOCK_K, HIDDEN_TILES, K_TILES, IS_FP64, INTERPRETED), INTERPRETED)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Backward through time
# --------------------------------------------------------------------------------------------


@device_function
def _resident_bwd_step(state, args, s, FLAGS: tl.constexpr):
    """Step t = T - 1 - s of the resident backward; a ``block_loop`` step.

    state: (dh_rec, dc), (BLOCK_B, HP), compute dtype: the gradient reaching h_t through step t+1
        (dgates_{t+1} W_hh; dh_n at t = T - 1) and the gradient reaching c_t.
    args: (dy_ptr, gates_ptr, cs_ptr, dgates_ptr, gate_rows, state_rows, gate_mask, mask, gate_stride,
        state_stride, seq_len, w): the offsets, masks and strides as in ``_resident_fwd_step``; W_hh at
        the gate columns (4 HP, HP).
    FLAGS: (BLOCK_B, BLOCK_H, HAS_DY, IS_FP64, INTERPRETED).
    """
    BLOCK_B: tl.constexpr = FLAGS[0]
    BLOCK_H: tl.constexpr = FLAGS[1]
    HAS_DY: tl.constexpr = FLAGS[2]
    IS_FP64: tl.constexpr = FLAGS[3]
    INTERPRETED: tl.constexpr = FLAGS[4]
    cdt = tl.float64 if IS_FP64 else tl.float32
    dh_rec, dc = state
    dy_ptr, gates_ptr, cs_ptr, dgates_ptr, gate_rows, state_rows, gate_mask, mask, gate_stride, state_stride, seq_len, \
        w = args  # fmt: skip
    t = seq_len - 1 - s
    gate_step = t * gate_stride  # element offset of step t in a (T, B, 4H) tensor, int64
    state_step = t * state_stride  # ... in a (T, B, H) tensor; also c_{t-1}'s row of cs
    dh = dh_rec
    if HAS_DY:
        dh += tl.load(dy_ptr + state_step + state_rows, mask=mask, other=0.0).to(cdt)
    act = tl.load(gates_ptr + gate_step + gate_rows, mask=gate_mask, other=0.0).to(cdt)
    c_prev = tl.load(cs_ptr + state_step + state_rows, mask=mask, other=0.0).to(cdt)
    c = tl.load(cs_ptr + (state_step + state_stride) + state_rows, mask=mask, other=0.0).to(cdt)
    dgates, dc = _cell_backward(dh, dc, act, c, c_prev, BLOCK_B, BLOCK_H)
    dgates = cast_for_store(dgates, dgates_ptr.dtype.element_ty, INTERPRETED)  # the dot reads them as stored
    tl.store(dgates_ptr + gate_step + gate_rows, dgates, mask=gate_mask)
    return _dot(dgates, w, INTERPRETED), dc


@device_function
def _recurrent_grad(src_ptr, src_base, row_mask, w_ptr, units, unit_mask, hidden, BLOCK_B: tl.constexpr,
                    BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, K_TILES: tl.constexpr, cdt: tl.constexpr,
                    INTERPRETED: tl.constexpr):  # fmt: skip
    """dgates W_hh for ``units``: (BLOCK_B, BLOCK_H), summed over the 4H gate columns in chunks;
    src_base holds the element offsets of the program's rows of the (B, 4H) gradients."""
    acc = tl.full([BLOCK_B, BLOCK_H], 0.0, dtype=cdt)
    for kt in range(K_TILES):
        kk = kt * BLOCK_K + tl.arange(0, BLOCK_K)  # (BLOCK_K,) columns of the 4H gate gradients
        kk_mask = kk < 4 * hidden
        dg = tl.load(src_ptr + src_base[:, None] + kk[None, :], mask=row_mask[:, None] & kk_mask[None, :], other=0.0)
        w = tl.load(w_ptr + kk[:, None].to(tl.int64) * hidden + units[None, :],
                    mask=kk_mask[:, None] & unit_mask[None, :], other=0.0)  # fmt: skip
        acc += _dot(dg, w, INTERPRETED)
    return acc


@device_function
def _streamed_bwd_body(t, args, FLAGS: tl.constexpr):
    """Step t of the streamed backward over every tile of hidden units (FIRST: t = T - 1, where the
    gradient through step t+1 is dh_n); ends with the program's barrier.

    args: (dy_ptr, dh_n_ptr, w_ptr, gates_ptr, cs_ptr, dgates_ptr, dh0_ptr, dc_ptr, rows, n_batch, hidden,
        seq_len). FLAGS: (BLOCK_B, BLOCK_H, BLOCK_K, HIDDEN_TILES, K_TILES, FIRST, HAS_DY, HAS_DH_N,
        IS_FP64, INTERPRETED).
    """
    BLOCK_B: tl.constexpr = FLAGS[0]
    BLOCK_H: tl.constexpr = FLAGS[1]
    BLOCK_K: tl.constexpr = FLAGS[2]
    HIDDEN_TILES: tl.constexpr = FLAGS[3]
    K_TILES: tl.constexpr = FLAGS[4]
    FIRST: tl.constexpr = FLAGS[5]
    HAS_DY: tl.constexpr = FLAGS[6]
    HAS_DH_N: tl.constexpr = FLAGS[7]
    IS_FP64: tl.constexpr = FLAGS[8]
    INTERPRETED: tl.constexpr = FLAGS[9]
    cdt = tl.float64 if IS_FP64 else tl.float32
    dy_ptr, dh_n_ptr, w_ptr, gates_ptr, cs_ptr, dgates_ptr, dh0_ptr, dc_ptr, rows, n_batch, hidden, seq_len = args
    row_mask = rows < n_batch
    batch_base = _row_offsets(0, rows, n_batch, hidden)  # (BLOCK_B,) rows of the (B, H) tensors
    gate_base = _row_offsets(t, rows, n_batch, 4 * hidden)
    next_base = _row_offsets(t + 1, rows, n_batch, 4 * hidden)
    state_base = _row_offsets(t, rows, n_batch, hidden)  # also c_{t-1}'s rows in cs
    for ut in range(HIDDEN_TILES):
        units = ut * BLOCK_H + tl.arange(0, BLOCK_H)  # (BLOCK_H,)
        unit_mask = units < hidden
        cols, col_mask, is_g = _gate_cols(ut * BLOCK_H, hidden, BLOCK_H)  # (4 BLOCK_H,)
        mask = row_mask[:, None] & unit_mask[None, :]
        gate_mask = row_mask[:, None] & col_mask[None, :]
        batch_rows = batch_base[:, None] + units[None, :]  # (BLOCK_B, BLOCK_H)
        if FIRST:
            dh = tl.full([BLOCK_B, BLOCK_H], 0.0, dtype=cdt)
            if HAS_DH_N:
                dh += tl.load(dh_n_ptr + batch_rows, mask=mask, other=0.0).to(cdt)
        else:
            dh = _recurrent_grad(dgates_ptr, next_base, row_mask, w_ptr, units, unit_mask, hidden, BLOCK_B, BLOCK_H,
                                 BLOCK_K, K_TILES, cdt, INTERPRETED)  # fmt: skip
        state_rows = state_base[:, None] + units[None, :]
        if HAS_DY:
            dh += tl.load(dy_ptr + state_rows, mask=mask, other=0.0).to(cdt)
        gate_rows = gate_base[:, None] + cols[None, :]  # (BLOCK_B, 4 BLOCK_H)
        act = tl.load(gates_ptr + gate_rows, mask=gate_mask, other=0.0).to(cdt)
        c_prev = tl.load(cs_ptr + state_rows, mask=mask, other=0.0).to(cdt)
        c = tl.load(cs_ptr + state_rows + n_batch * hidden, mask=mask, other=0.0).to(cdt)
        dc = tl.load(dc_ptr + batch_rows, mask=mask, other=0.0).to(cdt)
        dgates, dc = _cell_backward(dh, dc, act, c, c_prev, BLOCK_B, BLOCK_H)
        tl.store(dgates_ptr + gate_rows, cast_for_store(dgates, dgates_ptr.dtype.element_ty, INTERPRETED),
                 mask=gate_mask)  # fmt: skip
        tl.store(dc_ptr + batch_rows, cast_for_store(dc, dc_ptr.dtype.element_ty, INTERPRETED), mask=mask)
    tl.debug_barrier()  # this step's gate gradients, stored by all of the program's threads, before step t-1 reads them


@device_function
def _streamed_bwd_step(state, args, s, FLAGS: tl.constexpr):
    """Step t = T - 1 - s (s >= 1) of the streamed backward; a ``block_loop`` step. state: (steps done,)."""
    (done,) = state
    seq_len = args[11]
    _streamed_bwd_body(seq_len - 1 - s, args, FLAGS)
    return (done + 1,)


@device_function
def _streamed_dh0(args, FLAGS: tl.constexpr):
    """dh0 = dgates_0 W_hh for every tile of hidden units (after the last step's barrier)."""
    BLOCK_B: tl.constexpr = FLAGS[0]
    BLOCK_H: tl.constexpr = FLAGS[1]
    BLOCK_K: tl.constexpr = FLAGS[2]
    HIDDEN_TILES: tl.constexpr = FLAGS[3]
    K_TILES: tl.constexpr = FLAGS[4]
    IS_FP64: tl.constexpr = FLAGS[8]
    INTERPRETED: tl.constexpr = FLAGS[9]
    cdt = tl.float64 if IS_FP64 else tl.float32
    dy_ptr, dh_n_ptr, w_ptr, gates_ptr, cs_ptr, dgates_ptr, dh0_ptr, dc_ptr, rows, n_batch, hidden, seq_len = args
    row_mask = rows < n_batch
    batch_base = _row_offsets(0, rows, n_batch, hidden)
    first_base = _row_offsets(0, rows, n_batch, 4 * hidden)
    for ut in range(HIDDEN_TILES):
        units = ut * BLOCK_H + tl.arange(0, BLOCK_H)
        unit_mask = units < hidden
        dh0 = _recurrent_grad(dgates_ptr, first_base, row_mask, w_ptr, units, unit_mask, hidden, BLOCK_B, BLOCK_H,
                              BLOCK_K, K_TILES, cdt, INTERPRETED)  # fmt: skip
        dh0 = cast_for_store(dh0, dh0_ptr.dtype.element_ty, INTERPRETED)
        tl.store(dh0_ptr + batch_base[:, None] + units[None, :], dh0, mask=row_mask[:, None] & unit_mask[None, :])


@triton.jit
def _lstm_persistent_bwd_kernel(
    dy_ptr,  # (T, B, H) gradient of the outputs h_t, contiguous (read when HAS_DY)
    dh_n_ptr,  # (B, H) gradient of h_n, contiguous (read when HAS_DH_N)
    w_ptr,  # (4H, H) W_hh, contiguous
    gates_ptr,  # (T, B, 4H) the forward's activated gates, contiguous
    cs_ptr,  # (T + 1, B, H) the forward's cell states (row 0: c0), contiguous
    dgates_ptr,  # (T, B, 4H) output: gradients of the gate pre-activations, contiguous
    dh0_ptr,  # (B, H) output: gradient of h0, contiguous
    dc_ptr,  # (B, H) in: gradient of c_n (zeros for none); out: gradient of c0 (the state dtype)
    seq_len,  # T
    n_batch,  # B
    hidden,  # H
    BLOCK_B: tl.constexpr,  # batch rows per program (>= 16: tl.dot's M)
    BLOCK_H: tl.constexpr,  # hidden units per tile (resident: the padded H)
    BLOCK_K: tl.constexpr,  # streamed: the chunk of the 4H gate columns each dot reduces over
    HIDDEN_TILES: tl.constexpr,  # streamed: cdiv(H, BLOCK_H)
    K_TILES: tl.constexpr,  # streamed: cdiv(4H, BLOCK_K)
    RESIDENT: tl.constexpr,  # W_hh, dh and dc kept on chip across steps (one tile of HP units)
    HAS_DY: tl.constexpr,  # dy given (else zero)
    HAS_DH_N: tl.constexpr,  # dh_n given (else zero)
    IS_FP64: tl.constexpr,  # compute in fp64, else fp32
    INTERPRETED: tl.constexpr,  # running under Triton's interpreter (see cast_for_store)
):
    """Backward through time of the whole layer for the program's BLOCK_B batch rows: steps
    T - 1 .. 0, each one's gate gradients feeding the next through W_hh, no other program involved."""
    cdt = tl.float64 if IS_FP64 else tl.float32
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # (BLOCK_B,)
    if RESIDENT:
        units = tl.arange(0, BLOCK_H)  # (HP,)
        unit_mask = units < hidden
        cols, col_mask, is_g = _gate_cols(0, hidden, BLOCK_H)  # (4 HP,)
        row_mask = rows < n_batch
        gate_mask = row_mask[:, None] & col_mask[None, :]
        mask = row_mask[:, None] & unit_mask[None, :]
        gate_rows = _row_offsets(0, rows, n_batch, 4 * hidden)[:, None] + cols[None, :]  # (BLOCK_B, 4 HP)
        state_rows = _row_offsets(0, rows, n_batch, hidden)[:, None] + units[None, :]  # (BLOCK_B, HP)
        w = tl.load(w_ptr + cols[:, None].to(tl.int64) * hidden + units[None, :],
                    mask=col_mask[:, None] & unit_mask[None, :], other=0.0)  # (4 HP, HP), on chip for the whole loop
        dh_rec = tl.full([BLOCK_B, BLOCK_H], 0.0, dtype=cdt)
        if HAS_DH_N:
            dh_rec += tl.load(dh_n_ptr + state_rows, mask=mask, other=0.0).to(cdt)
        dc = tl.load(dc_ptr + state_rows, mask=mask, other=0.0).to(cdt)
        gate_stride = _row_offsets(1, 0, n_batch, 4 * hidden)  # B 4H elements per step, int64
        state_stride = _row_offsets(1, 0, n_batch, hidden)  # B H
        args = (dy_ptr, gates_ptr, cs_ptr, dgates_ptr, gate_rows, state_rows, gate_mask, mask, gate_stride,
                state_stride, seq_len, w)  # fmt: skip
        dh_rec, dc = block_loop(_resident_bwd_step, (dh_rec, dc), args, 0, seq_len, 1,
                                (BLOCK_B, BLOCK_H, HAS_DY, IS_FP64, INTERPRETED), INTERPRETED)  # fmt: skip
        tl.store(dh0_ptr + state_rows, cast_for_store(dh_rec, dh0_ptr.dtype.element_ty, INTERPRETED), mask=mask)
        tl.store(dc_ptr + state_rows, cast_for_store(dc, dc_ptr.dtype.element_ty, INTERPRETED), mask=mask)
    else:
        args = (dy_ptr, dh_n_ptr, w_ptr, gates_ptr, cs_ptr, dgates_ptr, dh0_ptr, dc_ptr, rows, n_batch, hidden, seq_len)
        _streamed_bwd_body(seq_len - 1, args, (BLOCK_B, BLOCK_H, BLOCK_K, HIDDEN_TILES, K_TILES, True, HAS_DY, HAS_DH_N,
                                               IS_FP64, INTERPRETED))  # fmt: skip
        block_loop(_streamed_bwd_step, (tl.program_id(0) * 0,), args, 1, seq_len, 1,
                   (BLOCK_B, BLOCK_H, BLOCK_K, HIDDEN_TILES, K_TILES, False, HAS_DY, HAS_DH_N, IS_FP64, INTERPRETED),
                   INTERPRETED)  # fmt: skip
        _streamed_dh0(args, (BLOCK_B, BLOCK_H, BLOCK_K, HIDDEN_TILES, K_TILES, False, HAS_DY, HAS_DH_N, IS_FP64,
                             INTERPRETED))  # fmt: skip
