"""`replab-fast demo`: every model family, reference vs fast, forward and backward.

For each family's demo preset: build the reference model, copy it, swap the fast kernels that
exist into the copy, run forward and backward on the same random batch, and compare the output
and every parameter gradient with the reference run in float64 (the project's parity rule: the
fast path may be off by at most twice the reference's own error at its dtype, plus a small
floor; comparing fast against the fp32 reference would blame the fast path for the reference's
rounding). All run in eval mode so dropout draws no random masks.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .models.registry import ModelSpec, count_parameters, create_model, get_spec, list_models
from .swap import accelerate

# Floor of the parity rule, relative to max(1, max |exact|) of each tensor: fp32 kernels
# reorder sums, they do not lose digits.
RELATIVE_TOLERANCE = 1e-5


@dataclass
class DemoRow:
    model: str
    params: int
    kernels: list[str]
    max_error: float  # max abs error of the fast model against float64, output and gradients
    reference_error: float  # the same for the reference model at its own dtype
    reference_ms: float
    fast_ms: Optional[float]  # None when no kernel was swapped in (fast is the reference)
    device: str = "cpu"
    outside_tolerance: list[str] = field(default_factory=list)  # tensors that broke the parity rule
    error: Optional[str] = None  # an exception raised while running, if any

    @property
    def passed(self) -> bool:
        return self.error is None and not self.outside_tolerance


def demo_models() -> list[str]:
    return [n for n in list_models() if get_spec(n).demo]


def _forward_backward(spec: ModelSpec, model: nn.Module, inputs, target) -> tuple[Tensor, dict[str, Tensor]]:
    model.zero_grad(set_to_none=True)
    output = model(*inputs)
    output = output[0] if isinstance(output, tuple) else output
    spec.loss(model, inputs, target).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return output.detach(), grads


def _to_float64(tensors: tuple) -> tuple:
    return tuple(t.double() if t.is_floating_point() else t for t in tensors)


def _parity(fast: dict[str, Tensor], ref: dict[str, Tensor], exact: dict[str, Tensor]):
    """(max fast error, max reference error, names of tensors outside the rule), all vs ``exact``."""
    fast_max = ref_max = 0.0
    outside = []
    for name, ex in exact.items():
        fast_err = (fast[name].double() - ex).abs().max().item()
        ref_err = (ref[name].double() - ex).abs().max().item()
        if not fast_err <= 2 * ref_err + RELATIVE_TOLERANCE * max(1.0, ex.abs().max().item()):
            outside.append(name)
        fast_max, ref_max = max(fast_max, fast_err), max(ref_max, ref_err)
    return fast_max, ref_max, outside


def _median_ms(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    fn()  # warm-up: lazy init, compilation, autotuning
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def run_one(name: str, device: torch.device, batch_size: int = 2, iters: int = 3, seed: int = 0) -> DemoRow:
    spec = get_spec(name)
    torch.manual_seed(seed)
    reference = create_model(name, device=device).eval()
    fast = accelerate(copy.deepcopy(reference))
    kernels = fast.replab_report.kernels()
    generator = torch.Generator().manual_seed(seed)
    inputs, target = spec.make_batch(reference, batch_size, generator=generator)

    exact_model = copy.deepcopy(reference).double()
    runs = {}
    for label, model, args, tgt in [
        ("reference", reference, inputs, target),
        ("fast", fast, inputs, target),
        ("exact", exact_model, _to_float64(inputs), _to_float64((target,))[0]),
    ]:
        output, grads = _forward_backward(spec, model, args, tgt)
        runs[label] = {"output": output, **{f"grad {n}": g for n, g in grads.items()}}
    missing = sorted(set(runs["reference"]) - set(runs["fast"]))
    if missing:
        raise RuntimeError(f"fast model computed no {', '.join(missing)}")
    max_error, reference_error, outside = _parity(runs["fast"], runs["reference"], runs["exact"])

    ref_ms = _median_ms(lambda: _forward_backward(spec, reference, inputs, target), device, iters)
    # With nothing swapped the "fast" model is the reference: timing it again would only show noise.
    fast_ms = _median_ms(lambda: _forward_backward(spec, fast, inputs, target), device, iters) if kernels else None
    return DemoRow(
        name, count_parameters(reference), kernels, max_error, reference_error, ref_ms, fast_ms, device.type, outside
    )


def format_table(rows: list[DemoRow]) -> str:
    header = ("model", "params", "kernels swapped", "fast error", "reference error", "reference ms", "fast ms",
              "speedup", "result")
    body = []
    for r in rows:
        if r.error:
            body.append((r.model, f"{r.params:,}", "-", "-", "-", "-", "-", "-", f"ERROR: {r.error}"))
            continue
        body.append((
            r.model,
            f"{r.params:,}",
            ", ".join(r.kernels) or "none",
            f"{r.max_error:.2e}",
            f"{r.reference_error:.2e}",
            f"{r.reference_ms:.1f}",
            f"{r.fast_ms:.1f}" if r.fast_ms else "-",
            f"{r.reference_ms / r.fast_ms:.2f}x" if r.fast_ms else "-",
            "pass" if r.passed else f"FAIL: {', '.join(r.outside_tolerance)}",
        ))
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def summary(rows: list[DemoRow]) -> str:
    failed = [r.model for r in rows if not r.passed]
    with_kernels = [r for r in rows if r.kernels]
    swapped = (
        f"fast kernels swapped into {len(with_kernels)} of {len(rows)}"
        if with_kernels
        else "no fast kernel is registered for these models yet, so fast == reference"
    )
    if with_kernels and all(r.device == "cpu" for r in rows):
        swapped += " (on a CPU the Triton kernels run in Triton's interpreter: checked for correctness, slow by design)"
    if failed:
        return f"demo: FAIL ({', '.join(failed)}); {swapped}"
    return f"demo: PASS, {len(rows)} models ran forward and backward within tolerance; {swapped}"


def run_demo(names: Optional[list[str]] = None, device: Optional[str] = None, **kwargs) -> list[DemoRow]:
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = names or demo_models()
    for name in names:
        get_spec(name)  # an unknown name fails here, before anything runs
    rows = []
    for name in names:
        try:
            rows.append(run_one(name, dev, **kwargs))
        except Exception as exc:  # reported in the table and the summary, not swallowed
            error = f"{type(exc).__name__}: {exc}"
            rows.append(DemoRow(name, 0, [], float("nan"), float("nan"), 0.0, None, dev.type, error=error))
    return rows
