"""Parity tests of the RoPE kernel (replab_fast/kernels/rope/) against the reference LLaMA's
``apply_rope`` (interleaved pairs) and ``apply_rope_rotate_half`` (through ``rope_ref``).

Tolerances.
- The reference runs on float64 copies of q, k (and of the cos/sin tables). float32:
  ``|fast - ref| <= 1e-6 * scale`` elementwise (scale = max(1, max |ref|)): each output is
  a * cos - b * sin, two products and a sum in fp32 (plus the fp32 tables themselves, which both
  sides share), so it is within a few ulp (~4e-7 relative); a wrong pair, sign or position is off
  by O(1).
- float16 / bfloat16: the 2x rule (error against the float64 reference at most twice the error
  of the reference run at that dtype, plus a floor of 1e-3 * scale).
- float64: 1e-12, and gradcheck.
The gradients of q and k are checked the same way (the backward is the inverse rotation).
Outputs are poisoned (every ``torch.empty`` is NaN-filled, see the fixture).
"""

import pytest
import torch

from replab_fast import ops
from support import DEVICES, assert_parity, random_tensor
from replab_fast.kernels.rope.launch import RopeConfig, rope_forward
from replab_fast.kernels.rope.reference import rope_ref
from replab_fast.models.llama import precompute_rope

CONVENTIONS = [pytest.param(True, id="interleaved"), pytest.param(False, id="rotate_half")]


def tables(D, T, device, *, offset=0, extra=0, dtype=torch.float32):
    """cos/sin at positions [offset, offset + T + extra), as the model slices its tables."""
    cos, sin = precompute_rope(D, offset + T + extra, device=device)
    return cos[offset:].to(dtype), sin[offset:].to(dtype)


def check(name, fast, ref64, ref_low=None):
    assert_parity(name, fast, ref64, ref_low, fp32_rtol=1e-6)


def run_and_compare(q, k, cos, sin, interleaved, *, seed=0):
    q64, k64 = (t.detach().double().requires_grad_() for t in (q, k))
    qlow, klow = (t.detach().clone().requires_grad_() for t in (q, k))
    q_rot, k_rot = ops.rope(q, k, cos, sin, interleaved=interleaved)
    r64 = rope_ref(q64, k64, cos.double(), sin.double(), interleaved)
    rlow = rope_ref(qlow, klow, cos, sin, interleaved)
    assert q_rot.dtype == q.dtype and k_rot.dtype == k.dtype
    assert q_rot.is_contiguous() and k_rot.is_contiguous()
    check("q_rot", q_rot, r64[0], rlow[0])
    check("k_rot", k_rot, r64[1], rlow[1])
    gq, gk = random_tensor(q_rot.shape, q.dtype, q.device, seed + 1), random_tensor(k_rot.shape, k.dtype, k.device, seed + 2)
    torch.autograd.backward((q_rot, k_rot), (gq, gk))
    torch.autograd.backward(r64, (gq.double(), gk.double()))
    torch.autograd.backward(rlow, (gq, gk))
    check("grad q", q.grad, q64.grad, qlow.grad)
    check("grad k", k.grad, k64.grad, klow.grad)


# --------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("interleaved", CONVENTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [64, 80, 96, 128])
def test_rope_matches_reference(D, dtype, interleaved, device):
    B, T, Hq, Hk = 2, 5, 4, 2  # grouped-query: 2 q heads per k head
    q = random_tensor((B, T, Hq, D), dtype, device, D, requires_grad=True)
    k = random_tensor((B, T, Hk, D), dtype, device, D + 1, requires_grad=True)
    cos, sin = tables(D, T, device)
    run_and_compare(q, k, cos, sin, interleaved, seed=D)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("interleaved", CONVENTIONS)
