"""Parity tests of the LSTM kernels (replab_fast/kernels/lstm/) against the reference
``replab_fast.models.lstm`` (its ``lstm_cell``, and a one-layer ``LSTM`` through ``lstm_layer_ref``).

Tolerances.
- The reference runs on float64 copies of every input (the truth) and on copies at the dtype
  under test. float64: within 1e-12 x scale (scale = max(1, max |ref|) of the tensor compared):
  both sides in float64, they differ in summation order only.
- float32, float16, bfloat16: the 2x rule (``replab_fast.parity``): the kernel's max abs error
  against the float64 reference at most twice the error of the reference itself run at that
  dtype, plus a floor (1e-5 x scale for float32, 1e-3 x scale for 16-bit). This on the outputs
  (y, h_n, c_n) and on every gradient (x, h0, c0, both weights, both biases).
- Saturated gates (pre-activations of +-1e4): finite everywhere, and the same rule.
Every output is poisoned (tests/kernels/conftest.py: each ``torch.empty`` is NaN-filled), so an
element a kernel does not write fails. The CPU runs the kernels through Triton's interpreter
(~10 ms per time step at these sizes): the shapes stay small, and the three paths of a layer
(persistent resident, persistent streamed over several tiles of units, per step) are forced
with small blocks where the op would choose one of them by itself.
"""

import pytest
import torch
import triton
import triton.language as tl

from replab_fast import ops
from replab_fast.kernels._triton import interpreted
from replab_fast.kernels.lstm import PERSISTENT_MAX_HIDDEN
from replab_fast.kernels.lstm.kernel import _row_offsets
from replab_fast.kernels.lstm.launch import LSTMConfig, lstm_backward, lstm_config, lstm_forward
from replab_fast.kernels.lstm.reference import lstm_cell_ref, lstm_layer_ref
from support import DEVICES, assert_parity, hopper_toolchain_reason, local_memory_bytes, random_tensor

DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
NAMES = ("x", "h0", "c0", "weight_ih", "weight_hh", "bias_ih", "bias_hh")
# Forced paths at small sizes (the op itself runs the resident kernels below H = 256 on a CPU).
PATHS = {
    "resident": LSTMConfig(True, block_b=16, block_h=32),
    "streamed": LSTMConfig(True, block_b=16, block_h=16, block_k=16),  # H = 20: 2 tiles of units, 2 (5) K chunks
    "per_step": LSTMConfig(False, block_b=2, block_h=16),  # 2 x 2 programs per step
}


def check(name, fast, ref64, ref_low):
    assert_parity(name, fast, ref64, ref_low if fast.dtype != torch.float64 else None)


def make_leaves(T, B, I, H, dtype, device, seed, *, bias_scale=0.5):
    """x (T, B, I), h0 and c0 (B, H), weights and biases as the reference draws them (scale ~1/sqrt(H))."""
    w = 1.0 / H**0.5
    shapes = [((T, B, I), 1.0), ((B, H), 0.5), ((B, H), 1.0), ((4 * H, I), w), ((4 * H, H), w), ((4 * H,), bias_scale),
              ((4 * H,), bias_scale)]  # fmt: skip
    return [random_tensor(s, dtype, device, seed + k, scale=sc, requires_grad=True) for k, (s, sc) in enumerate(shapes)]


class _LayerWithConfig(torch.autograd.Function):
    """The launchers with a forced config (the op picks its own), for path coverage."""

    @staticmethod
    def forward(ctx, cfg, x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        y, h_n, c_n, gates, cs = lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, config=cfg)
        ctx.save_for_backward(x, h0, w_ih, w_hh, y, gates, cs)
        ctx.cfg = cfg
        return y, h_n, c_n

    @staticmethod
    def backward(ctx, dy, dh_n, dc_n):
        x, h0, w_ih, w_hh, y, gates, cs = ctx.saved_tensors
        dx, dh0, dc0, dw_ih, dw_hh, db = lstm_backward(dy, dh_n, dc_n, x, h0, w_ih, w_hh, y, gates, cs, config=ctx.cfg)
        return None, dx, dh0, dc0, dw_ih, dw_hh, db, db


def layer_fn(path):
    if path == "op":
        return ops.lstm
    return lambda *leaves: _LayerWithConfig.apply(PATHS[path], *leaves)


