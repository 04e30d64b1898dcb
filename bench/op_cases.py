"""Op cases: the device time of one op, forward, backward or both ("full"), recorded (bench_op).

- Each repetition is timed by ``replab_fast.timing.measure`` (the one timing routine of the
  project: a first call kept apart, warm-up, then CUDA-event-bracketed repetitions with rotated
  inputs and a head start, as its docstring explains; perf_counter on a CPU).
- The backward of an op is timed without its forward: the forward runs once per input set
  before timing and each repetition calls ``out.backward(dy, retain_graph=True)`` after setting
  the gradients of the inputs and parameters to None on the host (do_bench's ``grad_to_none``).
  AOTAutograd's donated buffers forbid ``retain_graph``, so backward-mode cases compile with
  ``torch._functorch.config.donated_buffer=False``; "full" mode keeps them.
- The record (bench/records.py) carries the bytes and FLOPs the case states, with its roofline
  against the session's ceilings (bench/ceilings.py) and the peak memory of one repetition.

Nothing here runs at import: no CUDA call, no compilation, no global setting.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor

from bench.context import BenchContext
from bench.counting import peak_memory
from bench.records import record
from replab_fast.timing import first_call, measure, plan_inputs

__all__ = ["MODES", "bench_op"]

MODES = ("forward", "backward", "full")  # op modes; a model's training step is "full"


def bench_op(
    benchmark: Any,
    ctx: BenchContext,
    *,
    case: str,
    provider: str,
    mode: str,
    fn: Callable[..., Tensor],
    make_inputs: Callable[[int], tuple[Any, ...]],
    params: Sequence[Tensor] = (),
    bytes_moved: int,
    flops: int = 0,
    shape: Any,
    dtype: Any,
    sweep: Optional[dict[str, Any]] = None,
    extra: Optional[dict[str, Any]] = None,
    context: Optional[Callable[[], contextlib.AbstractContextManager]] = None,
) -> dict[str, Any]:
    """Time ``fn(*make_inputs(seed))`` in ``mode`` and record it.

    - ``make_inputs(seed)`` returns fresh random inputs (never zeros); the tensors that should
      get gradients have ``requires_grad=True``. ``params`` are the module parameters that get
      gradients too (set to None before every repetition, with the inputs').
    - forward: ``fn(*inputs)`` with autograd recording (a training forward).
      backward: the forward runs once per input set outside the timing; each repetition is
      ``out.backward(dy, retain_graph=True)``. full: forward and backward in each repetition.
    - ``bytes_moved`` is the fewest bytes the mode must move (each input read once, each output
      written once); it is also the working set that decides input rotation.
    - ``context()`` wraps every call (e.g. ``lambda: sdpa_backend("sdpa-flash")``).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    device = ctx.device
    policy = ctx.policy("op", benchmark)
    ctx_factory = context or contextlib.nullcontext

    def call(inputs: tuple[Any, ...]) -> Tensor:
        with ctx_factory():
            return fn(*inputs)

    def build(seed: int) -> tuple[Callable[[], Any], list[Tensor]]:
        inputs = make_inputs(seed)
        leaves = [t for t in inputs if isinstance(t, Tensor) and t.requires_grad]
        leaves += [p for p in params if p.requires_grad]
        if mode == "forward":
            return (lambda: call(inputs)), leaves
        if not leaves:
            raise ValueError(f"mode {mode!r} needs an input or parameter with requires_grad=True")
        out = call(inputs)
        gen = torch.Generator(device=out.device).manual_seed(100_003 + seed)
        dy = torch.randn(out.shape, generator=gen, device=out.device, dtype=torch.float32).to(out.dtype)
        if mode == "backward":

            def backward() -> None:
                with ctx_factory():
                    out.backward(dy, retain_graph=True)

            return backward, leaves

        def full() -> None:
            y = call(inputs)
            with ctx_factory():
                y.backward(dy)

        return full, leaves

    sets: list[tuple[Callable[[], Any], list[Tensor]]] = []

    def clear_grads(i: int) -> None:
        for t in sets[i][1]:
            t.grad = None

    # retain_graph=True and donated buffers do not mix (the module docstring): everything that may
    # compile, from the first forward to the last repetition, runs inside this one context.
    with _no_donated_buffers() if mode == "backward" else contextlib.nullcontext():
        sets.append(build(0))
        # First call (compilation, autotuning), then the peak memory of one repetition on one set.
        clear_grads(0)
        first_s = first_call(sets[0][0], device)
        clear_grads(0)
        peak = peak_memory(sets[0][0], device)

        n_sets, flush, cache = plan_inputs(bytes_moved, device, policy)
        sets += [build(seed) for seed in range(1, n_sets)]
        timing = measure([s[0] for s in sets], device, policy, before=clear_grads, flush_l2=flush, cache=cache,
                         first_call_s=first_s)
        return record(
            benchmark, ctx, timing, section="ops", case=case, provider=provider, mode=mode, shape=shape,
            dtype=dtype, bytes_moved=bytes_moved, flops=flops, peak=peak, sweep=sweep, extra=extra,
        )  # fmt: skip


def _no_donated_buffers() -> contextlib.AbstractContextManager:
    """``torch._functorch.config.donated_buffer=False`` while entered, where this torch has the setting."""
    try:
        import torch._functorch.config as functorch_config
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    if not hasattr(functorch_config, "donated_buffer"):
        return contextlib.nullcontext()
    return functorch_config.patch(donated_buffer=False)
