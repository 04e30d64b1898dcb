"""`replab-fast demo`: every model family, reference vs fast, forward and backward.

For each family's demo preset, on one random batch:

1. **Parity.** A copy of the reference with every fast kernel swapped in (``accelerate(...,
   interpret=True)``: on a CPU the Triton kernels then run through Triton's interpreter, which is
   slow but computes what the compiled kernels compute) runs forward and backward, and so do the
   reference at its own dtype and the reference in float64 (the exact run). The output and every
   parameter gradient of the fast copy must meet the parity rule (``replab_fast.parity``): its
   error against the float64 run at most twice the reference's own error plus a small floor.
   Comparing the fast path with the float32 reference instead would blame it for the reference's
   rounding, which the loss can amplify into every gradient.
2. **Speed.** A copy with what a plain ``accelerate`` swaps in (only kernels that are fast on
   this device: on a CPU the C++ convolution, not the interpreted Triton kernels) is timed against
   the reference with the timing routine of the benchmarks (``replab_fast.timing``), in
   interleaved rounds, median and p20-p80 reported. A speedup is printed only when the two
   ranges do not overlap; otherwise the two cannot be told apart on this machine.

Everything runs in eval mode, so dropout draws no random masks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import Tensor, nn

from . import parity
from .devices import DeviceLike, resolve_device
from .models.registry import ModelSpec, count_parameters, create_model, get_spec, list_models
from .swap import accelerate
from .timing import Timing, TimingPolicy, measure

ROUNDS = 3  # reference and fast are timed in alternating rounds, so that drift hits both alike


@dataclass
class DemoRow:
    model: str
    params: int
    kernels: list[str]  # the kernels checked for parity (every one that can run here)
    max_error: float  # max abs error of the fast model against the float64 run, output and gradients
    reference_error: float  # the same for the reference model at its own dtype
    reference_time: Optional[Timing] = None  # None when nothing fast on this device was swapped in
    fast_time: Optional[Timing] = None
    timed_kernels: list[str] = field(default_factory=list)  # the kernels in the timed copy
    device: str = "cpu"
    outside_tolerance: list[str] = field(default_factory=list)  # tensors that broke the parity rule
    error: Optional[str] = None  # an exception raised while running, if any

    @property
    def passed(self) -> bool:
        return self.error is None and not self.outside_tolerance

    @property
    def speedup(self) -> Optional[float]:
        """reference median / fast median, or None when not timed or when the two overlap."""
        if self.reference_time is None or self.fast_time is None or self.reference_time.overlaps(self.fast_time):
            return None
        return self.reference_time.median / self.fast_time.median


def demo_models() -> list[str]:
    return [n for n in list_models() if get_spec(n).demo]


def _forward_backward(spec: ModelSpec, model: nn.Module, inputs, target) -> dict[str, Tensor]:
    """The output and every parameter gradient of one forward and backward pass, by name."""
    model.zero_grad(set_to_none=True)
    output = model(*inputs)
    output = output[0] if isinstance(output, tuple) else output
    spec.loss(model, inputs, target).backward()
    grads = {f"grad {n}": p.grad for n, p in model.named_parameters() if p.grad is not None}
    return {"output": output.detach(), **grads}


def _to_float64(tensors: tuple) -> tuple:
    return tuple(t.double() if t.is_floating_point() else t for t in tensors)


def _parity(fast: dict[str, Tensor], ref: dict[str, Tensor], exact: dict[str, Tensor]):
    """(max fast error, max reference error, names of tensors outside the rule), all vs ``exact``."""
    missing = sorted(set(exact) - set(fast))
    if missing:
        raise RuntimeError(f"the fast model computed no {', '.join(missing)}")
    results = [parity.check(name, fast[name], ref[name], ex) for name, ex in exact.items()]
    fast_max = max((r.error for r in results), default=0.0)
    ref_max = max((r.reference_error for r in results), default=0.0)
    return fast_max, ref_max, [r.name for r in results if not r.passed]


def _policy(device: torch.device, iters: int) -> TimingPolicy:
    """At least ``iters`` timed repetitions per round, more until the round's time target."""
    warmup, rep = (200.0, 500.0) if device.type == "cuda" else (100.0, 300.0)
    return TimingPolicy(warmup_ms=warmup, rep_ms=rep, min_reps=iters, max_reps=max(iters, 200), head_start=False,
                        rotate=False)  # fmt: skip


def _time_pair(spec: ModelSpec, reference: nn.Module, fast: nn.Module, inputs, target, device, iters):
    """Timings of one forward + backward of ``reference`` and ``fast``, in alternating rounds."""
    policy = _policy(device, iters)
    times: dict[str, list[float]] = {"reference": [], "fast": []}
    timings: dict[str, Timing] = {}
    for _ in range(ROUNDS):
        for label, model in (("reference", reference), ("fast", fast)):
            timing = measure([lambda m=model: _forward_backward(spec, m, inputs, target)], device, policy)
            times[label] += timing.times_s
            timings[label] = timing
    return tuple(Timing(times[k], timings[k].timer, "none", timings[k].warmup_reps, timings[k].first_call_s)
                 for k in ("reference", "fast"))  # fmt: skip


