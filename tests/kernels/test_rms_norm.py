"""Parity tests of the RMSNorm kernels (replab_fast/kernels/rms_norm/) against the reference
``replab_fast.models.llama.RMSNorm`` (through ``rms_norm_ref``).

Tolerances.
- The reference runs on float64 copies of the inputs. float32: ``|fast - ref| <= 2e-6 * scale``
  elementwise, scale = max(1, max |ref|) of the tensor compared. Each output element is a few fp32
  roundings away from exact (the row's sum of squares, pairwise over at most 65536 terms, is
  relatively off by ~1e-7; the gradients' row dot products and dweight's sum over rows likewise),
  so errors stay below ~5e-7 * scale, while a wrong mask, stride or reduction is off by 1e-2 or more.
- float16 / bfloat16: the 2x rule. The fast path's max abs error against the float64 reference is
  at most twice the error of the reference itself run at that dtype, plus a floor of
  1e-3 * scale (one half-ulp of fp16 at the scale of the tensor, for shapes where the reference
  happens to be nearly exact).
- float64 (the kernels compute in fp64 then): 1e-12, and gradcheck.

Every output is poisoned: ``torch.use_deterministic_algorithms`` makes every ``torch.empty`` the
kernels' launchers allocate come back filled with NaN, so an element a kernel fails to write
shows up as NaN.

The CPU cases run the Triton kernels through Triton's interpreter (slow: the shapes stay small,
but cover the awkward ones); the CUDA cases are skipped where there is no CUDA device.
"""

import pytest
import torch

from replab_fast import ops
from support import DEVICES, assert_parity, hopper_toolchain_reason, local_memory_bytes, random_tensor
from replab_fast.kernels.rms_norm.launch import RMSNormConfig, rms_norm_backward, rms_norm_forward
from replab_fast.kernels.rms_norm.reference import rms_norm_ref, rms_norm_residual_ref

LOW = (torch.float16, torch.bfloat16)
EPS = 1e-5


def check(name, fast, ref64, ref_low=None):
    assert_parity(name, fast, ref64, ref_low, fp32_rtol=2e-6)


def run_and_compare(x, weight, *, residual=None, eps=EPS, seed=0):
    """Forward and backward of the fast op against the reference (float64 and at x's dtype)."""
    dtype = x.dtype
    leaves = [x, weight] + ([residual] if residual is not None else [])
    copies64 = [t.detach().double().requires_grad_() for t in leaves]
    copies_low = [t.detach().clone().requires_grad_() for t in leaves]

    def forward(tensors, fast):
        if residual is None:
            xx, ww = tensors
            y = ops.rms_norm(xx, ww, eps) if fast else rms_norm_ref(xx, ww, eps)
            return [y]
        xx, ww, rr = tensors
        y, h = ops.rms_norm_residual(xx, rr, ww, eps) if fast else rms_norm_residual_ref(xx, rr, ww, eps)
        return [y, h]

    outs = forward(leaves, True)
    outs64 = forward(copies64, False)
    outs_low = forward(copies_low, False)
    assert outs[0].dtype == torch.promote_types(dtype, weight.dtype)
    for i, (o, o64, olow) in enumerate(zip(outs, outs64, outs_low)):
        check(f"output {i}", o, o64, olow)
    grads = [random_tensor(o.shape, o.dtype, o.device, seed + 100 + i) for i, o in enumerate(outs)]
    torch.autograd.backward(outs, grads)
    torch.autograd.backward(outs64, [g.double() for g in grads])
    torch.autograd.backward(outs_low, grads)
    for name, t, t64, tlow in zip(("x", "weight", "residual"), leaves, copies64, copies_low):
        check(f"grad {name}", t.grad, t64.grad, tlow.grad)


# --------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 127, 1000, 4097])
@pytest.mark.parametrize("lead", [(3,), (2, 5)], ids=["rows3", "2x5"])
def test_rms_norm_matches_reference(lead, n, dtype, device):
    x = random_tensor((*lead, n), dtype, device, seed=n, requires_grad=True, scale=2.0, shift=0.5)
    weight = random_tensor((n,), dtype, device, seed=n + 1, requires_grad=True, scale=0.2, shift=1.0)
    run_and_compare(x, weight, seed=n)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 127, 1000, 4097])
