"""The device's ceilings (copy bandwidth, matmul rate) and a case's roofline against them.

``measure_ceilings`` measures, once per session, a device-to-device copy (bytes read plus bytes
written per second) and a large matmul (bf16 on CUDA, fp32 on a CPU). Each case states the bytes
it must move and the FLOPs it must do; ``roofline`` turns them into GB/s, TFLOP/s, the floor time
``max(bytes / copy rate, flops / matmul rate)`` and the fraction of the ceiling, floor / median
(1.0 = at the speed of light of this device). ``expected_copy_gbps`` is what a known GPU's copy
should reach (the acceptance of the copy ceiling).

Nothing here runs at import: no CUDA call, no compilation, no global setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from replab_fast.timing import Timing, TimingPolicy, measure

__all__ = ["EXPECTED_COPY_GBPS", "expected_copy_gbps", "Ceilings", "measure_ceilings", "roofline"]

# Device-to-device copy rates (bytes read + written) a plain copy reaches on these GPUs' HBM: the
# device benchmarks check that the suite's own copy measures within 15% of them, a sanity check
# of the timing itself.
EXPECTED_COPY_GBPS = {"H200": 4300.0, "H100": 3000.0}


def expected_copy_gbps(gpu_name: Optional[str]) -> Optional[float]:
    """The expected copy rate of a known GPU (H100 SXM/HBM3, H200), None for others."""
    if not gpu_name:
        return None
    name = gpu_name.upper()
    if "H200" in name:
        return EXPECTED_COPY_GBPS["H200"]
    if "H100" in name and "PCIE" not in name:
        return EXPECTED_COPY_GBPS["H100"]
    return None


@dataclass
class Ceilings:
    copy_bytes_per_s: float  # device-to-device copy, bytes read + bytes written per second
    matmul_flops_per_s: float  # a large matmul, FLOP/s
    matmul_dtype: str  # "bfloat16" on CUDA, "float32" on a CPU
    copy_bytes: int  # bytes counted per copy (2x the buffer)
    copy_numel: int  # float32 elements per buffer
    matmul_shape: tuple[int, int, int]  # (M, N, K)
    copy_timing: Timing
    matmul_timing: Timing

    def as_dict(self) -> dict[str, Any]:
        return {
            "copy_gbps": self.copy_bytes_per_s / 1e9,
            "matmul_tflops": self.matmul_flops_per_s / 1e12,
            "matmul_dtype": self.matmul_dtype,
            "copy_bytes": self.copy_bytes,
            "matmul_shape": list(self.matmul_shape),
        }


def measure_ceilings(device: torch.device, *, quick: bool = False) -> Ceilings:
    """Measure the copy bandwidth and the matmul rate of ``device`` (random data, never zeros)."""
    gen = torch.Generator(device=device).manual_seed(1234)
    if device.type == "cuda":
        copy_numel = 256 * 1024 * 1024  # 1 GiB of float32 per buffer: 20x an H100's L2
        mm = (8192, 8192, 8192)
        mm_dtype = torch.bfloat16
        policy = TimingPolicy(warmup_ms=100, rep_ms=300 if quick else 600, min_reps=10, max_reps=500,
                              head_start=True, rotate=False)
    else:
        copy_numel = 16 * 1024 * 1024  # 64 MiB per buffer
        mm = (1024, 1024, 1024)
        mm_dtype = torch.float32
        policy = TimingPolicy(warmup_ms=50, rep_ms=300, min_reps=3, max_reps=50, head_start=False, rotate=False)

    src = torch.rand(copy_numel, generator=gen, device=device)
    dst = torch.empty_like(src)
    copy_timing = measure([lambda: dst.copy_(src)], device, policy, cache="streaming")
    copy_bytes = 2 * src.numel() * src.element_size()
    src = dst = None  # free the buffers before the matmul

    M, N, K = mm
    a = torch.randn(M, K, generator=gen, device=device).to(mm_dtype)
    b = torch.randn(K, N, generator=gen, device=device).to(mm_dtype)
    mm_timing = measure([lambda: torch.mm(a, b)], device, policy, cache="none")
    a = b = None  # free the operands
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Ceilings(
        copy_bytes_per_s=copy_bytes / copy_timing.median,
        matmul_flops_per_s=2.0 * M * N * K / mm_timing.median,
        matmul_dtype=str(mm_dtype).removeprefix("torch."),
        copy_bytes=copy_bytes,
        copy_numel=copy_numel,
        matmul_shape=mm,
        copy_timing=copy_timing,
        matmul_timing=mm_timing,
    )


def roofline(
    median_s: float, bytes_moved: Optional[int], flops: Optional[int], ceilings: Optional[Ceilings]
) -> dict[str, Any]:
    """Achieved GB/s and TFLOP/s, the floor time and the fraction of the ceiling (floor / median)."""
    out: dict[str, Any] = {"gbps": None, "tflops": None, "floor_s": None, "bound": None, "frac_ceiling": None}
    if not median_s or median_s <= 0:
        return out
    if bytes_moved:
        out["gbps"] = bytes_moved / median_s / 1e9
    if flops:
        out["tflops"] = flops / median_s / 1e12
    if ceilings is not None and (bytes_moved or flops):
        t_mem = (bytes_moved or 0) / ceilings.copy_bytes_per_s
        t_math = (flops or 0) / ceilings.matmul_flops_per_s
        floor = max(t_mem, t_math)
        out["floor_s"] = floor
        out["bound"] = "memory" if t_mem >= t_math else "compute"
        out["frac_ceiling"] = floor / median_s
    return out
