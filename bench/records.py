"""A case's record for pytest-benchmark: its ``extra_info`` and the measured per-repetition samples.

How this relates to pytest-benchmark's own statistics
-----------------------------------------------------
pytest-benchmark times a callable with a host clock; with asynchronous CUDA work that clock
would measure launch overhead or, with a synchronize inside, add the sync latency to every
repetition. So the suite does the timing itself (``replab_fast.timing.measure``) and then hands
the per-repetition times to pytest-benchmark: ``record`` calls ``benchmark.pedantic`` once on a
no-op (which registers the case and creates its stats object) and replaces that stats object's
samples with the measured per-repetition times. Everything pytest-benchmark derives and writes
(min, max, mean, median, IQR, ops, and the raw ``data`` in ``--benchmark-json``) is therefore
computed from the CUDA-event (or perf_counter) times, in seconds per repetition; the
``options.timer`` field it writes (perf_counter) is not what timed the case: ``extra_info.timer``
is. The authoritative summary is also stored in ``extra_info`` (``median_s``, ``p20_s``,
``p80_s``, ``min_s``, ``max_s``, ``reps``), and ``replab_fast.bench_report`` renders from there.
Should a future pytest-benchmark change its internals so the samples cannot be replaced,
``extra_info`` still holds the right numbers and ``extra_info.stats_source`` says
"extra_info only" (else "harness-timer").

With ``--bench-jsonl`` each record is also appended to a JSON-lines file as it is made.

Nothing here runs at import: no CUDA call, no compilation, no global setting.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional, Sequence

import torch

from bench.ceilings import Ceilings, roofline
from bench.context import BenchContext
from replab_fast.timing import Timing

__all__ = ["SECTIONS", "record"]

SECTIONS = ("device", "ops", "models")  # report sections, in order


def _feed_stats(benchmark: Any, times_s: Sequence[float]) -> str:
    """Register the case with pytest-benchmark and make its samples the measured times."""
    benchmark.pedantic(lambda: None, rounds=1, iterations=1, warmup_rounds=0)
    if getattr(benchmark, "disabled", False):
        return "disabled (--benchmark-disable)"
    meta = getattr(benchmark, "stats", None)
    stats = getattr(meta, "stats", None)
    data = getattr(stats, "data", None)
    if isinstance(data, list) and times_s:
        data[:] = [float(t) for t in times_s]
        for key in [k for k in vars(stats) if k != "data"]:  # drop anything cached from the no-op
            delattr(stats, key)
        return "harness-timer"
    return "extra_info only"


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (torch.Size, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def record(
    benchmark: Any,
    ctx: BenchContext,
    timing: Timing,
    *,
    section: str,
    case: str,
    provider: str,
    mode: str,
    shape: Any,
    dtype: Any,
    bytes_moved: Optional[int] = None,
    flops: Optional[int] = None,
    items: Optional[float] = None,
    unit: Optional[str] = None,
    peak: tuple[Optional[int], Optional[int]] = (None, None),
    sweep: Optional[dict[str, Any]] = None,
    extra: Optional[dict[str, Any]] = None,
    ceilings: Optional[Ceilings] = None,
) -> dict[str, Any]:
    """Fill ``benchmark.extra_info`` with everything about the case and hand pytest-benchmark the times.

    ``case`` identifies the comparison (every provider of one case shares it: shape, dtype and
    mode are in it); ``items``/``unit`` give a throughput (e.g. 8192 tokens per repetition);
    ``sweep`` = {"name": ..., "x_name": ..., "x": ...} puts the case on a plot.
    """
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
    ceil = ceilings if ceilings is not None else ctx.ceilings
    med = timing.median
    info = benchmark.extra_info
    info.update(
        {
            "section": section,
            "case": case,
            "provider": provider,
            "mode": mode,
            "shape": _jsonable(list(shape) if isinstance(shape, (tuple, list, torch.Size)) else shape),
            "dtype": _jsonable(dtype),
            **{k: _jsonable(v) for k, v in ctx.env.items()},
            **timing.summary(),
            "bytes": bytes_moved,
            "flops": flops,
            **roofline(med, bytes_moved, flops, ceil),
            "ceiling_copy_gbps": ceil.copy_bytes_per_s / 1e9,
            "ceiling_matmul_tflops": ceil.matmul_flops_per_s / 1e12,
            "ceiling_matmul_dtype": ceil.matmul_dtype,
            "items": items,
            "unit": unit,
            "throughput": (items / med) if items and med > 0 else None,
            "peak_mem_bytes": peak[0],
            "peak_mem_delta_bytes": peak[1],
            "peak_mem": "measured" if peak[0] is not None else f"n/a ({ctx.device.type})",
            "sweep": _jsonable(sweep),
            "quick": ctx.quick,
        }
    )
    if extra:
        info.update({k: _jsonable(v) for k, v in extra.items()})
    for key, value in list(info.items()):
        if isinstance(value, float) and not math.isfinite(value):
            info[key] = None
    benchmark.group = case
    info["stats_source"] = _feed_stats(benchmark, timing.times_s)
    if ctx.jsonl_path:
        entry = {
            "name": getattr(benchmark, "name", None),
            "fullname": getattr(benchmark, "fullname", None),
            "group": case,
            "param": getattr(benchmark, "param", None),
            "extra_info": info,
            "stats": {"median": med, "min": min(timing.times_s), "max": max(timing.times_s),
                      "rounds": len(timing.times_s), "data": timing.times_s},
        }  # fmt: skip
        os.makedirs(os.path.dirname(os.path.abspath(ctx.jsonl_path)), exist_ok=True)
        with open(ctx.jsonl_path, "a") as fh:
            fh.write(json.dumps(_jsonable(entry)) + "\n")
    return info