def test_rms_norm_residual_matches_reference(n, dtype, device):
    x = random_tensor((2, 3, n), dtype, device, seed=n, requires_grad=True)
    residual = random_tensor((2, 3, n), dtype, device, seed=n + 2, requires_grad=True, scale=3.0)
    weight = random_tensor((n,), dtype, device, seed=n + 1, requires_grad=True, scale=0.2, shift=1.0)
    run_and_compare(x, weight, residual=residual, seed=n)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("n", [16384, 65536])  # the widest one-pass row; a row processed in chunks
def test_wide_rows(n, dtype, device):
    x = random_tensor((2, n), dtype, device, seed=1, requires_grad=True)
    weight = random_tensor((n,), dtype, device, seed=2, requires_grad=True, scale=0.2, shift=1.0)
    run_and_compare(x, weight)


@pytest.mark.parametrize("device", DEVICES)
def test_wide_rows_with_residual(device):
    x = random_tensor((2, 40000), torch.float32, device, seed=1, requires_grad=True)
    residual = random_tensor((2, 40000), torch.float32, device, seed=3, requires_grad=True)
    weight = random_tensor((40000,), torch.float32, device, seed=2, requires_grad=True, shift=1.0)
    run_and_compare(x, weight, residual=residual)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_many_rows(dtype, device):
    """Enough rows that each backward program walks several tiles and dweight sums many partials."""
    x = random_tensor((4, 129, 64), dtype, device, seed=5, requires_grad=True, scale=3.0)
    weight = random_tensor((64,), dtype, device, seed=6, requires_grad=True, shift=1.0)
    run_and_compare(x, weight)


@pytest.mark.parametrize("device", DEVICES)
def test_single_row_and_single_element(device):
    run_and_compare(random_tensor((1, 300), torch.float32, device, 7, requires_grad=True),
                    random_tensor((300,), torch.float32, device, 8, requires_grad=True, shift=1.0))
    run_and_compare(random_tensor((300,), torch.float32, device, 9, requires_grad=True),  # 1-d x: one row
                    random_tensor((300,), torch.float32, device, 10, requires_grad=True, shift=1.0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 64), (2, 0, 64), (3, 0)])