@pytest.mark.parametrize("D", [2, 256])
@pytest.mark.parametrize("heads", [(8, 8), (8, 1), (6, 3)], ids=["mha", "mqa", "gqa3"])
def test_head_dims_and_head_groups(heads, D, interleaved, device):
    Hq, Hk = heads
    q = random_tensor((1, 3, Hq, D), torch.float32, device, 1, requires_grad=True)
    k = random_tensor((1, 3, Hk, D), torch.float32, device, 2, requires_grad=True)
    cos, sin = tables(D, 3, device)
    run_and_compare(q, k, cos, sin, interleaved)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("interleaved", CONVENTIONS)
def test_decoding_at_an_offset_and_longer_tables(interleaved, device):
    """KV-cache decoding: one token (or a chunk) at position start_pos uses the tables' rows there."""
    D = 64
    for T, offset, extra in [(1, 37, 0), (3, 10, 0), (4, 0, 20)]:  # one token, a chunk, a table longer than T
        q = random_tensor((2, T, 4, D), torch.float32, device, T, requires_grad=True)
        k = random_tensor((2, T, 2, D), torch.float32, device, T + 1, requires_grad=True)
        cos, sin = tables(D, T, device, offset=offset, extra=extra)
        run_and_compare(q, k, cos, sin, interleaved)


@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_tables(device):
    """The model's tables follow .to(bfloat16): bf16 cos/sin with bf16 q/k, computed in fp32 like apply_rope."""
    q = random_tensor((2, 4, 4, 64), torch.bfloat16, device, 3, requires_grad=True)
    k = random_tensor((2, 4, 2, 64), torch.bfloat16, device, 4, requires_grad=True)
    cos, sin = tables(64, 4, device, dtype=torch.bfloat16)
    run_and_compare(q, k, cos, sin, True)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("interleaved", CONVENTIONS)
@pytest.mark.parametrize("view", ["fused_qkv", "bhtd_transposed", "strided_last_dim"])
def test_non_contiguous_inputs(view, interleaved, device):
    B, T, Hq, Hk, D = 2, 6, 4, 2, 32
    if view == "fused_qkv":  # q and k sliced out of one (B, T, (Hq + 2 Hk) D) projection: read in place
        qkv = random_tensor((B, T, (Hq + 2 * Hk) * D), torch.float32, device, 5)
        q = qkv[..., : Hq * D].unflatten(-1, (Hq, D))
        k = qkv[..., Hq * D : (Hq + Hk) * D].unflatten(-1, (Hk, D))
    elif view == "bhtd_transposed":  # (B, H, T, D) storage seen as (B, T, H, D): read in place
        q = random_tensor((B, Hq, T, D), torch.float32, device, 6).transpose(1, 2)
        k = random_tensor((B, Hk, T, D), torch.float32, device, 7).transpose(1, 2)
    else:  # every other element of the last dimension: copied first
        q = random_tensor((B, T, Hq, 2 * D), torch.float32, device, 8)[..., ::2]
        k = random_tensor((B, T, Hk, 2 * D), torch.float32, device, 9)[..., ::2]
    assert not q.is_contiguous() and not k.is_contiguous()
    q, k = q.detach().requires_grad_(), k.detach().requires_grad_()
    cos, sin = tables(D, T, device)
    cos_wide = torch.cat([cos, cos], 0)[::2]  # a row-strided table
    sin_wide = torch.cat([sin, sin], 0)[::2]
    run_and_compare(q, k, cos, sin, interleaved)
    fast = ops.rope(q, k, cos_wide, sin_wide, interleaved=interleaved)
    ref = rope_ref(q, k, cos_wide, sin_wide, interleaved)
    for a, b in zip(fast, ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(0, 4), (2, 0)], ids=["no_sequences", "no_tokens"])
def test_empty(shape, device):
    B, T = shape
    q = torch.randn(B, T, 4, 16, device=device, requires_grad=True)
    k = torch.randn(B, T, 2, 16, device=device, requires_grad=True)
    cos, sin = tables(16, max(T, 1), device)
    q_rot, k_rot = ops.rope(q, k, cos, sin)
    assert q_rot.shape == q.shape and k_rot.shape == k.shape
    (q_rot.sum() + k_rot.sum()).backward()
    assert q.grad.shape == q.shape and k.grad.shape == k.shape


