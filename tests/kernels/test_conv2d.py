"""Parity tests of the fused conv2d (+ activation + pooling) of the C++/CUDA extension
(csrc/, replab_fast/kernels/conv2d/) against the independent
reference ``conv2d_ref``: torch.nn.functional.conv2d, then the activation, then
F.max_pool2d / F.avg_pool2d.

Tolerances.
- float64 (CPU, and CUDA): within 1e-12 x max(1, max |ref|) (``assert_parity``): both sides in
  fp64, they differ only in summation order (at most a few thousand terms here).
- float32: 2e-5 x max(1, max |ref|). An output (or grad_x) element sums C/g * R * S <= 150
  products, grad_weight and grad_bias sum N * OH * OW <= ~1000 (the CPU kernels accumulate those
  two in double, the CUDA kernels in fp32); relative fp32 error of such sums stays below ~1e-5,
  while a wrong index, mask or window is off by O(1).
- float16 / bfloat16 (CUDA only): the 2x rule of ``assert_parity`` against the reference run in
  that dtype (cuDNN there).
With a fused max pool the float64 reference takes each window's maximum where the kernel's own
pre-activation puts it (``max_pool_routing``): low-precision ties must not count as errors.
Every output is poisoned (tests/kernels/conftest.py): torch.empty, the C++ ``at::empty`` included,
returns NaN-filled memory, so an element a kernel never writes fails.
"""

from __future__ import annotations

import functools
import random
import re
import subprocess
import sys

import pytest
import torch

from replab_fast import _extension, ops
from replab_fast.kernels.conv2d.op import conv2d, normalize_pool, resolve_padding
from replab_fast.kernels.conv2d.reference import activation_ref, conv2d_ref
from support import assert_parity, random_tensor

CUDA_REASON = "needs a CUDA device (the extension's CUDA kernels); this machine has none"
ON_CUDA = pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)])
DEVICES = ["cpu", ON_CUDA]
FP32_RTOL = 2e-5

# (N, C, H, W, K, R, S, stride, padding, dilation, groups, activation, pool)
CASES = [
    (2, 3, 11, 13, 4, 3, 3, (2, 3), (1, 2), (1, 2), 1, "relu", ("max", 2, 2)),  # odd sizes, per-axis args
    (1, 4, 15, 15, 6, 5, 3, 1, 0, 1, 2, "scaled_tanh", ("avg", 3, 2)),  # batch 1, groups 2, overlapping avg
    (3, 2, 9, 9, 2, 3, 3, 4, 2, 1, 2, "tanh", None),  # stride 4, depthwise-like groups
    (2, 1, 32, 32, 6, 5, 5, 1, 0, 1, 1, "scaled_tanh", None),  # LeNet C1
    (2, 6, 14, 14, 16, 5, 5, 1, 0, 1, 1, "relu", ("max", 2, 2)),  # LeNet C3 (modern)
    (2, 3, 35, 35, 8, 11, 11, 4, 0, 1, 1, "relu", ("max", 3, 2)),  # AlexNet conv1 shape, overlapping max
    (2, 4, 13, 13, 6, 3, 3, 1, 1, 1, 2, "relu", ("max", 3, 2)),  # AlexNet conv5-like
    (2, 1, 28, 28, 4, 3, 3, 2, 1, 1, 1, "relu", None),  # conv autoencoder, stride 2
    (2, 5, 10, 12, 3, 2, 4, 3, (0, 3), (3, 1), 1, None, ("max", (2, 1), (1, 2))),  # rectangular everything
    (1, 2, 7, 7, 3, 7, 7, 1, 0, 1, 1, None, None),  # kernel == input: 1x1 output
    (2, 2, 8, 9, 2, 1, 1, 1, 0, 1, 1, None, ("avg", 2, 3)),  # 1x1 conv, pool stride > window
    (1, 3, 12, 11, 5, 3, 3, 2, 1, 2, 1, "relu", ("max", 3, 2)),  # one image, one group: the direct CPU loops
    (3, 16, 5, 5, 120, 5, 5, 1, 0, 1, 1, "scaled_tanh", None),  # LeNet C5: fewer pixels than channels
]
# The CPU kernels (csrc/conv2d_cpu_forward.cpp, conv2d_cpu_backward.cpp): the forward splits the output channels into blocks when there
# are fewer (image, group) pairs than threads (cases 1, 9, 11), runs "wide rows" for stride-1
# unpadded layers with OH * OW >= K / groups (cases 3, 4, 10), im2col + GEMM loops otherwise (inner
# loop over pixels, or over channels when OH * OW < K / groups: cases 9, 12); the backward takes
# direct loops for a single image (cases 1, 9, 11): the cases above cover every branch.
IDS = [f"case{i}" for i in range(len(CASES))]


