"""The device's ceilings, as their own cases, and the timing method's stability self-check.

- ceiling/copy: a device-to-device copy of a 1 GiB float32 buffer (64 MiB on a CPU), counting
  bytes read plus bytes written. The acceptance: within 15% of what such a GPU's copy moves
  (about 3.0 TB/s on an H100, 4.3 TB/s on an H200).
- ceiling/matmul: an 8192^3 bf16 matmul on a GPU (1024^3 fp32 on a CPU), 2*M*N*K FLOPs.
- stability/*: the same case timed twice in one run; the medians must differ by less than 3%,
  or the method needs fixing before any kernel is compared. GPU only.

The ceilings are measured once per session (the ``bench_ctx`` fixture) before any other case, and
every case's fraction of the ceiling divides by these same numbers.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from bench.ceilings import expected_copy_gbps
from bench.context import BenchContext
from bench.records import record
from replab_fast.timing import first_call, measure, plan_inputs

STABILITY_LIMIT = 0.03  # the acceptance: medians of the same case, timed twice, within 3%
COPY_TOLERANCE = 0.15  # the acceptance: copy bandwidth within 15% of the GPU's known rate


def test_ceiling_copy_bandwidth(benchmark, bench_ctx: BenchContext) -> None:
    c = bench_ctx.ceilings
    gbps = c.copy_bytes_per_s / 1e9
    expected = expected_copy_gbps(bench_ctx.env.get("gpu"))
    extra = {"ceiling": "copy", "expected_copy_gbps": expected}
    if expected:
        extra["copy_rel_error"] = gbps / expected - 1.0
        extra["copy_ok"] = abs(gbps / expected - 1.0) <= COPY_TOLERANCE
    record(
        benchmark, bench_ctx, c.copy_timing, section="device", case="ceiling/copy", provider="torch",
        mode="forward", shape=[c.copy_numel], dtype="float32", bytes_moved=c.copy_bytes, extra=extra,
    )  # fmt: skip
    if expected and not extra["copy_ok"]:
        warnings.warn(f"copy bandwidth {gbps:.0f} GB/s is not within 15% of the expected {expected:.0f} GB/s")


def test_ceiling_matmul(benchmark, bench_ctx: BenchContext) -> None:
    c = bench_ctx.ceilings
    M, N, K = c.matmul_shape
    record(
        benchmark, bench_ctx, c.matmul_timing, section="device", case=f"ceiling/matmul-{c.matmul_dtype}",
        provider="torch", mode="forward", shape=[M, N, K], dtype=c.matmul_dtype, flops=2 * M * N * K,
        extra={"ceiling": "matmul"},
    )  # fmt: skip


def _copy_case(device: torch.device):
    gen = torch.Generator(device=device).manual_seed(7)
    src = torch.rand(256 * 1024 * 1024, generator=gen, device=device)  # 1 GiB: streams through L2
    dst = torch.empty_like(src)
    return [lambda: dst.copy_(src)], 2 * src.numel() * 4, [src.numel()], "float32", "streaming", False


def _rms_norm_case(device: torch.device, policy):
    # A small, cache-resident op (16 MiB in, 16 MiB out): the case that needs input rotation
    # and the head start to be timed right.
    M, N = 8192, 1024
    bytes_moved = 2 * M * N * 2 + N * 2
    n_sets, flush, cache = plan_inputs(bytes_moved, device, policy)
    gen = torch.Generator(device=device).manual_seed(11)
    weight = torch.randn(N, generator=gen, device=device).to(torch.bfloat16)
    xs = [torch.randn(M, N, generator=gen, device=device).to(torch.bfloat16) for _ in range(n_sets)]
    fns = [(lambda x=x: F.rms_norm(x, (N,), weight, 1e-6)) for x in xs]
    return fns, bytes_moved, [M, N], "bfloat16", cache, flush


@pytest.mark.gpu
@pytest.mark.parametrize("which", ["copy-1GiB", "rms_norm-8192x1024-bf16"])
def test_same_case_timed_twice(benchmark, bench_ctx: BenchContext, which: str) -> None:
    if not bench_ctx.is_cuda:
        pytest.skip("stability self-check: GPU only (CUDA-event timing is what the 3% acceptance is about)")
    device = bench_ctx.device
    policy = bench_ctx.policy("op", benchmark)
    if which.startswith("copy"):
        fns, bytes_moved, shape, dtype, cache, flush = _copy_case(device)
    else:
        fns, bytes_moved, shape, dtype, cache, flush = _rms_norm_case(device, policy)
    first_s = first_call(fns[0], device)
    t1 = measure(fns, device, policy, flush_l2=flush, cache=cache, first_call_s=first_s)
    t2 = measure(fns, device, policy, flush_l2=flush, cache=cache, first_call_s=first_s)
    diff = abs(t1.median - t2.median) / min(t1.median, t2.median)
    ok = diff < STABILITY_LIMIT
    record(
        benchmark, bench_ctx, t1, section="device", case=f"stability/{which}", provider="torch", mode="forward",
        shape=shape, dtype=dtype, bytes_moved=bytes_moved,
        extra={"median_first_s": t1.median, "median_second_s": t2.median, "stability_diff": diff,
               "stability_ok": ok, "stability_limit": STABILITY_LIMIT, "reps_second": len(t2.times_s)},
    )  # fmt: skip
    if not ok:
        warnings.warn(f"{which}: the same case timed twice differs by {diff:.1%} at the median (limit 3%)")