def compare_layer(leaves, fn, seed, *, used=(True, True, True)):
    """``fn`` (x, h0, c0, w_ih, w_hh, b_ih, b_hh -> y, h_n, c_n) against the reference in float64 and
    at the leaves' dtype: the outputs and every gradient, with the outputs in ``used`` given a gradient."""
    copies64 = [t.detach().double().requires_grad_() for t in leaves]
    copies_low = [t.detach().clone().requires_grad_() for t in leaves]
    outs = fn(*leaves)
    outs64 = lstm_layer_ref(*copies64)
    outs_low = lstm_layer_ref(*copies_low)
    for name, o, o64, olow in zip(("y", "h_n", "c_n"), outs, outs64, outs_low):
        assert o.dtype == leaves[0].dtype and o.is_contiguous()
        check(name, o, o64, olow)
    picked = [k for k in range(3) if used[k]]
    grads = [random_tensor(outs[k].shape, outs[k].dtype, outs[k].device, seed + 50 + k) for k in picked]
    torch.autograd.backward([outs[k] for k in picked], grads)
    torch.autograd.backward([outs64[k] for k in picked], [g.double() for g in grads])
    torch.autograd.backward([outs_low[k] for k in picked], grads)
    for name, t, t64, tlow in zip(NAMES, leaves, copies64, copies_low):
        check(f"grad {name}", t.grad, t64.grad, tlow.grad)


# --------------------------------------------------------------------------------------------
# A layer: every path, every dtype, every gradient
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("path", ["op", "streamed", "per_step"])
def test_layer_matches_reference(path, dtype, device):
    """T = 7, B = 3, input 10, H = 20 (no power of two): outputs and all seven gradients."""
    leaves = make_leaves(7, 3, 10, 20, dtype, device, seed=1)
    compare_layer(leaves, layer_fn(path), seed=1)


AWKWARD = {
    # name: (T, B, input, H), forced config (None: the op's own)
    "T1-B1-I1-H1": ((1, 1, 1, 1), None),
    "T1-streamed": ((1, 4, 3, 20), PATHS["streamed"]),
    "B1-H17-per-step": ((5, 1, 6, 17), PATHS["per_step"]),
    "B33-three-programs": ((4, 33, 5, 12), LSTMConfig(True, block_b=16, block_h=16)),  # the last one partial
    "H40-two-tiles-of-32": ((3, 2, 24, 40), LSTMConfig(True, block_b=16, block_h=32, block_k=32)),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(AWKWARD), ids=list(AWKWARD))
def test_awkward_shapes(case, device):
    """One step, one sequence, one unit, a batch over three programs, H just past a tile."""
    (T, B, I, H), cfg = AWKWARD[case]
    leaves = make_leaves(T, B, I, H, torch.float32, device, seed=T * 100 + H)
    fn = ops.lstm if cfg is None else (lambda *ls: _LayerWithConfig.apply(cfg, *ls))
    compare_layer(leaves, fn, seed=H)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_long_sequence(dtype, device):
    """T = 300 steps at H = 8 through the op's own path: the recurrence carried the whole way."""
    leaves = make_leaves(300, 2, 4, 8, dtype, device, seed=3)
    compare_layer(leaves, ops.lstm, seed=3)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("path", ["streamed", "per_step"])
def test_long_sequence_other_paths(path, device):
    leaves = make_leaves(120, 2, 4, 20, torch.float32, device, seed=4)
    compare_layer(leaves, layer_fn(path), seed=4)


