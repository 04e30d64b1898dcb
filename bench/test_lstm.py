"""Op-level benchmark of one LSTM layer: every provider side by side, through bench/op_cases.py.

Case: one layer, input_size = hidden size H, x (T, B, H) time-major, zero initial state,
modes forward (a training forward) and full (forward + backward), sweeping the batch
B in {1, 8, 64, 256}, H in {128, 256, 512, 1024}, T in {32, 256}, bfloat16 and float32.
Providers:
  eager        replab_fast.models.lstm.LSTM, the reference (a Python loop over the steps, cell by cell)
  compile      the same module under torch.compile (skipped at T = 256: compiling the unrolled
               256-step loop takes minutes per case)
  torch        torch.nn.LSTM with the same weights (cuDNN on CUDA)
  replab_fast  replab_fast.nn.LSTM, the drop-in replab_fast.accelerate swaps in (Triton kernels:
               persistent for H <= 256, a cuBLAS GEMM and a fused pointwise kernel per step above)

FLOPs: the two projections, 2 T B 4H (in + H) = 8 T B H (in + H) forward (the pointwise part,
~30 T B H, is left out); backward twice that (dx and dW of both projections); full three times.
Bytes (the fewest each mode must move, elements of size s): forward reads x and the weights and
writes y, (T B (in + H) + 4H (in + H) + 8H) s; full adds reading dy and writing dx, dW and db,
twice the forward. At small B neither bound is what limits an RNN: its T steps are sequential, so
the per-step latency does; the record's ratio to cuDNN (``torch``) is the number to read.

Targets (read off a GPU run on an H100 / H200, never asserted): replab_fast at least 1.0x the
speed of cuDNN at every batch, at least 2x at B <= 16 (the persistent path's case; at H >= 512
the per-step path is expected to be near cuDNN, not 2x: replab_fast/kernels/lstm says why).

GPU only: on a CPU these cases are skipped (the Triton kernels would run in the interpreter).
"""

from __future__ import annotations

import pytest
import torch

from bench.context import BenchContext, quick_sweep
from bench.op_cases import bench_op
from bench.providers import fast_drop_in, require
from replab_fast.models.lstm import LSTM

PROVIDERS = ("eager", "compile", "torch", "replab_fast")
MODES = ("forward", "full")
BATCH_QUICK, BATCH_FULL = (1, 64), (1, 8, 64, 256)
HIDDEN_QUICK, HIDDEN_FULL = (256, 1024), (128, 256, 512, 1024)
SEQ_QUICK, SEQ_FULL = (32,), (32, 256)
DTYPES_QUICK, DTYPES_FULL = ("bfloat16",), ("bfloat16", "float32")
COMPILE_MAX_SEQ = 32  # torch.compile of the reference's Python loop: minutes per case beyond this


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "batch" not in metafunc.fixturenames:
        return
    quick = quick_sweep(metafunc.config)
    metafunc.parametrize("dtype", DTYPES_QUICK if quick else DTYPES_FULL)
    metafunc.parametrize("seq_len", SEQ_QUICK if quick else SEQ_FULL)
    metafunc.parametrize("hidden", HIDDEN_QUICK if quick else HIDDEN_FULL)
    metafunc.parametrize("batch", BATCH_QUICK if quick else BATCH_FULL)
    metafunc.parametrize("mode", MODES)
    metafunc.parametrize("provider", PROVIDERS)


def lstm_flops(mode: str, T: int, B: int, n_input: int, H: int) -> int:
    forward = 8 * T * B * H * (n_input + H)
    return {"forward": forward, "full": 3 * forward}[mode]


def lstm_bytes(mode: str, T: int, B: int, n_input: int, H: int, elem: int) -> int:
    forward = (T * B * (n_input + H) + 4 * H * (n_input + H) + 8 * H) * elem
    return {"forward": forward, "full": 2 * forward}[mode]


def _torch_lstm(reference: LSTM) -> torch.nn.LSTM:
    """torch.nn.LSTM holding the reference's weights (the state_dict keys are the same)."""
    weight = reference.weight_ih_l0
    module = torch.nn.LSTM(reference.input_size, reference.hidden_size, reference.num_layers, device=weight.device,
                           dtype=weight.dtype)  # fmt: skip
    module.load_state_dict(reference.state_dict())
    return module


@pytest.mark.gpu
def test_lstm(benchmark, bench_ctx: BenchContext, dtype: str, seq_len: int, hidden: int, batch: int, mode: str,
              provider: str) -> None:  # fmt: skip
    device = bench_ctx.device
    if not bench_ctx.is_cuda:
        pytest.skip("op-level benchmarks are GPU cases (CUDA events, L2-aware); this run is on a CPU")
    require(provider, device)
    if provider == "compile" and seq_len > COMPILE_MAX_SEQ:
        pytest.skip(f"torch.compile of the reference's {seq_len}-step Python loop takes minutes per case")
    torch_dtype = getattr(torch, dtype)
    T, B, H = seq_len, batch, hidden
    torch.manual_seed(0)
    reference = LSTM(H, H, 1, device=device, dtype=torch_dtype)  # torch.nn.LSTM's init: U(-1/sqrt(H), 1/sqrt(H))
    extra = {}

    if provider in ("eager", "compile"):
        module = reference
        run = torch.compile(module) if provider == "compile" else module
    elif provider == "torch":
        module = run = _torch_lstm(reference)
    elif provider == "replab_fast":
        module, reason = fast_drop_in(reference)
        if module is None:
            pytest.skip(reason)
        run = module
        from replab_fast.kernels.lstm.launch import lstm_config

        extra["path"] = "persistent" if lstm_config(B, H, torch_dtype, device).persistent else "per step"
    else:  # pragma: no cover - PROVIDERS lists them all
        raise AssertionError(provider)

    def fn(x):
        return run(x)[0]  # (T, B, H)

    def make_inputs(seed: int):
        g = torch.Generator(device=device).manual_seed(1000 + seed)
        x = torch.randn(T, B, H, generator=g, device=device).to(torch_dtype)
        return (x.requires_grad_(True),)

    elem = torch.empty((), dtype=torch_dtype).element_size()
    bench_op(
        benchmark, bench_ctx, case=f"lstm/{dtype}/{mode}/T{T}xB{B}xH{H}", provider=provider, mode=mode, fn=fn,
        make_inputs=make_inputs, params=list(module.parameters()), bytes_moved=lstm_bytes(mode, T, B, H, H, elem),
        flops=lstm_flops(mode, T, B, H, H), shape=[T, B, H], dtype=dtype,
        sweep={"name": f"lstm {dtype} {mode} (T={T}, H={H})", "x_name": "batch", "x": B}, extra=extra or None,
    )  # fmt: skip
