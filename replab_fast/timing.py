"""One timing routine for every measurement in replab_fast: the benchmarks (bench/) and the demo.

``measure(fns, device, policy)`` times thunks the way ``triton.testing.do_bench`` does, with two
differences that matter for honest numbers:

- A first call (compilation, autotuning, lazy init) is timed apart and kept out of the
  statistics; then warm-up repetitions for ``policy.warmup_ms``; then at least
  ``policy.min_reps`` timed repetitions, more until ``policy.rep_ms`` has passed.
- On CUDA each repetition is bracketed by its own pair of CUDA events. Inputs are rotated
  (``plan_inputs``: repetition i runs on input set i % n, with enough sets that 3x the L2 size
  of other data passes through the cache between two uses of a set) instead of flushing L2;
  only for tiny working sets is L2 flushed between repetitions (a memset of at least
  ``L2_FLUSH_MIN_BYTES``, outside the events). With ``policy.head_start`` every
  ``HEAD_START_CHUNK`` repetitions are queued behind a ``torch.cuda._sleep`` kernel long enough
  for the host to queue them all, so an op whose launch cost exceeds its kernel time is timed by
  its kernels. The sleeps lie outside the events.
- On a CPU each repetition is timed with ``time.perf_counter`` (the work is synchronous).

A :class:`Timing` keeps every repetition and reports the median with p20 / p80;
``Timing.overlaps`` says whether two timings cannot be told apart (their p20-p80 ranges
overlap), in which case no speedup should be claimed.

Nothing here runs at import: no CUDA call, no compilation, no global setting.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

__all__ = [
    "HEAD_START_CHUNK",
    "L2_FLUSH_MIN_BYTES",
    "MAX_ROTATION_SETS",
    "POLICIES",
    "Timing",
    "TimingPolicy",
    "first_call",
    "measure",
    "plan_inputs",
]

MAX_ROTATION_SETS = 32  # more input sets than this: flush L2 between repetitions instead
L2_FLUSH_MIN_BYTES = 256 * 1024 * 1024  # do_bench's flush buffer size
HEAD_START_CHUNK = 16  # repetitions queued behind each sleep kernel (see _measure_cuda)


@dataclass(frozen=True)
class TimingPolicy:
    warmup_ms: float  # warm-up after the first call, in milliseconds (at least one repetition)
    rep_ms: float  # target total time of the timed repetitions
    min_reps: int  # at least this many timed repetitions
    max_reps: int  # at most this many
    head_start: bool  # CUDA: queue a sleep kernel so the host gets ahead (op cases)
    rotate: bool  # CUDA: rotate input sets / flush L2 when the working set fits in L2 (op cases)


POLICIES: dict[str, TimingPolicy] = {
    # At most 1000 (500) repetitions: plenty for a median, and the JSON keeps every one of them.
    "op": TimingPolicy(warmup_ms=50, rep_ms=250, min_reps=20, max_reps=1000, head_start=True, rotate=True),
    "op-quick": TimingPolicy(warmup_ms=25, rep_ms=100, min_reps=10, max_reps=500, head_start=True, rotate=True),
    "model": TimingPolicy(warmup_ms=300, rep_ms=1500, min_reps=5, max_reps=200, head_start=False, rotate=False),
    "model-quick": TimingPolicy(warmup_ms=150, rep_ms=600, min_reps=5, max_reps=100, head_start=False, rotate=False),
    "cpu": TimingPolicy(warmup_ms=0, rep_ms=600, min_reps=3, max_reps=50, head_start=False, rotate=False),
    # --benchmark-disable: one warm-up and two repetitions, just to see that every case runs.
    "smoke": TimingPolicy(warmup_ms=0, rep_ms=0, min_reps=2, max_reps=2, head_start=False, rotate=False),
}


@dataclass
class Timing:
    """Per-repetition times of one case, in seconds, and how they were taken."""

    times_s: list[float]  # one entry per timed repetition
    timer: str  # "cuda-events" or "perf_counter"
    cache: str  # input policy: "rotate xN", "flush-l2", "streaming", "none"
    warmup_reps: int  # untimed repetitions after the first call
    first_call_s: float  # the first call (compilation, autotuning, lazy init), host clock, synchronized
    head_start_ms: float = 0.0  # total length of the sleep kernels queued ahead of the timed repetitions

    def quantile(self, q: float) -> float:
        """Linear-interpolation quantile (numpy's default) of the per-repetition times."""
        data = sorted(self.times_s)
        if not data:
            return float("nan")
        pos = q * (len(data) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return data[lo] + (data[hi] - data[lo]) * (pos - lo)

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    @property
    def p20(self) -> float:
        return self.quantile(0.2)

    @property
    def p80(self) -> float:
        return self.quantile(0.8)

    @property
    def spread(self) -> float:
        """(p80 - p20) / median: the relative width of the middle 60% of repetitions."""
        return (self.p80 - self.p20) / self.median if self.median > 0 else float("nan")

    def overlaps(self, other: "Timing") -> bool:
        """Whether the middle 60% of the repetitions (p20 to p80) of the two timings overlap: then
        the two cannot be told apart on this machine, and no speedup is claimed."""
        return self.p20 <= other.p80 and other.p20 <= self.p80

    def summary(self) -> dict[str, Any]:
        t = self.times_s
        return {
            "timer": self.timer,
            "cache": self.cache,
            "reps": len(t),
            "warmup_reps": self.warmup_reps,
            "first_call_s": self.first_call_s,
            "head_start_ms": round(self.head_start_ms, 3),
            "median_s": self.median,
            "p20_s": self.p20,
            "p80_s": self.p80,
            "min_s": min(t) if t else None,
            "max_s": max(t) if t else None,
            "mean_s": statistics.fmean(t) if t else None,
            "spread": self.spread,
        }


def plan_inputs(working_set_bytes: int, device: torch.device, policy: TimingPolicy) -> tuple[int, bool, str]:
    """How to keep the cache honest: (number of input sets, flush L2 between reps?, label)."""
    if device.type != "cuda" or not policy.rotate:
        return 1, False, "none"
    l2 = l2_bytes(device)
    if working_set_bytes >= 3 * l2:
        return 1, False, "streaming"
    n_sets = math.ceil(3 * l2 / max(working_set_bytes, 1))
    if n_sets <= MAX_ROTATION_SETS:
        return n_sets, False, f"rotate x{n_sets}"
    return 1, True, "flush-l2"


def l2_bytes(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or 50 * 1024 * 1024)


def _sleep_cycles_per_ms(device: torch.device) -> float:
    # torch.cuda._sleep spins for a number of SM clock cycles. Assume the fastest clock (a slower
    # one only makes the sleep longer, which still covers the host): the device's own rate where
    # torch exposes it (kHz = cycles per ms), else 2 GHz (Hopper boosts to 1.98 GHz).
    props = torch.cuda.get_device_properties(device)
    khz = getattr(props, "clock_rate", None)
    return float(khz) if khz else 2.0e6


def measure(
    fns: Sequence[Callable[[], Any]],
    device: torch.device,
    policy: TimingPolicy,
    *,
    before: Optional[Callable[[int], None]] = None,
    flush_l2: bool = False,
    cache: str = "none",
    first_call_s: Optional[float] = None,
) -> Timing:
    """Time ``fns`` (one thunk per input set; repetition i runs ``fns[i % len(fns)]``).

    ``before(set_index)`` runs on the host before each repetition, outside the timed region
    (e.g. setting gradients to None). ``first_call_s``: the caller already made (and timed, with
    ``first_call``) the compiling first call; it is reported instead of measure's own first call.
    See the module docstring for the method.
    """
    if not fns:
        raise ValueError("measure needs at least one function")
    if device.type == "cuda":
        timing = _measure_cuda(list(fns), device, policy, before, flush_l2, cache)
    else:
        timing = _measure_host(list(fns), policy, before, cache)
    if first_call_s is not None:
        timing.first_call_s = first_call_s
    return timing


def first_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Run ``fn`` once (compilation, autotuning, lazy init) and return its synchronized wall time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _measure_cuda(fns, device, policy, before, flush_l2, cache) -> Timing:
    n = len(fns)
    flush_buf = None
    if flush_l2:
        flush_bytes = max(L2_FLUSH_MIN_BYTES, 2 * l2_bytes(device))
        flush_buf = torch.empty(flush_bytes // 4, dtype=torch.int32, device=device)

    def prep(i: int) -> None:
        if before is not None:
            before(i % n)
        if flush_buf is not None:
            flush_buf.zero_()

    def sync() -> None:
        torch.cuda.synchronize(device)

    # First call of every set: compilation, autotuning, lazy initialization. Not in the stats.
    sync()
    t0 = time.perf_counter()
    prep(0)
    fns[0]()
    sync()
    first_call_s = time.perf_counter() - t0
    for i in range(1, n):
        prep(i)
        fns[i]()
    sync()

    # Estimate the device time and the host (enqueue) time of one repetition.
    n_est = 5
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    h0 = time.perf_counter()
    e0.record()
    for i in range(n_est):
        prep(i)
        fns[i % n]()
    e1.record()
    host_ms = (time.perf_counter() - h0) * 1e3 / n_est
    sync()
    est_ms = max(e0.elapsed_time(e1) / n_est, 1e-4)

    warmup_reps = max(1, int(policy.warmup_ms / est_ms))
    reps = min(policy.max_reps, max(policy.min_reps, int(policy.rep_ms / est_ms)))
    head_start = policy.head_start and hasattr(torch.cuda, "_sleep")
    # The head start comes in chunks: the CUDA launch queue holds about a thousand pending
    # launches, so a single long sleep would cover only the first few hundred repetitions of a
    # host-heavy op before the host blocks and the device starves again.
    chunk = HEAD_START_CHUNK if head_start else reps
    cycles_per_ms = _sleep_cycles_per_ms(device) if head_start else 0.0

    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(warmup_reps):
        prep(i)
        fns[i % n]()
    head_ms = 0.0
    for c0 in range(0, reps, chunk):
        k = min(chunk, reps - c0)
        if head_start:
            sleep_ms = 2.0 * k * host_ms + 0.2  # time for the host to queue these k repetitions, twice over
            torch.cuda._sleep(int(sleep_ms * cycles_per_ms))
            head_ms += sleep_ms
        for i in range(c0, c0 + k):
            prep(i)  # host work and the flush memset stay outside the events
            starts[i].record()
            fns[i % n]()
            ends[i].record()
    sync()
    times = [s.elapsed_time(e) * 1e-3 for s, e in zip(starts, ends)]
    return Timing(times, "cuda-events", cache, warmup_reps, first_call_s, head_ms)


def _measure_host(fns, policy, before, cache) -> Timing:
    n = len(fns)

    def prep(i: int) -> None:
        if before is not None:
            before(i % n)

    t0 = time.perf_counter()
    prep(0)
    fns[0]()
    first_call_s = time.perf_counter() - t0
    for i in range(1, n):
        prep(i)
        fns[i]()
    warmup_reps, w0 = 0, time.perf_counter()
    while warmup_reps < 1 or ((time.perf_counter() - w0) * 1e3 < policy.warmup_ms and warmup_reps < 1000):
        prep(warmup_reps)
        fns[warmup_reps % n]()
        warmup_reps += 1
    times: list[float] = []
    r0 = time.perf_counter()
    while len(times) < policy.min_reps or (
        (time.perf_counter() - r0) * 1e3 < policy.rep_ms and len(times) < policy.max_reps
    ):
        i = len(times)
        prep(i)
        s = time.perf_counter()
        fns[i % n]()
        times.append(time.perf_counter() - s)
    return Timing(times, "perf_counter", cache, warmup_reps, first_call_s)