def make_inputs(case, dtype, device, seed, *, bias=True, noncontiguous=False):
    N, C, H, W, K, R, S, stride, padding, dilation, groups, activation, pool = case
    if noncontiguous:  # a strided view: every other column of a wider tensor, channels permuted
        x = random_tensor((N, H, C, 2 * W), dtype, device, seed)[..., ::2].permute(0, 2, 1, 3)
        assert not x.is_contiguous()
        x.requires_grad_(True)
    else:
        x = random_tensor((N, C, H, W), dtype, device, seed, requires_grad=True)
    w = random_tensor((K, C // groups, R, S), dtype, device, seed + 1, requires_grad=True, scale=0.3)
    b = random_tensor((K,), dtype, device, seed + 2, requires_grad=True) if bias else None
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, activation=activation, pool=pool)
    return x, w, b, kwargs


def forward_backward(fn, x, w, b, kwargs, dy_seed):
    leaves = [t for t in (x, w, b) if t is not None]
    y = fn(x, w, b, **kwargs)
    dy = random_tensor(y.shape, y.dtype, y.device, dy_seed)
    grads = torch.autograd.grad(y, leaves, dy)
    return y, grads


def pair(v) -> list:
    """An int or pair argument as the op's int[2]."""
    return [v, v] if isinstance(v, int) else list(v)


def max_pool_routing(x, w, b, kwargs):
    """For a fused max pool: the position (flat in its OH x OW plane) that each window's gradient
    goes to, the first maximum of act(z) with z the fast path's own pre-activation; else None.

    The float64 reference takes its maximum at the same positions (``conv2d_ref_routed``). In
    float16 / bfloat16 two values of a window often round to a tie or swap order, and then the
    kernel and an independent float64 max pool send the gradient to different, equally right,
    elements: an O(1) difference that is not an error. Routing by the kernel's z keeps the check
    independent of the kernel's own pooling code (it uses only z, itself checked as y's source)."""
    kind, pool_kernel, pool_stride = normalize_pool(kwargs["pool"])
    if kind != "max":
        return None
    stride, dilation = pair(kwargs["stride"]), pair(kwargs["dilation"])
    padding, extra = resolve_padding(kwargs["padding"], w, stride, dilation)
    with torch.no_grad():
        if extra is not None:  # "same" with an even kernel: the functional pads x first
            x = torch.nn.functional.pad(x, (0, extra[1], 0, extra[0]))
        _, z = torch.ops.replab_fast.conv2d(
            x, w, b, stride, padding, dilation, kwargs["groups"], kwargs["activation"] or "none", kind, pool_kernel,
            pool_stride, True,
        )  # fmt: skip
        a = activation_ref(z.to(torch.promote_types(z.dtype, torch.float32)), kwargs["activation"])
        _, index = torch.nn.functional.max_pool2d(a, pool_kernel, pool_stride, return_indices=True)
    return index.cpu()


def conv2d_ref_routed(x, w, b, *, routing, pool, **kwargs):
    """conv2d_ref with the max pool taking each window's value at ``routing`` (max_pool_routing)."""
    a = conv2d_ref(x, w, b, pool=None, **kwargs)  # (N, K, OH, OW)
    return a.flatten(2).gather(2, routing.flatten(2)).view(routing.shape)


def check_case(case, dtype, device, *, seed=0, bias=True, noncontiguous=False):
    x, w, b, kwargs = make_inputs(case, dtype, device, seed, bias=bias, noncontiguous=noncontiguous)
    y, grads = forward_backward(conv2d, x, w, b, kwargs, seed + 3)

    def copies(to_dtype, to_device):
        return [t.detach().to(to_device, to_dtype).requires_grad_(True) if t is not None else None for t in (x, w, b)]

    routing = max_pool_routing(x, w, b, kwargs)
    ref_fn = conv2d_ref if routing is None else functools.partial(conv2d_ref_routed, routing=routing)
    ref64 = forward_backward(ref_fn, *copies(torch.float64, "cpu"), kwargs, seed + 3)
    ref_low = forward_backward(conv2d_ref, *copies(dtype, device), kwargs, seed + 3) if dtype in (torch.float16, torch.bfloat16) else (None, [None] * 3)
    names = ["y", "grad_x", "grad_weight", "grad_bias"]
    for name, fast, r64, rlow in zip(names, [y, *grads], [ref64[0], *ref64[1]], [ref_low[0], *ref_low[1]]):
        assert fast.dtype == dtype and fast.device.type == torch.device(device).type, name
        assert_parity(name, fast.cpu(), r64, None if rlow is None else rlow.cpu(), fp32_rtol=FP32_RTOL)


# --------------------------------------------------------------------------------------------
# Parity


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parity_float64_cpu(case):
    check_case(case, torch.float64, "cpu")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parity_float32_cpu(case):
    check_case(case, torch.float32, "cpu", seed=10)


def float32_sweep(step: int = 251) -> torch.Tensor:
    """Every ``step``-th positive finite float32 bit pattern (denormals to the largest float),
    their negatives, and zeros, infinities and NaN: (1, 1, 1, L)."""
    bits = torch.arange(0, 0x7F800000, step, dtype=torch.int64).to(torch.int32)
    positive = bits.view(torch.float32)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 0.55, 9.0, 2e-45])
    return torch.cat([positive, -positive, special, torch.nextafter(special[5:7], torch.tensor(0.0))]).view(1, 1, 1, -1)