@pytest.mark.parametrize("device", DEVICES)
def test_wide_hidden_runs_per_step(device):
    """H = 300 pads to 512 > PERSISTENT_MAX_HIDDEN: the op goes per step by itself."""
    assert not lstm_config(2, 300, torch.float32, torch.device(device)).persistent
    leaves = make_leaves(3, 2, 8, 300, torch.float32, device, seed=5)
    compare_layer(leaves, ops.lstm, seed=5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("used", [(False, True, False), (True, False, False), (False, False, True)],
                         ids=["h_n-only", "y-only", "c_n-only"])  # fmt: skip
def test_unused_outputs_get_no_gradient(used, device):
    """Only h_n used (the classifier), only y, only c_n: the kernels take the missing gradients as zero."""
    for path in ("op", "streamed", "per_step"):
        leaves = make_leaves(4, 3, 5, 20, torch.float64, device, seed=6)
        compare_layer(leaves, layer_fn(path), seed=6, used=used)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("path", ["op", "streamed", "per_step"])
def test_saturated_gates_stay_finite(path, dtype, device):
    """Pre-activations of +-1e4 (biases of +-1e4, representable in every dtype) and cell states of
    +-1e4 (c0): sigmoid and tanh saturate without inf or NaN, forward and backward, and still
    follow the reference."""
    leaves = make_leaves(3, 2, 4, 20, dtype, device, seed=7)
    signs = torch.where(torch.arange(80) % 3 == 0, -1.0, 1.0)
    with torch.no_grad():
        leaves[5].copy_(1e4 * signs)  # bias_ih
        leaves[2].copy_(1e4 * signs[:40].view(2, 20))  # c0: tanh(c_t) at |c_t| ~ 1e4 where f is open
    outs = layer_fn(path)(*leaves)
    assert all(torch.isfinite(o).all() for o in outs)
    sum(o.float().sum() for o in outs).backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)
    for t in leaves:
        t.grad = None
    compare_layer(leaves, layer_fn(path), seed=7)


@pytest.mark.parametrize("device", DEVICES)
def test_float64_gradcheck(device):
    leaves = [t.detach().requires_grad_() for t in make_leaves(3, 2, 3, 5, torch.float64, device, seed=8)]
    assert torch.autograd.gradcheck(lambda *ls: ops.lstm(*ls), leaves, fast_mode=True)
    assert torch.autograd.gradcheck(lambda *ls: layer_fn("streamed")(*ls), leaves, fast_mode=True)
    cell = [leaves[0][0].detach().requires_grad_()] + leaves[1:]
    assert torch.autograd.gradcheck(lambda *ls: ops.lstm_cell(*ls), cell, fast_mode=True)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    """B = 0: empty outputs and gradients of the right shapes, zero weight gradients."""
    leaves = make_leaves(3, 0, 5, 6, torch.float32, device, seed=12)
    y, h_n, c_n = ops.lstm(*leaves)
    assert y.shape == (3, 0, 6) and h_n.shape == c_n.shape == (0, 6)
    (y.sum() + h_n.sum() + c_n.sum()).backward()
    for t in leaves:
        assert t.grad.shape == t.shape
    assert not leaves[3].grad.any() and not leaves[5].grad.any()


def test_poisoning_is_active():
    assert torch.isnan(torch.empty(8)).all()  # the premise of every "no NaN" check above


