"""Op-level benchmark of fused attention, every provider side by side.

Training cases: q, k, v (B, T, H, D), bfloat16, B * T = 16384 tokens and H * D = 2048 (the
FlashAttention papers' setup: B = 32 at T = 512 down to B = 1 at T = 16k, so B * H fills the
GPU), T in {512, 1k, 2k, 4k, 8k, 16k}, D in {64, 128}, causal and not, modes forward, backward
and full. Providers:
  eager           ``attention_ref`` (the reference: scores, softmax, weighted sum; T x T scores)
  compile         the same function under torch.compile
  sdpa-flash      F.scaled_dot_product_attention restricted to the flash backend
  sdpa-efficient  ... the memory-efficient backend
  sdpa-cudnn      ... the cuDNN backend
  replab_fast     ``replab_fast.ops.attention``
SDPA takes (B, H, T, D): it is given transposed views of the same (B, T, H, D) memory (every
backend reads strides; no copy is timed). eager and compile are skipped, with the reason, where
their T x T fp32 scores alone would exceed 8 GB.

FLOPs counted the standard way: forward 4 B H T S D (two matrix products), halved when causal;
backward 2.5x the forward (five products, one recomputed); full 3.5x. Bytes: the forward reads
q, k, v and writes o; the backward reads q, k, v, o, do and writes dq, dk, dv.

Decode cases (flash-decoding): one query token per sequence against a KV cache of S positions,
B in {1, 16}, S in {1k, 8k, 32k}, Hq = 32, Hk = 8 (grouped-query, LLaMA-2-70B's ratio), D = 128,
bfloat16, forward (inference, no autograd): the latency of one token's attention. SDPA gets
``enable_gqa=True``; a backend that refuses it is skipped with its error as the reason. Bytes:
K and V read once (2 B S Hk D 2), the floor of a memory-bound op.

Sets: --quick takes T = 4k, D = 128, causal, forward and backward, and decode at B = 1, S = 32k;
--headline (make gpu-check's stage d) the same at D = 64 and 128.

Targets (read off a GPU run, never asserted): forward, causal, D = 128, T >= 4k:
>= 450 TFLOP/s and at least sdpa-flash; backward >= 0.9x sdpa-flash; decode at S = 32k at least
as fast as SDPA; peak memory linear in T. GPU only: skipped on a CPU (the interpreter would take
hours).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from bench.context import BenchContext, headline, quick_sweep
from bench.op_cases import bench_op
from bench.providers import require, sdpa_backend
from replab_fast.models.llama import attention_ref

PROVIDERS = ("eager", "compile", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "replab_fast")
MODES = ("forward", "backward", "full")
TOKENS, HIDDEN = 16384, 2048  # B * T and H * D of every training case
SEQ_QUICK, SEQ_FULL = (4096,), (512, 1024, 2048, 4096, 8192, 16384)
HEAD_DIM_QUICK, HEAD_DIM_FULL = (128,), (64, 128)
CAUSAL_QUICK, CAUSAL_FULL = (True,), (True, False)
MODES_QUICK = ("forward", "backward")
DECODE_BATCH_QUICK, DECODE_BATCH_FULL = (1,), (1, 16)
DECODE_CACHE_QUICK, DECODE_CACHE_FULL = (32768,), (1024, 8192, 32768)
DECODE_HQ, DECODE_HK, DECODE_D = 32, 8, 128
MAX_SCORES_BYTES = 8 * 2**30  # eager / compile materialize B H T S fp32 scores: skip beyond this


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    quick = quick_sweep(metafunc.config)
    if "seq_len" in metafunc.fixturenames:
        metafunc.parametrize("seq_len", SEQ_QUICK if quick else SEQ_FULL)
        metafunc.parametrize("head_dim", HEAD_DIM_QUICK if quick and not headline(metafunc.config) else HEAD_DIM_FULL)
        metafunc.parametrize("causal", CAUSAL_QUICK if quick else CAUSAL_FULL, ids=lambda c: "causal" if c else "full")
        metafunc.parametrize("mode", MODES_QUICK if quick else MODES)
        metafunc.parametrize("provider", PROVIDERS)
    if "cache_len" in metafunc.fixturenames:
        metafunc.parametrize("batch", DECODE_BATCH_QUICK if quick else DECODE_BATCH_FULL)
        metafunc.parametrize("cache_len", DECODE_CACHE_QUICK if quick else DECODE_CACHE_FULL)
        metafunc.parametrize("provider", PROVIDERS)


def attention_flops(B: int, H: int, T: int, S: int, D: int, causal: bool, mode: str) -> int:
    forward = 4 * B * H * T * S * D // (2 if causal else 1)
    return {"forward": forward, "backward": int(2.5 * forward), "full": int(3.5 * forward)}[mode]


def attention_bytes(B: int, T: int, S: int, Hq: int, Hk: int, D: int, mode: str, elem: int = 2) -> int:
    q = o = B * T * Hq * D * elem
    kv = 2 * B * S * Hk * D * elem
    forward = q + kv + o
    backward = (q + kv + o + o) + (q + kv)  # read q, k, v, o, do; write dq, dk, dv
    return {"forward": forward, "backward": backward, "full": forward + backward}[mode]


def make_attention(provider: str, causal: bool, gqa: bool):
    """fn(q, k, v) -> (B, T, Hq, D) for ``provider``, on (B, T, H, D) inputs, and a context factory."""
    if provider in ("eager", "compile"):

        def reference(q, k, v):
            return attention_ref(q, k, v, causal=causal)

        return (reference if provider == "eager" else torch.compile(reference)), None
    if provider.startswith("sdpa"):
        extra = {"enable_gqa": True} if gqa else {}

        def sdpa(q, k, v):
            # (B, T, H, D) -> (B, H, T, D) views; T = 1 (decode) needs no mask; else T == S here
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal, **extra
            )
            return out.transpose(1, 2)

        return sdpa, (lambda: sdpa_backend(provider))
    if provider == "replab_fast":
        from replab_fast import ops

        def fast(q, k, v):
            return ops.attention(q, k, v, causal=causal)

        return fast, None
    raise AssertionError(provider)  # pragma: no cover - PROVIDERS lists them all


def _first_call_or_skip(fn, context, inputs) -> None:
    """Run once; a backend that refuses these inputs (SDPA: "No available kernel") is a skip, with its reason."""
    try:
        with (context or contextlib.nullcontext)():
            fn(*inputs)
    except (RuntimeError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        pytest.skip(f"this provider cannot run the case: {first_line}")


@pytest.mark.gpu
def test_attention(
    benchmark, bench_ctx: BenchContext, seq_len: int, head_dim: int, causal: bool, mode: str, provider: str
) -> None:
    device = bench_ctx.device
    if not bench_ctx.is_cuda:
        pytest.skip("op-level benchmarks are GPU cases (CUDA events, L2-aware); this run is on a CPU")
    require(provider, device)
    T, D, dtype = seq_len, head_dim, torch.bfloat16
    B, H = TOKENS // T, HIDDEN // D
    if provider in ("eager", "compile") and B * H * T * T * 4 > MAX_SCORES_BYTES:
        pytest.skip(f"{provider} would materialize {B * H * T * T * 4 / 2**30:.0f} GiB of fp32 scores (limit 8 GiB)")
    fn, context = make_attention(provider, causal, gqa=False)

    def make_inputs(seed: int):
        g = torch.Generator(device=device).manual_seed(3000 + seed)
        return tuple(
            torch.randn(B, T, H, D, generator=g, device=device).to(dtype).requires_grad_(True) for _ in range(3)
        )

    _first_call_or_skip(fn, context, [t.detach() for t in make_inputs(0)])
    bench_op(
        benchmark, bench_ctx, case=f"attention/bfloat16/{mode}/{'causal' if causal else 'full'}/B{B}xT{T}xH{H}xD{D}",
        provider=provider, mode=mode, fn=fn, make_inputs=make_inputs,
        bytes_moved=attention_bytes(B, T, T, H, H, D, mode), flops=attention_flops(B, H, T, T, D, causal, mode),
        shape=[B, T, H, D], dtype="bfloat16", context=context,
        sweep={"name": f"attention bfloat16 {mode} {'causal' if causal else 'non-causal'} (B*T={TOKENS}, D={D})",
               "x_name": "seq_len", "x": T},
        extra={"causal": causal, "head_dim": D, "heads": H, "batch": B},
    )  # fmt: skip


@pytest.mark.gpu
def test_attention_decode(benchmark, bench_ctx: BenchContext, batch: int, cache_len: int, provider: str) -> None:
    device = bench_ctx.device
    if not bench_ctx.is_cuda:
        pytest.skip("op-level benchmarks are GPU cases (CUDA events, L2-aware); this run is on a CPU")
    require(provider, device)
    B, S, Hq, Hk, D, dtype = batch, cache_len, DECODE_HQ, DECODE_HK, DECODE_D, torch.bfloat16
    fn, context = make_attention(provider, causal=False, gqa=True)  # one query: the end-aligned mask sees every key

    def make_inputs(seed: int):
        g = torch.Generator(device=device).manual_seed(4000 + seed)
        q = torch.randn(B, 1, Hq, D, generator=g, device=device).to(dtype)
        k = torch.randn(B, S, Hk, D, generator=g, device=device).to(dtype)
        v = torch.randn(B, S, Hk, D, generator=g, device=device).to(dtype)
        return q, k, v

    _first_call_or_skip(fn, context, make_inputs(0))
    bench_op(
        benchmark, bench_ctx, case=f"attention-decode/bfloat16/forward/B{B}xS{S}xHq{Hq}xHk{Hk}xD{D}",
        provider=provider, mode="forward", fn=fn, make_inputs=make_inputs,
        bytes_moved=attention_bytes(B, 1, S, Hq, Hk, D, "forward"),
        flops=attention_flops(B, Hq, 1, S, D, False, "forward"),
        shape=[B, 1, S, Hq, Hk, D], dtype="bfloat16", context=context,
        sweep={"name": f"attention decode bfloat16 (B={B}, Hq={Hq}, Hk={Hk}, D={D}), latency per token",
               "x_name": "cache_len", "x": S},
        extra={"batch": B, "cache_len": S, "latency": "per token (one query per sequence)"},
    )  # fmt: skip
