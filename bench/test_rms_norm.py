"""Op-level benchmark of RMSNorm: every provider side by side, through bench/op_cases.py.

Case: x (M, N) -> RMSNorm over the last dimension with a weight (N,), M = 4096 rows, a sweep over
the hidden size N in {1024, 2048, 4096, 8192, 16384}, bfloat16 and float32, modes forward,
backward and full (forward + backward). Providers:
  eager        replab_fast.models.llama.RMSNorm, the reference (normalizes in fp32, casts back)
  compile      the same module under torch.compile
  torch        torch.nn.functional.rms_norm, PyTorch's own op
  liger        Liger-Kernel's LigerRMSNorm (casting_mode="llama"), when installed
  replab_fast  replab_fast.nn.RMSNorm, the drop-in replab_fast.accelerate swaps in (Triton kernels)

Bytes (the fewest each mode must move, elements of size s): forward reads x and w and writes y,
(2MN + N) s; backward reads dy, x and w and writes dx and dw, (3MN + 2N) s (our kernel recomputes
1/rms from x instead of saving it; the dweight partials, ~(2 * SMs) x N fp32, are left out);
full is both, (5MN + 3N) s. The FLOPs (about 4MN each way) are negligible: the floor is
bytes / copy bandwidth.

Targets (read off a GPU run, never asserted): bfloat16 forward at >= 85% of the measured
copy bandwidth for N >= 4096 (``frac_ceiling`` in the record); the full pass at least as fast as
the best of torch, compile and liger at every N.

GPU only: on a CPU these cases are skipped (the Triton kernels would run in the interpreter).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.context import BenchContext, quick_sweep
from bench.op_cases import MODES, bench_op
from bench.providers import fast_drop_in, require
from replab_fast.models.llama import RMSNorm

PROVIDERS = ("eager", "compile", "torch", "liger", "replab_fast")
ROWS = 4096
EPS = 1e-6
HIDDEN_QUICK = (1024, 4096, 16384)
HIDDEN_FULL = (1024, 2048, 4096, 8192, 16384)
DTYPES_QUICK = ("bfloat16",)
DTYPES_FULL = ("bfloat16", "float32")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "hidden" not in metafunc.fixturenames:
        return
    quick = quick_sweep(metafunc.config)
    metafunc.parametrize("dtype", DTYPES_QUICK if quick else DTYPES_FULL)
    metafunc.parametrize("hidden", HIDDEN_QUICK if quick else HIDDEN_FULL)
    metafunc.parametrize("mode", MODES)
    metafunc.parametrize("provider", PROVIDERS)


def rms_norm_bytes(mode: str, M: int, N: int, elem: int) -> int:
    return {"forward": 2 * M * N + N, "backward": 3 * M * N + 2 * N, "full": 5 * M * N + 3 * N}[mode] * elem


def rms_norm_flops(mode: str, M: int, N: int) -> int:
    return {"forward": 4 * M * N, "backward": 8 * M * N, "full": 12 * M * N}[mode]


@pytest.mark.gpu
def test_rms_norm(benchmark, bench_ctx: BenchContext, dtype: str, hidden: int, mode: str, provider: str) -> None:
    device = bench_ctx.device
    if not bench_ctx.is_cuda:
        pytest.skip("op-level benchmarks are GPU cases (CUDA events, L2-aware); this run is on a CPU")
    require(provider, device)
    torch_dtype = getattr(torch, dtype)
    M, N = ROWS, hidden

    gen = torch.Generator(device=device).manual_seed(0)
    reference = RMSNorm(N, EPS, device=device, dtype=torch_dtype)
    with torch.no_grad():  # a trained-looking weight, never all ones
        reference.weight.copy_(1.0 + 0.1 * torch.randn(N, generator=gen, device=device))

    if provider == "eager":
        module = reference
        fn = module
    elif provider == "compile":
        module = reference
        fn = torch.compile(module)
    elif provider == "torch":
        module = reference

        def fn(x):
            return F.rms_norm(x, (N,), module.weight, EPS)

    elif provider == "liger":
        from liger_kernel.transformers.rms_norm import LigerRMSNorm

        module = LigerRMSNorm(hidden_size=N, eps=EPS, casting_mode="llama").to(device=device, dtype=torch_dtype)
        with torch.no_grad():
            module.weight.copy_(reference.weight)
        fn = module
    elif provider == "replab_fast":
        module, reason = fast_drop_in(reference)
        if module is None:
            pytest.skip(reason)
        fn = module
    else:  # pragma: no cover - PROVIDERS lists them all
        raise AssertionError(provider)

    def make_inputs(seed: int):
        g = torch.Generator(device=device).manual_seed(1000 + seed)
        x = torch.randn(M, N, generator=g, device=device).to(torch_dtype)
        return (x.requires_grad_(True),)

    elem = torch.empty((), dtype=torch_dtype).element_size()
    bench_op(
        benchmark, bench_ctx, case=f"rms_norm/{dtype}/{mode}/{M}x{N}", provider=provider, mode=mode, fn=fn,
        make_inputs=make_inputs, params=list(module.parameters()), bytes_moved=rms_norm_bytes(mode, M, N, elem),
        flops=rms_norm_flops(mode, M, N), shape=[M, N], dtype=dtype,
        sweep={"name": f"rms_norm {dtype} {mode} (M={M})", "x_name": "hidden", "x": N},
    )  # fmt: skip