def ulp_error(got: torch.Tensor, exact64: torch.Tensor) -> torch.Tensor:
    """|got - exact| in units of the float32 spacing at the exact value's rounding."""
    rounded = exact64.float().abs()
    ulp = (torch.nextafter(rounded, torch.tensor(float("inf"))) - rounded).double()
    return (got.double() - exact64).abs() / ulp


def test_cpu_tanh_is_within_1_25_ulp_over_the_float32_range():
    """The CPU's float32 tanh is our own vectorizable one (csrc/conv2d_cpu.h, FastTanh), reached
    through a 1x1 convolution with weight 1 and no bias (z = x exactly): within 1.25 ulp of the
    exact tanh over a sweep of 17 million floats, NaN to NaN, odd (signs kept)."""
    x = float32_sweep()
    one = torch.ones(1, 1, 1, 1)
    with torch.no_grad():
        y = ops.conv2d(x, one, activation="tanh")
    exact = torch.tanh(x.double())
    nan = torch.isnan(x)
    assert torch.isnan(y[nan]).all() and not torch.isnan(y[~nan]).any()
    err = ulp_error(y[~nan], exact[~nan])
    worst = int(err.argmax())
    assert err.max() <= 1.25, f"tanh({x[~nan][worst].item()!r}): {err.max().item():.3f} ulp"
    nonzero = ~nan & (x != 0)  # z = 0 + 1 * x: the sum's +0 start drops the sign of -0 (as in F.conv2d)
    assert torch.equal(torch.signbit(y[nonzero]), torch.signbit(x[nonzero]))


@pytest.mark.parametrize("case", [CASES[11], CASES[12], (1, 16, 5, 5, 120, 5, 5, 1, 0, 1, 1, "relu", None)],
                         ids=["direct-shape", "c5-batch3", "c5-batch1"])