@pytest.mark.parametrize("device", DEVICES)
def test_gradient_of_one_output_only(device):
    q = random_tensor((1, 3, 4, 16), torch.float32, device, 10, requires_grad=True)
    k = random_tensor((1, 3, 2, 16), torch.float32, device, 11, requires_grad=True)
    cos, sin = tables(16, 3, device)
    q_rot, _ = ops.rope(q, k, cos, sin)
    q_rot.square().sum().backward()
    q64 = q.detach().double().requires_grad_()
    rope_ref(q64, k.detach().double(), cos.double(), sin.double())[0].square().sum().backward()
    check("grad q", q.grad, q64.grad)
    assert k.grad is None or not k.grad.any()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("interleaved", CONVENTIONS)
def test_forced_configs(interleaved, device):
    """Several tokens and head blocks per program, and partial blocks, at small sizes."""
    B, T, Hq, Hk, D = 2, 7, 6, 2, 48
    q = random_tensor((B, T, Hq, D), torch.float32, device, 12)
    k = random_tensor((B, T, Hk, D), torch.float32, device, 13)
    cos, sin = tables(D, T, device)
    r64 = rope_ref(q.double(), k.double(), cos.double(), sin.double(), interleaved)
    for cfg in [RopeConfig(block_t=4, block_hq=4, block_hk=2, num_warps=4),
                RopeConfig(block_t=1, block_hq=2, block_hk=1, num_warps=2),
                RopeConfig(block_t=8, block_hq=8, block_hk=4, num_warps=4)]:
        qr, kr = rope_forward(q, k, cos, sin, interleaved, config=cfg)
        check("q_rot", qr, r64[0])
        check("k_rot", kr, r64[1])
        dq, dk = rope_forward(qr, kr, cos, sin, interleaved, inverse=True, config=cfg)  # rotates back
        check("q", dq, q.double())
        check("k", dk, k.double())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("interleaved", CONVENTIONS)
def test_float64_gradcheck(interleaved, device):
    q = torch.randn(1, 3, 2, 8, dtype=torch.float64, device=device, requires_grad=True)
    k = torch.randn(1, 3, 1, 8, dtype=torch.float64, device=device, requires_grad=True)
    cos, sin = tables(8, 3, device, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: ops.rope(a, b, cos, sin, interleaved=interleaved), (q, k))


def test_poisoning_is_active():
    assert torch.isnan(torch.empty(8)).all()


# --------------------------------------------------------------------------------------------
# torch.library: opcheck, torch.compile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("interleaved", CONVENTIONS)
def test_opcheck(interleaved, device):
    q = torch.randn(2, 6, 4, 16, device=device, requires_grad=True)
    k = torch.randn(2, 6, 2, 16, device=device, requires_grad=True)
    cos, sin = tables(16, 6, device)
    torch.library.opcheck(torch.ops.replab_fast.rope.default, (q, k, cos, sin, interleaved))
    q16, k16 = q.detach().bfloat16(), k.detach().bfloat16()
    torch.library.opcheck(torch.ops.replab_fast.rope.default, (q16, k16, cos, sin, interleaved))
    torch.library.opcheck(torch.ops.replab_fast.rope_backward.default, (q.detach(), k.detach(), cos, sin, interleaved))


