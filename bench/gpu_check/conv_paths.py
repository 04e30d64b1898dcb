"""One tiny layer per kernel path of the CUDA conv, forward and backward: what compute-sanitizer runs.

    python -m bench.gpu_check.conv_paths PATH [--device cuda|cpu]
    compute-sanitizer --tool memcheck --error-exitcode 3 python -m bench.gpu_check.conv_paths PATH

The paths (csrc/conv2d_cuda.cu's pick_forward_path takes the direct kernel when every weight fits
in 32 KB and a conv output sums at most 256 products, else the GEMM; the shapes below land on each):
  direct-fp32       direct_fused_kernel (weights in shared memory, pooling fused) and the simple
                    backward: 1 -> 6, 5x5, ReLU, max-pool 2/2 (25 products)
  gemm-fp32         igemm_simt_kernel + pool_epilogue_kernel; the GEMM backward (WgradOp, DgradOp
                    with 32 input channels): 32 -> 32, 3x3, pad 1, ReLU, max-pool 2/2 (288 products)
  gemm-bf16         igemm_wmma_kernel with the cp.async weight pipeline (288, a multiple of 8); the
                    GEMM backward on tensor cores: 32 -> 32, 3x3, pad 1, ReLU, max-pool 2/2
  gemm-bf16-dcol    igemm_wmma_kernel loading the weight through registers (363 products); grad_input
                    by DcolOp + col2im (3 input channels): AlexNet's conv1, 3 -> 16, 11x11, stride 4, ReLU
  fp64-gemm         igemm_simt_kernel in float64 and the simple backward: 32 -> 8, 3x3, tanh

Each runs the fused op forward and backward once and checks it against the float64 reference
(loosely: the parity tests hold the real bounds; this is the sanitizer's workload), and exits 1
when it differs. On a CPU (the rehearsal) the same layers run the C++ paths.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["ConvPath", "PATHS", "dtype_on", "forward_path", "run_path"]


@dataclass(frozen=True)
class ConvPath:
    dtype: str
    batch: int
    in_channels: int
    size: int  # input height = width
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    activation: Optional[str] = "relu"
    pool: Optional[tuple] = None


PATHS = {
    "direct-fp32": ConvPath("float32", 2, 1, 12, 6, 5, pool=("max", 2, 2)),
    "gemm-fp32": ConvPath("float32", 2, 32, 9, 32, 3, padding=1, pool=("max", 2, 2)),
    "gemm-bf16": ConvPath("bfloat16", 2, 32, 9, 32, 3, padding=1, pool=("max", 2, 2)),
    "gemm-bf16-dcol": ConvPath("bfloat16", 2, 3, 31, 16, 11, stride=4),
    "fp64-gemm": ConvPath("float64", 2, 32, 7, 8, 3, activation="tanh"),
}
DIRECT_MAX_WEIGHT_BYTES, DIRECT_MAX_PRODUCTS = 32 * 1024, 256  # pick_forward_path's rule


def forward_path(p: ConvPath) -> str:
    """Which forward kernel csrc/conv2d_cuda.cu picks for this layer on CUDA (fp32 accumulators)."""
    cg = p.in_channels // p.groups
    weights = p.out_channels * cg * p.kernel * p.kernel
    acc = 8 if p.dtype == "float64" else 4
    return "direct" if weights * acc <= DIRECT_MAX_WEIGHT_BYTES and cg * p.kernel**2 <= DIRECT_MAX_PRODUCTS else "gemm"


TOLERANCE = {"float32": 1e-4, "float64": 1e-10, "bfloat16": 3e-2}  # relative to max(1, |reference|)


def dtype_on(p: ConvPath, device: torch.device) -> str:
    """The dtype a path runs in on ``device``: the C++ CPU conv takes float32 / float64, so a
    bfloat16 path runs in float32 there."""
    return "float32" if device.type == "cpu" and p.dtype == "bfloat16" else p.dtype


def run_path(name: str, device: torch.device) -> float:
    """The largest relative difference from the float64 reference over the output and the gradients."""
    from replab_fast import ops
    from replab_fast.kernels.conv2d.reference import conv2d_ref

    p = PATHS[name]
    dtype = getattr(torch, dtype_on(p, device))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(p.batch, p.in_channels, p.size, p.size, generator=g, dtype=torch.float64)
    w = torch.randn(p.out_channels, p.in_channels // p.groups, p.kernel, p.kernel, generator=g, dtype=torch.float64)
    w = w * (p.in_channels // p.groups * p.kernel**2) ** -0.5
    b = 0.1 * torch.randn(p.out_channels, generator=g, dtype=torch.float64)
    args = dict(stride=p.stride, padding=p.padding, groups=p.groups, activation=p.activation, pool=p.pool)
    fast_in = [t.to(device=device, dtype=dtype).requires_grad_(True) for t in (x, w, b)]
    # the reference starts from the values the fast path got (rounded to its dtype), in float64
    exact_in = [t.detach().double().cpu().requires_grad_(True) for t in fast_in]
    y = ops.conv2d(*fast_in, **args)
    y_exact = conv2d_ref(*exact_in, **args)
    dy = torch.randn(y_exact.shape, generator=g, dtype=torch.float64)
    fast_grads = torch.autograd.grad(y, fast_in, dy.to(device=device, dtype=dtype))
    exact_grads = torch.autograd.grad(y_exact, exact_in, dy)
    if device.type == "cuda":
        torch.cuda.synchronize()
    worst = 0.0
    for fast, exact in zip([y, *fast_grads], [y_exact, *exact_grads]):
        diff = (fast.detach().double().cpu() - exact).abs().max().item()
        worst = max(worst, diff / max(1.0, exact.abs().max().item()))
    return worst


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", choices=sorted(PATHS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    worst = run_path(args.path, device)
    dtype = dtype_on(PATHS[args.path], device)
    ok = worst <= TOLERANCE[dtype]
    print(f"conv path {args.path} on {device.type} ({dtype}): largest relative difference {worst:.3g} "
          f"({'within' if ok else 'OUTSIDE'} {TOLERANCE[dtype]:g})")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
