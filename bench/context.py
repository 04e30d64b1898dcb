"""The session context: the device a session benchmarks, its options, timing policies and ceilings.

``resolve_device`` reads --bench-device (also at collection, where the case lists depend on it);
``BenchContext`` is the one object per pytest session (the ``bench_ctx`` fixture of conftest.py).

Nothing here runs at import: no CUDA call, no compilation, no global setting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from bench.ceilings import Ceilings, measure_ceilings
from replab_fast.timing import POLICIES, TimingPolicy

__all__ = ["resolve_device", "quick_sweep", "headline", "BenchContext"]


def resolve_device(config: Any) -> torch.device:
    """The device a session benchmarks: --bench-device / REPLAB_BENCH_DEVICE, else cuda when available."""
    name = config.getoption("--bench-device", default=None)
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        import pytest

        raise pytest.UsageError("--bench-device cuda, but torch sees no CUDA device")
    return device


def quick_sweep(config: Any) -> bool:
    """Whether a kernel benchmark lists its quick sweep: --quick, or off CUDA (there every kernel
    case skips: list the quick set only, to say so once per case)."""
    if resolve_device(config).type != "cuda":
        return True
    return bool(config.getoption("--quick", default=False)) or headline(config)


def headline(config: Any) -> bool:
    """Whether the session runs the headline set (--headline: make gpu-check's stage d)."""
    return bool(config.getoption("--headline", default=False))


@dataclass
class BenchContext:
    """One per pytest session (the ``bench_ctx`` fixture)."""

    device: torch.device
    quick: bool  # the quick sweep set (make gpu-check's default)
    budget_s: Optional[float]  # cases that start after this many seconds are skipped
    env: dict[str, Any]
    jsonl_path: Optional[str] = None  # each recorded case is also appended here, as it happens
    started: float = field(default_factory=time.monotonic)
    _ceilings: Optional[Ceilings] = None

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def ceilings(self) -> Ceilings:
        """Measured on first use, once per session."""
        if self._ceilings is None:
            self._ceilings = measure_ceilings(self.device, quick=self.quick)
        return self._ceilings

    @property
    def ceilings_measured(self) -> Optional[Ceilings]:
        return self._ceilings

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def over_budget(self) -> bool:
        return self.budget_s is not None and self.elapsed() > self.budget_s

    def policy(self, kind: str, benchmark: Any = None) -> TimingPolicy:
        """The timing policy for an "op" or "model" case here (smoke when benchmarks are disabled)."""
        if benchmark is not None and getattr(benchmark, "disabled", False):
            return POLICIES["smoke"]
        if not self.is_cuda:
            return POLICIES["cpu"]
        return POLICIES[f"{kind}-quick" if self.quick else kind]