def run_one(name: str, device: torch.device, batch_size: int = 2, iters: int = 5, seed: int = 0) -> DemoRow:
    spec = get_spec(name)
    torch.manual_seed(seed)
    reference = create_model(name, device=device).eval()
    checked = accelerate(copy.deepcopy(reference), interpret=True)
    kernels = checked.replab_report.kernels()
    generator = torch.Generator().manual_seed(seed)
    inputs, target = spec.make_batch(reference, batch_size, generator=generator)

    exact_model = copy.deepcopy(reference).double()
    runs = {
        "reference": _forward_backward(spec, reference, inputs, target),
        "fast": _forward_backward(spec, checked, inputs, target),
        "exact": _forward_backward(spec, exact_model, _to_float64(inputs), _to_float64((target,))[0]),
    }
    max_error, reference_error, outside = _parity(runs["fast"], runs["reference"], runs["exact"])
    row = DemoRow(name, count_parameters(reference), kernels, max_error, reference_error, device=device.type,
                  outside_tolerance=outside)  # fmt: skip

    timed = accelerate(copy.deepcopy(reference))  # only what is fast on this device
    row.timed_kernels = timed.replab_report.kernels()
    if row.timed_kernels:  # with nothing swapped the timed copy is the reference: timing it shows noise
        row.reference_time, row.fast_time = _time_pair(spec, reference, timed, inputs, target, device, iters)
    return row


def _ms(timing: Optional[Timing]) -> str:
    if timing is None:
        return "-"
    return f"{timing.median * 1e3:.2f} ({timing.p20 * 1e3:.2f}-{timing.p80 * 1e3:.2f})"


def _speedup(row: DemoRow) -> str:
    if row.fast_time is None:
        return "-"
    return f"{row.speedup:.2f}x" if row.speedup is not None else "within noise"


def format_table(rows: list[DemoRow]) -> str:
    header = ("model", "params", "kernels checked", "fast err vs fp64", "ref err vs fp64", "kernels timed",
              "reference ms", "fast ms", "speedup", "result")  # fmt: skip
    body = []
    for r in rows:
        if r.error:
            body.append((r.model, f"{r.params:,}", "-", "-", "-", "-", "-", "-", "-", f"ERROR: {r.error}"))
            continue
        body.append((
            r.model,
            f"{r.params:,}",
            ", ".join(r.kernels) or "none",
            f"{r.max_error:.2e}",
            f"{r.reference_error:.2e}",
            ", ".join(r.timed_kernels) or "none",
            _ms(r.reference_time),
            _ms(r.fast_time),
            _speedup(r),
            "pass" if r.passed else f"FAIL: {', '.join(r.outside_tolerance)}",
        ))  # fmt: skip
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def legend(rows: list[DemoRow]) -> str:
    """What the columns mean."""
    lines = [
        "err vs fp64: max abs difference from the same model run in float64, over the output and every parameter "
        "gradient. The reference's own float32 error can be large (the loss amplifies the rounding of a few "
        "values into every gradient), so the rule is: fast error <= 2 x reference error + a floor.",
        f"ms: median (p20-p80) of forward + backward over {ROUNDS} interleaved rounds; a speedup is shown only "
        "when the two ranges do not overlap.",
    ]
    if any(r.device == "cpu" and set(r.kernels) - set(r.timed_kernels) for r in rows if not r.error):
        lines.append("On a CPU the Triton kernels run through Triton's interpreter: checked for parity, not timed.")
    return "\n".join(lines)


def summary(rows: list[DemoRow]) -> str:
    errors = [r for r in rows if r.error]
    failed = [r.model for r in rows if not r.passed]
    checked = [r for r in rows if r.kernels]
    timed = [r for r in rows if r.timed_kernels]
    parts = f"fast kernels checked in {len(checked)} of {len(rows)}, timed in {len(timed)}"
    if failed:
        detail = ", ".join(f"{r.model}: {r.error}" if r.error else r.model for r in rows if not r.passed)
        return f"demo: FAIL ({detail}); {len(errors)} raised an error, {len(failed) - len(errors)} broke the parity rule"
    return f"demo: PASS, {len(rows)} models ran forward and backward within the parity rule; {parts}"


def run_demo(names: Optional[list[str]] = None, device: DeviceLike = None, **kwargs) -> list[DemoRow]:
    dev = resolve_device(device)  # an unknown device, or CUDA without one, fails here, before anything runs
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"demo runs on cpu or cuda, got device {str(dev)!r}")
    names = names or demo_models()
    for name in names:
        get_spec(name)  # an unknown name fails here too
    for key in ("batch_size", "iters"):
        value = kwargs.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"demo: {key.replace('_', '-')} must be a positive integer, got {value!r}")
    rows = []
    for name in names:
        try:
            rows.append(run_one(name, dev, **kwargs))
        except Exception as exc:  # reported in the table and the summary, not swallowed
            rows.append(DemoRow(name, 0, [], float("nan"), float("nan"), device=dev.type,
                                error=f"{type(exc).__name__}: {exc}"))  # fmt: skip
    return rows
