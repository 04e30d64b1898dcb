"""Stage a of `make gpu-check`: the machine's facts and its measured ceilings -> machine.json.

    python -m bench.gpu_check.facts --out machine.json [--device cuda|cpu]

Records nvidia-smi's view (name, driver, memory, clocks, power limit), the versions (python,
torch, CUDA, cuDNN, triton, pytest, pytest-benchmark, matplotlib, nvcc), the device's properties,
the TF32 settings the benchmarks run under (torch's defaults: cuDNN convolutions in TF32,
matmuls not), the tools found (ninja, compute-sanitizer), and the two ceilings every benchmark
is divided by (bench/ceilings.py): a device-to-device copy (bytes read + written per second) and
a large bf16 matmul (fp32 on a CPU), next to the copy rate expected of a known GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import torch

from bench.ceilings import expected_copy_gbps, measure_ceilings
from bench.environment import environment

NVIDIA_SMI_FIELDS = ("name", "driver_version", "memory.total", "clocks.sm", "clocks.max.sm", "clocks.mem",
                     "power.limit", "temperature.gpu", "persistence_mode")  # fmt: skip


def _run(argv: list[str], timeout: float = 30) -> Optional[str]:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def nvidia_smi() -> Optional[dict[str, str]]:
    text = _run(["nvidia-smi", f"--query-gpu={','.join(NVIDIA_SMI_FIELDS)}", "--format=csv,noheader"])
    if not text:
        return None
    values = [v.strip() for v in text.splitlines()[0].split(",")]
    return dict(zip(NVIDIA_SMI_FIELDS, values))


def tools() -> dict[str, Optional[str]]:
    nvcc = _run(["nvcc", "--version"])
    sanitizer = shutil.which("compute-sanitizer")
    sanitizer_version = _run([sanitizer, "--version"]) if sanitizer else None
    return {
        "nvcc": nvcc.splitlines()[-1] if nvcc else None,
        "ninja": _run(["ninja", "--version"]),
        "compute_sanitizer": sanitizer,
        "compute_sanitizer_version": sanitizer_version.splitlines()[-1] if sanitizer_version else None,
    }


def tf32_settings() -> dict[str, Any]:
    return {
        "cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }


def facts(device: torch.device) -> dict[str, Any]:
    env = environment(device)
    result: dict[str, Any] = {"device": device.type, "environment": env, "tools": tools(), "tf32": tf32_settings(),
                              "cpu_count": os.cpu_count()}  # fmt: skip
    if device.type == "cuda":
        result["nvidia_smi"] = nvidia_smi()
    ceilings = measure_ceilings(device, quick=True)
    result["ceilings"] = ceilings.as_dict()
    result["ceilings"]["expected_copy_gbps"] = expected_copy_gbps(env.get("gpu"))
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("facts: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    data = facts(device)
    Path(args.out).write_text(json.dumps(data, indent=1, default=str))
    c = data["ceilings"]
    print(f"facts: {data['environment'].get('gpu') or 'CPU'}: copy {c['copy_gbps']:.0f} GB/s, "
          f"{c['matmul_dtype']} matmul {c['matmul_tflops']:.1f} TFLOP/s -> {args.out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
