"""The parity rule: when does a fast path compute the same function as its reference?

Both run on the same inputs; an *exact* run (the reference in float64) is the truth. At a low
precision (float16, bfloat16) and in float32 the reference itself is off from the truth by its
own rounding, and sometimes by a lot: a model's loss can amplify the rounding of a few logits
into every gradient. So the fast path is not compared with the reference at its dtype (that would
blame the fast path for the reference's rounding) but with the exact run, and it may be off by
at most twice the reference's own error at that dtype, plus a small floor relative to the
tensor's magnitude (so that a reference that happens to be exact does not demand the
impossible):

    |fast - exact|_max  <=  2 |reference - exact|_max  +  FLOORS[dtype] * max(1, |exact|_max)

float64 against float64 differs only in summation order: FLOORS[float64] alone bounds it. The
tests (``assert_parity`` in tests/support.py) and ``replab-fast demo`` apply this one rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["FLOORS", "Parity", "bound", "check", "max_abs_error", "magnitude"]

# Absolute floor of the rule per dtype, relative to max(1, max |exact|). fp16/bf16 carry 11 and 8
# significant bits: 1e-3 is below one unit of their last place at 1. float32 kernels reorder
# sums, they do not lose digits: 1e-5. float64: both sides in float64.
FLOORS = {torch.float16: 1e-3, torch.bfloat16: 1e-3, torch.float32: 1e-5, torch.float64: 1e-12}


def max_abs_error(value: Tensor, exact: Tensor) -> float:
    """max |value - exact| in float64 (0 for empty tensors; NaN propagates)."""
    if value.numel() == 0:
        return 0.0
    return (value.detach().double().cpu() - exact.detach().double().cpu()).abs().max().item()


def magnitude(exact: Tensor) -> float:
    """max(1, max |exact|): what the floor is relative to."""
    return max(1.0, exact.detach().abs().max().item()) if exact.numel() else 1.0


def bound(reference_error: float, exact: Tensor, dtype: torch.dtype) -> float:
    """The largest error the rule allows a fast path at ``dtype`` whose reference is off by ``reference_error``."""
    return 2.0 * reference_error + FLOORS[dtype] * magnitude(exact)


@dataclass(frozen=True)
class Parity:
    name: str  # what was compared ("output", "grad layers.0.weight", ...)
    error: float  # max |fast - exact|
    reference_error: float  # max |reference - exact|
    bound: float  # what the rule allows
    passed: bool

    def __str__(self) -> str:
        verdict = "within" if self.passed else "OUTSIDE"
        return (f"{self.name}: fast error {self.error:.3g} {verdict} the bound {self.bound:.3g} "
                f"(2 x the reference's own error {self.reference_error:.3g} + floor)")


def check(name: str, fast: Tensor, reference: Tensor, exact: Tensor) -> Parity:
    """The rule for one tensor: ``fast`` and ``reference`` at the dtype under test, ``exact`` in float64."""
    if fast.shape != exact.shape:
        raise ValueError(f"{name}: the fast path's shape {tuple(fast.shape)} differs from {tuple(exact.shape)}")
    error, reference_error = max_abs_error(fast, exact), max_abs_error(reference, exact)
    allowed = bound(reference_error, exact, fast.dtype)
    return Parity(name, error, reference_error, allowed, bool(error <= allowed))  # NaN fails