# --------------------------------------------------------------------------------------------
# One step: lstm_cell
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", [(3, 10, 20), (1, 1, 1), (17, 5, 130)], ids=["B3-H20", "B1-H1", "B17-H130"])
def test_cell_matches_reference(shape, dtype, device):
    """(h', c') and the gradients of x, h, c, both weights and both biases (h' and c' both used)."""
    B, I, H = shape
    x, h, c, w_ih, w_hh, b_ih, b_hh = make_leaves(1, B, I, H, dtype, device, seed=B + H)
    leaves = [x.detach()[0].requires_grad_(), h, c, w_ih, w_hh, b_ih, b_hh]
    copies64 = [t.detach().double().requires_grad_() for t in leaves]
    copies_low = [t.detach().clone().requires_grad_() for t in leaves]
    outs = ops.lstm_cell(*leaves)
    outs64 = lstm_cell_ref(*copies64)
    outs_low = lstm_cell_ref(*copies_low)
    for name, o, o64, olow in zip(("h'", "c'"), outs, outs64, outs_low):
        assert o.dtype == dtype
        check(name, o, o64, olow)
    grads = [random_tensor(o.shape, dtype, device, seed=k) for k, o in enumerate(outs)]
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(outs64, [g.double() for g in grads])
    torch.autograd.backward(outs_low, grads)
    for name, t, t64, tlow in zip(("x", "h", "c", "weight_ih", "weight_hh", "bias_ih", "bias_hh"), leaves, copies64,
                                  copies_low):  # fmt: skip
        check(f"grad {name}", t.grad, t64.grad, tlow.grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def test_cell_saturated_gates_stay_finite(dtype, device):
    x, h, c, w_ih, w_hh, b_ih, b_hh = make_leaves(1, 4, 3, 20, dtype, device, seed=9)
    with torch.no_grad():  # i open, f closed, g at +1, o closed
        b_hh.copy_(1e4 * torch.tensor([1.0, -1.0, 1.0, -1.0]).repeat_interleave(20))
    h_next, c_next = ops.lstm_cell(x.detach()[0], h, c, w_ih, w_hh, b_ih, b_hh)
    assert torch.isfinite(h_next).all() and torch.isfinite(c_next).all()
    (h_next.float().sum() + c_next.float().sum()).backward()
    assert all(torch.isfinite(t.grad).all() for t in (h, c, w_ih, w_hh, b_ih, b_hh))
    # c' = f c + i g = 0 c + 1 * 1 and h' = o tanh(c') = 0, exactly: the saturated gates are exact
    torch.testing.assert_close(c_next, torch.ones_like(c_next), rtol=0, atol=0)
    torch.testing.assert_close(h_next, torch.zeros_like(h_next), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# int64 offsets
# --------------------------------------------------------------------------------------------


@triton.jit
def _offsets_kernel(out_ptr, step, n_batch, width):
    rows = tl.arange(0, 2)
    tl.store(out_ptr + rows, _row_offsets(step, rows, n_batch, width))


def test_row_offsets_are_int64():
    """``_row_offsets``, through which every kernel forms its (T, B, 4H) offsets, does not wrap at
    2^31: step 2^25 of rows 64 elements wide is element 2^31 exactly (int32 arithmetic gives -2^31)."""
    out = torch.zeros(2, dtype=torch.int64)
    interpreted(_offsets_kernel)[(1,)](out, 2**25, 1, 64)
    assert out.tolist() == [2**31, 2**31 + 64]
    interpreted(_offsets_kernel)[(1,)](out, 2**20, 256, 4096)  # T = 2^20, B = 256, H = 1024
    assert out.tolist() == [2**20 * 256 * 4096, (2**20 * 256 + 1) * 4096]


# --------------------------------------------------------------------------------------------
# torch.library: opcheck, torch.compile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    leaves = make_leaves(3, 2, 5, 12, torch.float32, device, seed=10)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = leaves
    torch.library.opcheck(torch.ops.replab_fast.lstm.default, tuple(leaves))
    low = tuple(t.detach().bfloat16().requires_grad_() for t in leaves)
    torch.library.opcheck(torch.ops.replab_fast.lstm.default, low)
    cell = (x.detach()[0].requires_grad_(), h0, c0, w_ih, w_hh, b_ih, b_hh)
    torch.library.opcheck(torch.ops.replab_fast.lstm_cell.default, cell)
    detached = [t.detach() for t in leaves]
    y, h_n, c_n, gates, cs = torch.ops.replab_fast.lstm(*detached)
    saved = (detached[0], detached[1], detached[3], detached[4], y, gates, cs)
    every = (torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n))
    for grads in (every, (None, every[1], None)):
        torch.library.opcheck(torch.ops.replab_fast.lstm_backward.default, (*grads, *saved))
    h1, c1, g1 = torch.ops.replab_fast.lstm_cell(*(t.detach() for t in cell))
    args = (torch.randn_like(h1), None, cell[0].detach(), detached[1], detached[2], c1, g1, detached[3], detached[4])
    torch.library.opcheck(torch.ops.replab_fast.lstm_cell_backward.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_compiles_without_graph_breaks(device):
    from torch._dynamo.testing import CompileCounterWithBackend

    def f(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
        y, h_n, c_n = ops.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
        h1, c1 = ops.lstm_cell(x[0], h_n, c_n, w_ih, w_hh, b_ih, b_hh)
        return (y.sin().sum() + h1.square().sum()) * c1.mean()

    leaves = make_leaves(4, 2, 12, 12, torch.float32, device, seed=11)
    # CPU: aot_eager (AOTAutograd + functionalization, as Inductor sees it, without C++ codegen time).
    counter = CompileCounterWithBackend("inductor" if device == "cuda" else "aot_eager")
    torch._dynamo.reset()
    out = torch.compile(f, backend=counter, fullgraph=True)(*leaves)
    grads = torch.autograd.grad(out, leaves)
    expected = f(*leaves)
    expected_grads = torch.autograd.grad(expected, leaves)
    assert counter.frame_count == 1
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def _layer_args(T=3, B=2, I=5, H=4, **changes):
    args = dict(x=torch.randn(T, B, I), h0=torch.randn(B, H), c0=torch.randn(B, H), weight_ih=torch.randn(4 * H, I),
                weight_hh=torch.randn(4 * H, H), bias_ih=torch.randn(4 * H), bias_hh=torch.randn(4 * H))  # fmt: skip
    args.update(changes)
    return args


@pytest.mark.parametrize(
    "changes,error,match",
    [
        (dict(x=torch.randn(2, 5)), ValueError, r"expects x of shape \(T, B, input_size\)"),
        (dict(x=torch.randn(0, 2, 5)), ValueError, "T >= 1"),
        (dict(weight_hh=torch.randn(16, 5)), ValueError, r"weight_hh of shape \(4H, H\)"),
        (dict(weight_ih=torch.randn(16, 6)), ValueError,
         r"weight_ih of shape \(4H, input_size\) = \(16, 5\), got \(16, 6\)"),
        (dict(bias_hh=torch.randn(15)), ValueError, r"bias_hh of shape \(4H,\) = \(16,\), got \(15,\)"),
        (dict(h0=torch.randn(3, 4)), ValueError, r"h0 of shape \(B, H\) = \(2, 4\), got \(3, 4\)"),
        (dict(c0=torch.randn(2, 5)), ValueError, r"c0 of shape \(B, H\)"),
        (dict(weight_hh=torch.randn(16, 4, dtype=torch.float64)), TypeError,
         "one dtype, got x: torch.float32 and weight_hh: torch.float64"),
        (dict(x=torch.randint(0, 3, (3, 2, 5))), TypeError, "got x of dtype torch.int64"),
        (dict(bias_ih=torch.randn(16, device="meta")), ValueError, "x is on cpu but bias_ih is on meta"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error(changes, error, match):
    with pytest.raises(error, match=match):
        ops.lstm(**_layer_args(**changes))


def test_bad_cell_input_and_meta_tensors():
    a = _layer_args()
    with pytest.raises(ValueError, match=r"lstm_cell expects x of shape \(B, input_size\)"):
        ops.lstm_cell(a["x"], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"], a["bias_hh"])
    with pytest.raises(ValueError, match=r"lstm_cell expects h of shape \(B, H\)"):
        ops.lstm_cell(a["x"][0], a["h0"][:1], a["c0"], a["weight_ih"], a["weight_hh"], a["bias_ih"], a["bias_hh"])
    meta = {k: v.to("meta") for k, v in a.items()}
    with pytest.raises(ValueError, match="run on CUDA devices"):
        ops.lstm(**meta)


def test_bad_gradients_are_a_clear_error():
    a = _layer_args()
    y, h_n, c_n, gates, cs = torch.ops.replab_fast.lstm(*a.values())
    saved = (a["x"], a["h0"], a["weight_ih"], a["weight_hh"], y, gates, cs)
    with pytest.raises(ValueError, match=r"grad_y of shape \(its forward output's\) = \(3, 2, 4\), got \(3, 2, 5\)"):
        torch.ops.replab_fast.lstm_backward(torch.randn(3, 2, 5), None, None, *saved)
    with pytest.raises(TypeError, match="grad_c_n has unsupported dtype torch.int64"):
        torch.ops.replab_fast.lstm_backward(None, None, torch.zeros(2, 4, dtype=torch.long), *saved)
    h1, c1, g1 = torch.ops.replab_fast.lstm_cell(a["x"][0], a["h0"], a["c0"], a["weight_ih"], a["weight_hh"],
                                                 a["bias_ih"], a["bias_hh"])  # fmt: skip
    with pytest.raises(ValueError, match=r"grad_h of shape \(its forward output's\) = \(2, 4\), got \(4,\)"):
        torch.ops.replab_fast.lstm_cell_backward(torch.randn(4), None, a["x"][0], a["h0"], a["c0"], c1, g1,
                                                 a["weight_ih"], a["weight_hh"])  # fmt: skip


# --------------------------------------------------------------------------------------------
# The path and the compiled (CUDA) path, built for Hopper without a GPU
# --------------------------------------------------------------------------------------------


def test_config_table():
    """Persistent up to PERSISTENT_MAX_HIDDEN (padded), per step above; on CUDA, resident W_hh up to
    128 units in 16-bit and 32 in float32, streamed tiles above; the interpreter always resident."""
    from replab_fast.kernels._triton import record_launches

    cpu = torch.device("cpu")
    assert all(PERSISTENT_MAX_HIDDEN[d] == 256 for d in DTYPES)
    with record_launches():  # choose as for a CUDA device
        for dtype, resident_up_to in [(torch.bfloat16, 128), (torch.float16, 128), (torch.float32, 32)]:
            for H in (1, 17, 32, 64, 100, 128, 200, 256, 257, 1024):
                cfg = lstm_config(8, H, dtype, cpu)
                assert cfg.persistent == (H <= 256), (dtype, H)
                assert cfg.resident(H) == (H <= resident_up_to), (dtype, H)
                if cfg.persistent:
                    assert cfg.block_b == 16 and cfg.num_stages == 1
    for H in (1, 100, 256):
        assert lstm_config(3, H, torch.float32, cpu).resident(H)
    assert not lstm_config(3, 257, torch.float32, cpu).persistent


BENCH_CONFIGS = [(torch.bfloat16, 128), (torch.bfloat16, 256), (torch.bfloat16, 1024), (torch.float32, 128),
                 (torch.float32, 256), (torch.float32, 512), (torch.bfloat16, 64), (torch.float32, 32)]  # fmt: skip
SM90_SHARED_BYTES = 227 * 1024  # the most shared memory one block may use on an H100 / H200


# Spills measured with triton 3.6 (none with 3.9): the resident 16-bit kernels at H = 128, 8 to 24 bytes per thread.
TRITON_36_SPILLS = {(torch.bfloat16, 128): 24}


@pytest.mark.slow
@pytest.mark.parametrize("dtype,H", BENCH_CONFIGS, ids=[f"{str(d)[6:]}-H{h}" for d, h in BENCH_CONFIGS])
def test_compiled_path_builds_for_hopper(dtype, H):
    """Every launch of the CUDA path at the benchmarks' sizes (B = 1, which triton specializes, and
    B = 64; the block sizes depend on H and the dtype) compiles for sm_90 with this triton: no
    register spills (with triton 3.6: ``TRITON_36_SPILLS``), shared memory within the SM's limit,
    the 16-bit recurrent products on the tensor cores (mma.sync: tl.dot's M is the batch tile of
    16 rows, under wgmma's 64), and no software pipelining (cp.async) in the streamed kernels,
    whose loads must stay after their barrier."""
    import triton

    from replab_fast.kernels._triton import compile_for_cuda, record_launches

    reason = hopper_toolchain_reason()
    if reason:
        pytest.skip(reason)
    persistent = H <= 256
    expected = ["_lstm_persistent_bwd_kernel", "_lstm_persistent_fwd_kernel"] if persistent else [
        "_lstm_cell_bwd_kernel", "_lstm_cell_fwd_kernel"]  # fmt: skip
    old_triton = tuple(int(v) for v in triton.__version__.split(".")[:2]) < (3, 9)
    allowed = TRITON_36_SPILLS.get((dtype, H), 0) if old_triton else 0
    for B in (1, 64):
        T = 2  # T only sizes the loops and the per-step launches
        x, h0 = torch.empty(T, B, H, dtype=dtype), torch.empty(B, H, dtype=dtype)
        w, b = torch.empty(4 * H, H, dtype=dtype), torch.empty(4 * H, dtype=dtype)
        with record_launches(sm_count=132) as launches:
            y, h_n, c_n, gates, cs = lstm_forward(x, h0, h0, w, w, b, b)
            lstm_backward(y, h_n, c_n, x, h0, w, w, y, gates, cs)
        first = {launch.kernel.fn.__name__: launch for launch in reversed(launches)}  # one of each kernel
        assert sorted(first) == expected
        for name, launch in first.items():
            compiled = compile_for_cuda(launch, capability=90)
            ptx = compiled.asm["ptx"]
            if persistent and dtype == torch.bfloat16:
                assert "mma.sync" in ptx, f"{name}: no tensor-core mma in the PTX"
            if persistent and not launch.kwargs["RESIDENT"]:
                assert "cp.async" not in ptx, f"{name}: a load is pipelined across the step barrier"
            shared = compiled.metadata.shared
            assert shared <= SM90_SHARED_BYTES, f"{name} needs {shared} bytes of shared memory"
            stack = local_memory_bytes(compiled)
            if stack is not None:
                assert stack <= allowed, f"{name} (B = {B}) spills {stack} bytes per thread"