def test_cpu_results_do_not_depend_on_the_thread_count(case):
    """The forward's channel blocks and the backward's fixed image chunks: bitwise the same
    results with 1, 2 and 3 threads."""
    x, w, b, kwargs = make_inputs(case, torch.float32, "cpu", 30)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(forward_backward(conv2d, x, w, b, kwargs, 33))
    finally:
        torch.set_num_threads(previous)
    for y, grads in results[1:]:
        assert torch.equal(y, results[0][0])
        assert all(torch.equal(g, g0) for g, g0 in zip(grads, results[0][1]))


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[8]], ids=["case0", "case1", "case8"])
def test_noncontiguous_input_and_no_bias(case):
    check_case(case, torch.float64, "cpu", seed=20, bias=False, noncontiguous=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parity_cuda(case, dtype):
    check_case(case, dtype, "cuda", seed=30)
    check_case(case, dtype, "cuda", seed=40, bias=False, noncontiguous=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "shape",
    [  # AlexNet's conv layers (batch 2) and LeNet's at batch 64: the implicit-GEMM and direct kernels
        (2, 3, 227, 227, 96, 11, 11, 4, 0, 1, 1, "relu", None),
        (2, 96, 27, 27, 256, 5, 5, 1, 2, 1, 2, "relu", None),
        (2, 256, 13, 13, 384, 3, 3, 1, 1, 1, 1, "relu", None),
        (2, 384, 13, 13, 256, 3, 3, 1, 1, 1, 2, "relu", ("max", 3, 2)),
        (64, 1, 32, 32, 6, 5, 5, 1, 0, 1, 1, "relu", ("max", 2, 2)),
        (64, 6, 14, 14, 16, 5, 5, 1, 0, 1, 1, "scaled_tanh", ("avg", 2, 2)),
        (64, 3, 227, 227, 96, 11, 11, 4, 0, 1, 1, "relu", ("max", 3, 2)),  # grad_input's dcol in 2 image chunks
    ],
    ids=["alex1", "alex2", "alex3", "alex5", "lenet1", "lenet3", "alex1-b64"],
)
def test_parity_cuda_model_shapes(shape, dtype):
    check_case(shape, dtype, "cuda", seed=50)


def random_geometry(rng: random.Random, gemm_sized: bool) -> tuple:
    """A random valid case (the CASES layout). ``gemm_sized``: more than 256 products per output,
    so that CUDA takes the implicit GEMM rather than the direct kernel (csrc/conv2d_cuda_direct.cu)."""
    while True:
        groups = rng.choice([1, 1, 2, 3])
        cg = rng.randint(29, 48) if gemm_sized else rng.randint(1, 4)
        kg = rng.randint(8, 80) if gemm_sized else rng.randint(1, 5)
        R, S = (rng.randint(3, 5), rng.randint(3, 5)) if gemm_sized else (rng.randint(1, 5), rng.randint(1, 5))
        stride = (rng.randint(1, 4), rng.randint(1, 4))
        padding = (rng.randint(0, 2), rng.randint(0, 2))
        dilation = (rng.randint(1, 3), rng.randint(1, 3))
        H, W = rng.randint(1, 17), rng.randint(1, 17)
        span_r, span_s = dilation[0] * (R - 1) + 1, dilation[1] * (S - 1) + 1
        if span_r > H + 2 * padding[0] or span_s > W + 2 * padding[1]:
            continue
        OH = (H + 2 * padding[0] - span_r) // stride[0] + 1
        OW = (W + 2 * padding[1] - span_s) // stride[1] + 1
        pool = None
        if rng.random() < 0.6:
            window = (rng.randint(1, min(3, OH)), rng.randint(1, min(3, OW)))
            pool = (rng.choice(["max", "avg"]), window, (rng.randint(1, 3), rng.randint(1, 3)))
        activation = rng.choice([None, "relu", "tanh", "scaled_tanh"])
        N = rng.randint(1, 3)
        return (N, groups * cg, H, W, groups * kg, R, S, stride, padding, dilation, groups, activation, pool)


def geometry_id(case) -> str:
    N, C, H, W, K, R, S, stride, padding, dilation, groups, activation, pool = case
    pool_id = "nopool" if pool is None else f"{pool[0]}{pool[1][0]}x{pool[1][1]}s{pool[2][0]}x{pool[2][1]}"
    return (f"n{N}c{C}h{H}w{W}k{K}r{R}s{S}-st{stride[0]}x{stride[1]}-p{padding[0]}x{padding[1]}"
            f"-d{dilation[0]}x{dilation[1]}-g{groups}-{activation}-{pool_id}")  # fmt: skip


FUZZ_SMALL = [random_geometry(random.Random(100 + i), gemm_sized=False) for i in range(16)]
FUZZ_GEMM = [random_geometry(random.Random(200 + i), gemm_sized=True) for i in range(6)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", FUZZ_SMALL + FUZZ_GEMM, ids=[geometry_id(c) for c in FUZZ_SMALL + FUZZ_GEMM])
def test_parity_random_geometries_cpu(case, dtype):
    """Seeded random geometries (per-axis stride 1-4, padding 0-2, dilation 1-3, kernels 1x1 to
    5x5, groups 1-3, any activation, max or avg pooling with any window and stride): every
    output and gradient against the reference."""
    check_case(case, dtype, "cpu", seed=60)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", FUZZ_SMALL + FUZZ_GEMM, ids=[geometry_id(c) for c in FUZZ_SMALL + FUZZ_GEMM])
def test_parity_random_geometries_cuda(case, dtype):
    check_case(case, dtype, "cuda", seed=70)


def test_empty_batch():
    x = torch.randn(0, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    y = ops.conv2d(x, w, None, activation="relu", pool=("max", 2, 2))
    assert y.shape == (0, 4, 3, 3)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))


def test_ops_conv2d_is_the_kernel_functional():
    x, w, b, kwargs = make_inputs(CASES[0], torch.float64, "cpu", 0)
    torch.testing.assert_close(ops.conv2d(x, w, b, **kwargs), conv2d(x, w, b, **kwargs), rtol=0, atol=0)


def test_preact_is_saved_only_when_a_gradient_is_needed():
    x, w, b, _ = make_inputs(CASES[4], torch.float64, "cpu", 0)
    args = (x, w, b, [1, 1], [0, 0], [1, 1], 1, "relu", "max", [2, 2], [2, 2])
    with torch.no_grad():
        out, preact = torch.ops.replab_fast.conv2d(*args, False)
    assert preact.shape == (0,)
    out2, preact2 = torch.ops.replab_fast.conv2d(*args, True)
    assert preact2.shape == (2, 16, 10, 10)
    torch.testing.assert_close(out, out2.detach(), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="save_preact=False"):
        torch.ops.replab_fast.conv2d_backward(torch.ones_like(out), x.detach(), w.detach(), preact, *args[3:], [True, True, True])


# --------------------------------------------------------------------------------------------
# gradcheck, opcheck, torch.compile


GRADCHECK_CASES = [
    (1, 2, 7, 6, 3, 3, 2, (2, 1), (1, 0), (1, 2), 1, "scaled_tanh", ("max", 2, 1)),
    (2, 4, 6, 6, 2, 3, 3, 1, 1, 1, 2, "tanh", ("avg", 2, 2)),
    (1, 2, 8, 8, 2, 3, 3, 3, 2, 2, 2, "relu", None),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=["maxpool", "avgpool", "relu"])
def test_gradcheck_float64(case):
    x, w, b, kwargs = make_inputs(case, torch.float64, "cpu", 5)
    if kwargs["activation"] == "relu":  # keep pre-activations away from the kink at 0
        with torch.no_grad():
            b.add_(torch.sign(b) * 0.5)
    assert torch.autograd.gradcheck(lambda x, w, b: conv2d(x, w, b, **kwargs), (x, w, b))


def op_args(case, dtype, device, save_preact=True):
    x, w, b, kw = make_inputs(case, dtype, device, 7)
    kind, pk, ps = normalize_pool(kw["pool"])
    return (x, w, b, pair(kw["stride"]), pair(kw["padding"]), pair(kw["dilation"]), kw["groups"],
            kw["activation"] or "none", kind, pk, ps, save_preact)  # fmt: skip


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[9]], ids=["fused", "plain-act", "no-epilogue"])
def test_opcheck(case, device):
    dtype = torch.float64
    args = op_args(case, dtype, device)
    torch.library.opcheck(torch.ops.replab_fast.conv2d.default, args)
    x, w, b, *rest = args
    out, preact = torch.ops.replab_fast.conv2d(*args)
    dy = random_tensor(out.shape, dtype, device, 9)
    bwd_args = (dy, x.detach(), w.detach(), preact.detach(), *rest[:-1], [True, True, b is not None])
    torch.library.opcheck(torch.ops.replab_fast.conv2d_backward.default, bwd_args)