@pytest.mark.parametrize("device", DEVICES)
def test_compiles_without_graph_breaks(device):
    from torch._dynamo.testing import CompileCounterWithBackend

    def f(q, k, cos, sin):
        q_rot, k_rot = ops.rope(q, k, cos, sin)
        return (q_rot * 2).sin().sum() + k_rot.square().sum()

    q = torch.randn(2, 5, 4, 16, device=device, requires_grad=True)
    k = torch.randn(2, 5, 2, 16, device=device, requires_grad=True)
    cos, sin = tables(16, 5, device)
    counter = CompileCounterWithBackend("inductor" if device == "cuda" else "aot_eager")
    torch._dynamo.reset()
    out = torch.compile(f, backend=counter, fullgraph=True)(q, k, cos, sin)
    grads = torch.autograd.grad(out, (q, k))
    expected = f(q, k, cos, sin)
    expected_grads = torch.autograd.grad(expected, (q, k))
    assert counter.frame_count == 1
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def _args(Hq=4, Hk=2, Dq=16, Dk=16, T=5, table_T=5, table_half=None, **dtypes):
    q = torch.randn(2, T, Hq, Dq).to(dtypes.get("q", torch.float32))
    k = torch.randn(2, T, Hk, Dk).to(dtypes.get("k", torch.float32))
    half = Dq // 2 if table_half is None else table_half
    cos = torch.randn(table_T, half).to(dtypes.get("cos", torch.float32))
    sin = torch.randn(table_T, half).to(dtypes.get("sin", torch.float32))
    return q, k, cos, sin


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(Dk=32), ValueError, r"different head dims \(q: D=16, k: D=32\)"),
        (dict(Hq=4, Hk=3), ValueError, "Hk=3 must divide q's Hq=4"),
        (dict(Dq=15, Dk=15, table_half=7), ValueError, "D=15 must be even"),
        (dict(T=6, table_T=5), ValueError, "too short: they cover 5 positions but q and k have T=6"),
        (dict(table_half=4), ValueError, "D/2 = 8 columns"),
        (dict(k=torch.float16), TypeError, "q and k must have one dtype"),
        (dict(sin=torch.float64), TypeError, "cos and sin must have one dtype"),
        (dict(q=torch.int32, k=torch.int32), TypeError, "got q of dtype torch.int32"),
    ],
)
def test_bad_input_is_a_clear_error(kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.rope(*_args(**kwargs))


def test_bad_shapes_and_devices():
    q, k, cos, sin = _args()
    with pytest.raises(ValueError, match=r"expects q of shape \(B, T, Hq, D\)"):
        ops.rope(q[0], k, cos, sin)
    with pytest.raises(ValueError, match="same batch and sequence sizes"):
        ops.rope(q, k[:1], cos, sin)
    with pytest.raises(ValueError, match="q is on cpu but cos is on meta"):
        ops.rope(q, k, cos.to("meta"), sin.to("meta"))


def test_table_gradients_are_refused():
    q, k, cos, sin = _args()
    q.requires_grad_()
    cos.requires_grad_()
    q_rot, k_rot = ops.rope(q, k, cos, sin)
    with pytest.raises(RuntimeError, match="gradients with respect to cos and sin are not implemented"):
        q_rot.sum().backward()


# --------------------------------------------------------------------------------------------
# The compiled (CUDA) path, built for Hopper without a GPU
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("interleaved", CONVENTIONS)
@pytest.mark.parametrize(
    "shape", [(32, 8, 128), (32, 32, 128), (8, 8, 80), (16, 2, 256)], ids=["gqa", "mha", "d80", "d256"]
)
def test_compiled_path_builds_for_hopper(shape, interleaved):
    """The CUDA path's launch (block sizes as for an H100) compiles for sm_90 with this triton,
    with 16-byte loads and no shared-memory round trip for the interleaved split at D = 128."""
    import os

    import triton

    from replab_fast.kernels._triton import compile_for_cuda, record_launches

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(ptxas):
        pytest.skip(f"triton's bundled ptxas is not at {ptxas}")
    Hq, Hk, D = shape
    q = torch.empty(2, 16, Hq, D, dtype=torch.bfloat16)
    k = torch.empty(2, 16, Hk, D, dtype=torch.bfloat16)
    cos = torch.empty(16, D // 2)
    with record_launches(sm_count=132) as launches:
        rope_forward(q, k, cos, cos, interleaved)
        rope_forward(q, k, cos, cos, interleaved, inverse=True)
    assert len(launches) == 2
    for launch in launches:
        compiled = compile_for_cuda(launch, capability=90)
        assert "ld.global.v4" in compiled.asm["ptx"] or "ld.global.nc.v4" in compiled.asm["ptx"]
        if D == 128:
            assert compiled.metadata.shared == 0