def test_empty(shape, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    weight = torch.randn(shape[-1], device=device, requires_grad=True)
    y = ops.rms_norm(x, weight, EPS)
    assert y.shape == x.shape and y.dtype == x.dtype
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert weight.grad.shape == weight.shape and not weight.grad.any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "view", ["row_slice", "transposed", "strided_last_dim", "strided_weight"],
)
def test_non_contiguous(view, dtype, device):
    n = 96
    base = random_tensor((4, 6, 2 * n), dtype, device, seed=11, scale=2.0)
    weight = random_tensor((n,), dtype, device, seed=12, scale=0.2, shift=1.0)
    if view == "row_slice":  # rows of a wider tensor: read in place through the row stride
        x = base[:, :, :n]
    elif view == "transposed":  # leading dims that do not collapse to one stride: copied
        x = base[:, :, :n].transpose(0, 1)
    elif view == "strided_last_dim":  # every other column: copied
        x = base[:, :, ::2]
    else:
        x = base[:, :, :n].contiguous()
        weight = random_tensor((2 * n,), dtype, device, seed=13, scale=0.2, shift=1.0)[::2]
    assert not (x.is_contiguous() and weight.is_contiguous())
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    run_and_compare(x, weight)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_residual_and_grads(device):
    n = 64
    x = random_tensor((3, 2 * n), torch.float32, device, 14)[:, :n].detach().requires_grad_()
    residual = random_tensor((2 * n, 3), torch.float32, device, 15).t()[:, :n].detach().requires_grad_()
    weight = random_tensor((n,), torch.float32, device, 16, shift=1.0, requires_grad=True)
    run_and_compare(x, weight, residual=residual)
    # A strided incoming gradient (e.g. from a slice): same result as a contiguous one.
    y = ops.rms_norm(x, weight, EPS)
    dy = random_tensor((3, 2 * n), torch.float32, device, 17)[:, ::2]
    dx, dw = torch.autograd.grad(y, (x, weight), dy)
    dx2, dw2 = torch.autograd.grad(ops.rms_norm(x, weight, EPS), (x, weight), dy.contiguous())
    torch.testing.assert_close(dx, dx2, rtol=0, atol=0)
    torch.testing.assert_close(dw, dw2, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_dtypes_follow_the_reference(device):
    """bfloat16 activations with a float32 weight (autocast-style): float32 output, as the reference."""
    x = random_tensor((4, 200), torch.bfloat16, device, 18, requires_grad=True)
    weight = random_tensor((200,), torch.float32, device, 19, requires_grad=True, shift=1.0)
    y = ops.rms_norm(x, weight, EPS)
    assert y.dtype == torch.float32
    y64 = rms_norm_ref(x.detach().double(), weight.detach().double(), EPS)
    assert (y.double() - y64).abs().max() < 1e-5  # one fp32 rounding of an exact-in-bf16 input
    y.sum().backward()
    assert x.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.float32


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("residual", [False, True])
def test_forced_configs_cover_every_path(residual, device):
    """Chunked rows, many rows per program, and persistent programs walking several tiles, forced
    at small sizes so that the interpreter covers the code paths a GPU takes at large ones."""
    n, rows = 1000, 19
    x = random_tensor((rows, n), torch.float32, device, 20)
    res = random_tensor((rows, n), torch.float32, device, 21) if residual else None
    weight = random_tensor((n,), torch.float32, device, 22, shift=1.0)
    dy = random_tensor((rows, n), torch.float32, device, 23)
    dres = random_tensor((rows, n), torch.float32, device, 24) if residual else None
    h64 = x.double() + (res.double() if residual else 0)
    y64 = rms_norm_ref(h64, weight.double(), EPS)
    h64r = h64.clone().requires_grad_()
    w64r = weight.double().requires_grad_()
    dx64, dw64 = torch.autograd.grad(rms_norm_ref(h64r, w64r, EPS), (h64r, w64r), dy.double())
    if residual:
        dx64 = dx64 + dres.double()
    for cfg in [RMSNormConfig(block_m=4, block_n=256, num_warps=4, programs=3),  # 4 chunks: row statistics kernel
                RMSNormConfig(block_m=8, block_n=1024, num_warps=4, programs=2),  # one block, 3 tiles per program
                RMSNormConfig(block_m=2, block_n=512, num_warps=4, programs=4)]:  # two blocks by one program
        y, h = rms_norm_forward(x, weight, EPS, res, config=cfg)
        check("y", y, y64)
        if residual:
            check("h", h, h64)
        dx, dw = rms_norm_backward(dy, h if residual else x, weight, EPS, dres, config=cfg)
        check("dx", dx, dx64)
        check("dweight", dw, dw64)


@pytest.mark.parametrize("device", DEVICES)
def test_float64_gradcheck(device):
    x = torch.randn(3, 7, dtype=torch.float64, device=device, requires_grad=True)
    r = torch.randn(3, 7, dtype=torch.float64, device=device, requires_grad=True)
    w = (1 + 0.1 * torch.randn(7, dtype=torch.float64, device=device)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: ops.rms_norm(a, b, EPS), (x, w))
    assert torch.autograd.gradcheck(lambda a, b, c: ops.rms_norm_residual(a, b, c, EPS), (x, r, w))


def test_poisoning_is_active():
    assert torch.isnan(torch.empty(8)).all()  # the premise of every "no NaN" check above


# --------------------------------------------------------------------------------------------
# torch.library: opcheck, torch.compile
# --------------------------------------------------------------------------------------------


def opcheck_cases(device):
    x = torch.randn(3, 5, 48, device=device, requires_grad=True)
    r = torch.randn(3, 5, 48, device=device, requires_grad=True)
    w = torch.randn(48, device=device, requires_grad=True)
    dy = torch.randn(3, 5, 48, device=device)
    return [
        (torch.ops.replab_fast.rms_norm.default, (x, w, EPS)),
        (torch.ops.replab_fast.rms_norm.default, (x.detach().bfloat16(), w.detach().bfloat16(), EPS)),
        (torch.ops.replab_fast.rms_norm_residual.default, (x, r, w, EPS)),
        (torch.ops.replab_fast.rms_norm_backward.default, (dy, x.detach(), w.detach(), EPS, None)),
        (torch.ops.replab_fast.rms_norm_backward.default, (dy, x.detach(), w.detach(), EPS, dy * 2)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    for op, args in opcheck_cases(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", DEVICES)
def test_compiles_without_graph_breaks(device):
    from torch._dynamo.testing import CompileCounterWithBackend

    def f(x, r, w):
        y = ops.rms_norm(x, w, EPS)
        y2, h = ops.rms_norm_residual(x, r, w, EPS)
        return (y * y2).sum() + h.square().sum()

    x = torch.randn(2, 3, 40, device=device, requires_grad=True)
    r = torch.randn(2, 3, 40, device=device, requires_grad=True)
    w = torch.randn(40, device=device, requires_grad=True)
    # CPU: aot_eager (AOTAutograd + functionalization, as Inductor sees it, without C++ codegen time).
    counter = CompileCounterWithBackend("inductor" if device == "cuda" else "aot_eager")
    torch._dynamo.reset()
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    out = compiled(x, r, w)
    grads = torch.autograd.grad(out, (x, r, w))
    expected = f(x, r, w)
    expected_grads = torch.autograd.grad(expected, (x, r, w))
    assert counter.frame_count == 1
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make_args,error,match",
    [
        (lambda: (torch.randn(2, 8), torch.randn(7)), ValueError, r"weight must have shape \(N,\) = \(8,\).*\(7,\)"),
        (lambda: (torch.randn(2, 8), torch.randn(2, 8)), ValueError, "weight must have shape"),
        (lambda: (torch.tensor(1.0), torch.randn(1)), ValueError, "0-d"),
        (lambda: (torch.randint(0, 3, (2, 8)), torch.randn(8)), TypeError, "got x of dtype torch.int64"),
        (lambda: (torch.randn(2, 8), torch.randn(8, device="meta")), ValueError, "x is on cpu but weight is on meta"),
        (lambda: (torch.randn(2, 8, device="meta"), torch.randn(8, device="meta")), ValueError, "run on CUDA devices"),
    ],
)
def test_bad_input_is_a_clear_error(make_args, error, match):
    x, w = make_args()
    with pytest.raises(error, match=match):
        ops.rms_norm(x, w, EPS)


def test_bad_residual_and_eps():
    x, w = torch.randn(2, 8), torch.randn(8)
    with pytest.raises(ValueError, match="residual must have x's shape"):
        ops.rms_norm_residual(x, torch.randn(2, 7), w, EPS)
    with pytest.raises(TypeError, match="x and residual must have one dtype"):
        ops.rms_norm_residual(x, torch.randn(2, 8, dtype=torch.float64), w, EPS)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        ops.rms_norm(x, w, -1.0)


# --------------------------------------------------------------------------------------------
# The compiled (CUDA) path, built for Hopper without a GPU
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "dtype,n,spill_free",
    [(torch.bfloat16, 1024, True), (torch.bfloat16, 16384, True), (torch.bfloat16, 65536, True),
     (torch.float32, 4096, True), (torch.float32, 16384, False), (torch.float64, 100, True)],
)  # fmt: skip
def test_compiled_path_builds_for_hopper(dtype, n, spill_free):
    """Every kernel launch the CUDA path makes (block sizes as for an H100) compiles for sm_90 with
    this triton, loads 16 bytes per access, and (where noted) keeps everything in registers.
    float32 at N = 16384: the backward's two-block path spills ~40 bytes per thread (measured)."""
    from replab_fast.kernels._triton import compile_for_cuda, record_launches

    reason = hopper_toolchain_reason()
    if reason:
        pytest.skip(reason)
    x = torch.empty(64, n, dtype=dtype)  # block sizes depend on N; the row count only sizes the grid
    w = torch.empty(n, dtype=dtype)
    with record_launches(sm_count=132) as launches:
        rms_norm_forward(x, w, EPS)
        rms_norm_forward(x, w, EPS, x)
        rms_norm_backward(x, x, w, EPS)
        rms_norm_backward(x, x, w, EPS, x)
    names = {launch.kernel.fn.__name__ for launch in launches}
    assert {"_rms_norm_fwd_kernel", "_rms_norm_bwd_kernel", "_rms_norm_dw_kernel"} <= names
    for launch in launches:
        compiled = compile_for_cuda(launch, capability=90)
        name = launch.kernel.fn.__name__
        if dtype != torch.float64 and name != "_rms_norm_dw_kernel":  # the (P, N) partials: small, fp32
            assert "ld.global.v4" in compiled.asm["ptx"] or "ld.global.nc.v4" in compiled.asm["ptx"], name
        stack = local_memory_bytes(compiled)
        if spill_free and stack is not None:
            assert stack == 0, f"{name} spills {stack} bytes per thread"