def test_torch_compile_fullgraph_forward_and_backward():
    case = CASES[4]
    x, w, b, kwargs = make_inputs(case, torch.float32, "cpu", 11)
    compiled = torch.compile(lambda x, w, b: ops.conv2d(x, w, b, **kwargs), fullgraph=True)
    y, grads = forward_backward(lambda x, w, b, **_: compiled(x, w, b), x, w, b, kwargs, 12)
    y_eager, grads_eager = forward_backward(conv2d, x, w, b, kwargs, 12)
    torch.testing.assert_close(y, y_eager, rtol=0, atol=0)
    for g, ge in zip(grads, grads_eager):
        torch.testing.assert_close(g, ge, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Bad input: a clear TORCH_CHECK error, never a crash


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


BAD_INPUTS = [
    ("rank", lambda: ops.conv2d(_x(3, 8, 8), _x(4, 3, 3, 3)), "input must be 4-D"),
    ("weight rank", lambda: ops.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3)), "weight must be 4-D"),
    ("channels", lambda: ops.conv2d(_x(2, 3, 8, 8), _x(4, 2, 3, 3)), "input channels"),
    ("groups in", lambda: ops.conv2d(_x(2, 3, 8, 8), _x(4, 1, 3, 3), groups=2), "groups \\(2\\) must divide the input channels"),
    ("groups out", lambda: ops.conv2d(_x(2, 4, 8, 8), _x(3, 2, 3, 3), groups=2), "groups \\(2\\) must divide the output channels"),
    ("kernel too large", lambda: ops.conv2d(_x(2, 3, 8, 8), _x(4, 3, 9, 9)), "larger than the padded input"),
    ("dilated too large", lambda: ops.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), dilation=4), "dilated to 9x9"),
    ("dtype mismatch", lambda: ops.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3, dtype=torch.float64)), "same dtype"),
    ("half on cpu", lambda: ops.conv2d(_x(2, 3, 8, 8).half(), _x(4, 3, 3, 3).half()), "float32 and float64"),
    ("device mismatch", lambda: ops.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3).to("meta")), "same device"),
    ("bias shape", lambda: ops.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), _x(3)), "bias must have shape"),
    ("bias dtype", lambda: ops.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), _x(4, dtype=torch.float64)), "bias must have the input's dtype"),
    ("stride 0", lambda: ops.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), stride=0), "stride must be >= 1"),
    ("negative padding", lambda: ops.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), padding=-1), "padding must be >= 0"),
    ("pool too large", lambda: ops.conv2d(_x(2, 3, 8, 8), _x(4, 3, 3, 3), pool=("max", 7, 1)), "pooling window"),
]


