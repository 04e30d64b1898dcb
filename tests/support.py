"""What the tests share: parity helpers and the checks of the compiled CUDA path.

- ``DEVICES``: parametrize over CPU (Triton's interpreter) and CUDA, the CUDA case skipped with
  a stated reason where there is no GPU.
- ``random_tensor``: fresh seeded inputs, drawn in float64 then cast (never zeros or ones).
- ``assert_parity``: the fast path against the float64 reference; for fp16/bf16 (and fp32 when
  the fp32 reference run is given) the parity rule of ``replab_fast.parity``: error <= 2 x the
  reference's own error at that dtype + a small floor.
- ``poisoned_memory``: every ``torch.empty`` is filled with NaN, so an output element a kernel
  never writes fails the test.
- ``hopper_toolchain_reason``, ``local_memory_bytes``: for the tests that compile the Triton
  kernels for sm_90 without a GPU (triton's bundled ptxas and cuobjdump).
- ``write_image_folder``: a small folder of labelled images (PNG and JPEG, awkward sizes).

Test files import it as ``support`` (pyproject's pytest ``pythonpath`` holds tests/).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from typing import Iterator, Optional

import pytest
import torch
from torch import Tensor

from replab_fast import parity
from replab_fast.parity import FLOORS, magnitude, max_abs_error

CUDA_REASON = "needs a CUDA device (the compiled Triton kernels); this machine has none"
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason=CUDA_REASON)]),
]

FLOAT64_RTOL = FLOORS[torch.float64]  # both sides in float64: they differ only in summation order
LOW_PRECISION_FLOOR = FLOORS[torch.float16]  # absolute floor of the 2x rule, relative to max(1, |reference|)


def random_tensor(shape, dtype, device, seed: int, *, requires_grad=False, scale=1.0, shift=0.0) -> Tensor:
    """shift + scale * N(0, 1), drawn in float64 on the CPU from ``seed``, then cast and moved."""
    g = torch.Generator().manual_seed(seed)
    t = (shift + scale * torch.randn(shape, generator=g, dtype=torch.float64)).to(device=device, dtype=dtype)
    return t.requires_grad_(requires_grad)


def assert_parity(
    name: str, fast: Tensor, ref64: Tensor, ref_low: Optional[Tensor] = None, *, fp32_rtol: Optional[float] = None
) -> None:
    """``fast`` (any dtype) against the float64 reference ``ref64``.

    float64: within FLOAT64_RTOL. fp16 / bf16, and float32 when ``ref_low`` is given: the parity
    rule (``replab_fast.parity``): within 2x the error of ``ref_low`` (the reference run at fast's
    dtype) plus the dtype's floor. float32 without ``ref_low``: within ``fp32_rtol`` (state why
    next to the test). Every bound is relative to max(1, max |ref64|). NaN anywhere fails.
    """
    assert fast.shape == ref64.shape, f"{name}: shape {tuple(fast.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(fast).any(), f"{name}: NaN (an unwritten element?)"
    if fast.numel() == 0:
        return
    err = max_abs_error(fast, ref64)
    scale = magnitude(ref64)
    if fast.dtype == torch.float64:
        assert err <= FLOAT64_RTOL * scale, f"{name}: float64 error {err:.3g}"
    elif fast.dtype == torch.float32 and ref_low is None:
        assert fp32_rtol is not None, f"{name}: float32 needs fp32_rtol or the reference run in float32"
        assert err <= fp32_rtol * scale, f"{name}: float32 error {err:.3g} > {fp32_rtol:g} x {scale:.3g}"
    else:
        assert ref_low is not None, f"{name}: the 2x rule needs the reference run at {fast.dtype}"
        result = parity.check(name, fast, ref_low, ref64)
        assert result.passed, str(result)


@contextlib.contextmanager
def poisoned_memory() -> Iterator[None]:
    """Inside the block, torch.empty (and every uninitialized allocation) is filled with NaN."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)


def hopper_toolchain_reason() -> Optional[str]:
    """Why the sm_90 compile checks cannot run here (triton's bundled ptxas missing), or None."""
    import triton

    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return None if os.path.exists(ptxas) else f"triton's bundled ptxas is not at {ptxas}"


def local_memory_bytes(compiled):
    """Stack (spill) bytes per thread from the cubin, via triton's bundled cuobjdump (None if absent)."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, timeout=60).stdout
    finally:
        os.unlink(f.name)
    match = re.search(r"STACK:(\d+)", out)
    return int(match.group(1)) if match else None


def write_image_folder(folder, per_class: int, seed: int = 0, classes=("cat", "dog", "fish")) -> None:
    """``folder/<class>/<i>.png|jpg``: ``per_class`` images of awkward sizes per class, each class
    its own tint, the first of each grey."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for label, name in enumerate(classes):
        (folder / name).mkdir(parents=True)
        for i in range(per_class):
            width, height = int(rng.integers(30, 90)), int(rng.integers(30, 90))
            pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8) + np.uint8(60 * label % 176)
            image = Image.fromarray(pixels)
            if i == 0:
                image = image.convert("L")
            image.save(folder / name / f"{i}.{'jpg' if i % 2 else 'png'}")
