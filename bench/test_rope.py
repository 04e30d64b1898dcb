"""Op-level benchmark of RoPE on queries and keys, every provider side by side.

Case: q (B, T, Hq, D) and k (B, T, Hk, D) rotated by the angles of T positions, B = 4,
T in {1024, 4096, 8192}, Hq = 32, Hk in {32, 8} (multi-head and grouped-query), D = 128,
bfloat16, modes forward and backward. Providers:
  eager        the reference's complex form (``apply_rope_complex``, Meta's code) on q and on k
  compile      the same function under torch.compile
  liger        Liger-Kernel's ``liger_rotary_pos_emb`` (rotate-half convention, HF layout
               (B, H, T, D): given here as a transposed view of the same (B, T, H, D) memory, so
               its internal transpose back is free), when installed
  replab_fast  ``replab_fast.ops.rope`` (one Triton launch for q and k, interleaved pairs)
The conventions differ (interleaved vs rotate-half) but the work is the same: each element of q
and k is read once and written once; both read a (T, D/2) pair of tables (Liger a (T, D) pair).

Two outputs: ``bench_op`` times ``out.backward(dy)`` on one tensor, so each provider returns a
``_QK`` that shows bench_op the two outputs as one flat tensor (shape, dtype, device) and splits
dy into views of it in ``backward``: no extra kernel (no concatenation) is timed.

Bytes: forward reads q, k and the tables and writes q_rot, k_rot: 2 B T (Hq + Hk) D s + 2 T (D/2) 4
(fp32 tables); backward the same with the gradients. FLOPs (6 per pair) are negligible.

Target (read off a GPU run, never asserted): forward >= 80% of the measured copy
bandwidth and faster than every other provider. GPU only: skipped on a CPU.
"""

from __future__ import annotations

import pytest
import torch

from bench.context import BenchContext, quick_sweep
from bench.op_cases import bench_op
from bench.providers import require
from replab_fast.models.llama import apply_rope_complex, precompute_freqs_cis, precompute_rope

PROVIDERS = ("eager", "compile", "liger", "replab_fast")
MODES = ("forward", "backward")
B, HQ, D = 4, 32, 128
SEQ_QUICK, SEQ_FULL = (4096,), (1024, 4096, 8192)
KV_HEADS_QUICK, KV_HEADS_FULL = (8,), (32, 8)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seq_len" not in metafunc.fixturenames:
        return
    quick = quick_sweep(metafunc.config)
    metafunc.parametrize("seq_len", SEQ_QUICK if quick else SEQ_FULL)
    metafunc.parametrize("kv_heads", KV_HEADS_QUICK if quick else KV_HEADS_FULL)
    metafunc.parametrize("mode", MODES)
    metafunc.parametrize("provider", PROVIDERS)


class _QK:
    """(q_rot, k_rot) seen by bench_op as one flat output; ``backward`` splits dy into two views."""

    def __init__(self, q: torch.Tensor, k: torch.Tensor) -> None:
        self.q, self.k = q, k
        self.shape = (q.numel() + k.numel(),)
        self.dtype, self.device = q.dtype, q.device

    def backward(self, dy: torch.Tensor, retain_graph: bool | None = None) -> None:
        nq = self.q.numel()
        grads = (dy[:nq].view(self.q.shape), dy[nq:].view(self.k.shape))
        torch.autograd.backward((self.q, self.k), grads, retain_graph=retain_graph)


def rope_bytes(T: int, Hk: int, elem: int) -> int:
    return 2 * B * T * (HQ + Hk) * D * elem + 2 * T * (D // 2) * 4


@pytest.mark.gpu
def test_rope(benchmark, bench_ctx: BenchContext, seq_len: int, kv_heads: int, mode: str, provider: str) -> None:
    device = bench_ctx.device
    if not bench_ctx.is_cuda:
        pytest.skip("op-level benchmarks are GPU cases (CUDA events, L2-aware); this run is on a CPU")
    require(provider, device)
    T, Hk, dtype = seq_len, kv_heads, torch.bfloat16
    cos, sin = precompute_rope(D, T, device=device)  # (T, D/2) fp32, as the model's buffers
    freqs_cis = precompute_freqs_cis(D, T, device=device)  # (T, D/2) complex64

    def reference(q, k):
        return apply_rope_complex(q, freqs_cis), apply_rope_complex(k, freqs_cis)

    if provider == "eager":
        rotate = reference
    elif provider == "compile":
        rotate = torch.compile(reference)
    elif provider == "liger":
        from liger_kernel.transformers.rope import liger_rotary_pos_emb

        cos_hf = torch.cat((cos, cos), dim=-1)[None].to(dtype)  # (1, T, D), HF's rotate-half tables
        sin_hf = torch.cat((sin, sin), dim=-1)[None].to(dtype)

        def rotate(q, k):  # HF layout (B, H, T, D): a view of the same (B, T, H, D) memory
            return liger_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos_hf, sin_hf)

    elif provider == "replab_fast":
        from replab_fast import ops

        def rotate(q, k):
            return ops.rope(q, k, cos, sin, interleaved=True)

    else:  # pragma: no cover - PROVIDERS lists them all
        raise AssertionError(provider)

    def fn(q, k):
        return _QK(*rotate(q, k))

    def make_inputs(seed: int):
        g = torch.Generator(device=device).manual_seed(2000 + seed)
        q = torch.randn(B, T, HQ, D, generator=g, device=device).to(dtype)
        k = torch.randn(B, T, Hk, D, generator=g, device=device).to(dtype)
        return q.requires_grad_(True), k.requires_grad_(True)

    bench_op(
        benchmark, bench_ctx, case=f"rope/bfloat16/{mode}/B{B}xT{T}xHq{HQ}xHk{Hk}xD{D}", provider=provider,
        mode=mode, fn=fn, make_inputs=make_inputs, bytes_moved=rope_bytes(T, Hk, 2),
        flops=6 * B * T * (HQ + Hk) * (D // 2),
        shape=[B, T, HQ, Hk, D], dtype="bfloat16",
        sweep={"name": f"rope bfloat16 {mode} (B={B}, Hq={HQ}, Hk={Hk}, D={D})", "x_name": "seq_len", "x": T},
    )  # fmt: skip