@pytest.mark.parametrize("name,call,message", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_raises_a_clear_error(name, call, message):
    with pytest.raises(RuntimeError, match=message):
        call()


def test_bad_python_arguments():
    x, w = _x(2, 3, 8, 8), _x(4, 3, 3, 3)
    with pytest.raises(ValueError, match="activation must be one of"):
        ops.conv2d(x, w, activation="gelu")
    with pytest.raises(ValueError, match="pool must be None"):
        ops.conv2d(x, w, pool=("min", 2, 2))
    with pytest.raises(ValueError, match="stride must be an int or a pair"):
        ops.conv2d(x, w, stride=(1, 2, 3))
    with pytest.raises(ValueError, match="padding must be an int, a pair, 'valid' or 'same', got 'full'"):
        ops.conv2d(x, w, padding="full")
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        ops.conv2d(x, w, padding="same", stride=2)
    with pytest.raises(ValueError, match="padding must be an int or a pair of ints, got \\(1.5, 1\\)"):
        ops.conv2d(x, w, padding=(1.5, 1))


@pytest.mark.parametrize("padding", [2**31 - 1, (0, 2**30)])
def test_a_padding_too_large_to_index_names_the_padding(padding):
    with pytest.raises(ValueError, match="padding .* makes the padded input .* pixels in (height|width).*at most"):
        ops.conv2d(_x(1, 1, 4, 4), _x(1, 1, 3, 3), padding=padding)


# (C, H, W, K, R, S, dilation, groups, activation, pool): odd and even kernels, so "same" pads
# symmetrically and with torch's extra zero row / column at the bottom / right.
PADDING_CASES = [
    (3, 9, 8, 4, 3, 3, 1, 1, "relu", ("max", 2, 2)),
    (2, 7, 10, 3, 4, 2, 1, 1, None, None),
    (4, 8, 9, 4, 2, 3, (2, 1), 2, "tanh", ("avg", 2, 1)),
]


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("case", PADDING_CASES, ids=[f"pad{i}" for i in range(len(PADDING_CASES))])
def test_string_padding_as_torch_takes_it(case, padding):
    C, H, W, K, R, S, dilation, groups, activation, pool = case
    case13 = (2, C, H, W, K, R, S, 1, padding, dilation, groups, activation, pool)
    check_case(case13, torch.float64, "cpu", seed=40)
    if padding == "same":  # the output keeps the input's size, as torch's F.conv2d
        x, w, _, _ = make_inputs(case13, torch.float64, "cpu", 41)
        y = ops.conv2d(x, w, padding="same", dilation=dilation, groups=groups)
        assert y.shape[2:] == x.shape[2:]


# --------------------------------------------------------------------------------------------
# The build: missing or stale extension, namespace shared with the Triton ops


def test_stale_build_is_refused_with_the_build_command(monkeypatch):
    monkeypatch.setattr(_extension, "sources_hash", lambda _: 12345)
    with pytest.raises(ImportError, match="stale.*pip install --no-build-isolation -e \\."):
        _extension.load.__wrapped__()


def test_a_build_for_another_torch_is_refused_before_it_is_loaded(monkeypatch):
    monkeypatch.setattr(_extension, "build_info", lambda: {"torch": "2.11.0+cu128", "with_cuda": True})
    imported = []
    monkeypatch.setattr(_extension.importlib, "import_module", imported.append)
    with pytest.raises(ImportError, match=f"built against torch 2.11.0\\+cu128, but this is torch {re.escape(torch.__version__)}.*"
                       "pip install --no-build-isolation -e \\."):
        _extension.load.__wrapped__()
    assert not imported  # the library was never loaded (no symbol error)


def test_a_build_without_its_record_is_refused(monkeypatch):
    monkeypatch.setattr(_extension, "build_info", lambda: {})
    with pytest.raises(ImportError, match="no build record.*Rebuild it against torch"):
        _extension.load.__wrapped__()


def test_the_build_records_the_torch_it_was_built_against():
    info = _extension.build_info()
    assert info["torch"] == torch.__version__ and info["sources_hash"] == _extension.load().SOURCES_HASH


def test_missing_build_says_how_to_build(monkeypatch):
    def fail(name):
        raise ImportError(f"No module named {name!r}")

    monkeypatch.setattr(_extension.importlib, "import_module", fail)
    with pytest.raises(ImportError, match="could not be loaded.*pip install --no-build-isolation -e \\."):
        _extension.load.__wrapped__()


def test_extension_and_triton_ops_share_the_namespace_in_either_import_order():
    code = (
        "import torch, replab_fast._extension as e; e.load(); import replab_fast.ops as o; "
        "assert hasattr(torch.ops.replab_fast, 'rms_norm') and hasattr(torch.ops.replab_fast, 'conv2d'); "
        "x = torch.randn(1, 1, 6, 6); print(o.conv2d(x, torch.randn(2, 1, 3, 3)).shape)"
    )
    for program in (code, code.replace("e.load(); import replab_fast.ops as o;", "import replab_fast.ops as o; e.load();")):
        result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "torch.Size([1, 2, 4, 4])" in result.stdout
