"""LLaMA's training tradeoffs from one run: reference against fast kernels, float32 against bfloat16
autocast, eager against torch.compile.

From one initialization and the same batches, ``TRADEOFF_STEPS`` steps of each row of ``ROWS``;
per row: the median time per step (steps 2 onward: step 1 holds compilation and autotuning) and
the loss after the last step. A measurement is one device's: ``tradeoffs-<cpu|cuda>.json`` in
the results folder; ``tradeoffs.md`` shows every device measured so far side by side, a device
not measured yet as "pending". On a CPU the Triton kernels run only through the interpreter:
that row's time is the interpreter's and no measure of the kernels, and the table says so.

    replab-fast replicate llama-cpu                                  # the run, with the CPU columns
    replab-fast replicate llama-cpu --tradeoffs-only --device cuda   # the GPU columns
"""

from __future__ import annotations

import dataclasses
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from .loop import RunOptions, Trainer

__all__ = ["ROWS", "TRADEOFF_STEPS", "measure_tradeoffs", "run_tradeoffs", "write_table"]

TRADEOFF_STEPS = 12
TRADEOFF_BATCH = 8
ROWS = (
    ("reference, float32, eager", {}),
    ("reference, bfloat16 autocast", {"amp": "bf16"}),
    ("reference, float32, torch.compile", {"compile": True}),
    ("fast kernels, float32", {"fast": True, "interpret": True}),  # interpret: the CPU's only way to run them
)
DEVICES = (("cpu", "CPU"), ("cuda", "GPU"))


def _timed_run(base: RunOptions, folder: Path, **changes: Any) -> tuple[list[float], list[float], torch.device]:
    options = dataclasses.replace(base, out=folder, steps=TRADEOFF_STEPS, progress=False, **changes)
    trainer = Trainer(options)
    trainer.recipe = trainer.recipe.replace(log_every=1, eval_every=TRADEOFF_STEPS, checkpoint_every=TRADEOFF_STEPS)
    losses, times = [], []
    real_step = trainer.train_step

    def step(batch):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        loss = real_step(batch)  # .item() inside: the step has finished on the device
        times.append(time.perf_counter() - start)
        losses.append(loss)
        return loss

    trainer.train_step = step
    trainer.run()
    return losses, times, trainer.device


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{platform.machine()} CPU, {threads} thread{'s' if threads > 1 else ''}"


def measure_tradeoffs(options: RunOptions, folder: Path) -> dict[str, Any]:
    """Every row of ROWS, ``options``' model on its device: {"device", "device_name", "torch", "rows"}."""
    base = dataclasses.replace(options, resume=False, stop_at=None, batch_size=TRADEOFF_BATCH)
    rows, device = {}, None
    for i, (label, changes) in enumerate(ROWS):
        losses, times, device = _timed_run(base, Path(folder) / str(i), **changes)
        rows[label] = {"step_s": statistics.median(times[1:]), "loss": losses[-1]}
    return {"model": options.model, "device": device.type, "device_name": _device_name(device),
            "torch": torch.__version__, "steps": TRADEOFF_STEPS, "batch_size": TRADEOFF_BATCH, "rows": rows}  # fmt: skip


def _cells(measured: dict[str, Any] | None, label: str) -> list[str]:
    if measured is None or label not in measured["rows"]:
        return ["pending", "pending"]
    row = measured["rows"][label]
    time_text = f"{row['step_s'] * 1e3:.1f} ms"
    if measured["device"] == "cpu" and dict(ROWS)[label].get("fast"):
        time_text += " (Triton interpreted)"
    return [time_text, f"{row['loss']:.6f}"]


def write_table(out: Path) -> Path:
    """``out/tradeoffs.md`` from every ``out/tradeoffs-<device>.json`` there."""
    out = Path(out)
    measured = {kind: json.loads(p.read_text()) if (p := out / f"tradeoffs-{kind}.json").is_file() else None
                for kind, _ in DEVICES}  # fmt: skip
    head = ["run"] + [f"{title} {what}" for _, title in DEVICES for what in ("time per step", "loss")]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for label, _ in ROWS:
        lines.append("| " + " | ".join([label] + [c for kind, _ in DEVICES for c in _cells(measured[kind], label)]) + " |")
    some = next(m for m in measured.values() if m is not None)
    lines += ["", f"{some['steps']} steps of {some['model']} at batch {some['batch_size']} from one initialization on "
              "the same batches; time per step: the median of steps 2 onward (step 1 compiles)."]  # fmt: skip
    for kind, title in DEVICES:
        m = measured[kind]
        lines.append(f"{title}: " + (f"{m['device_name']}, torch {m['torch']}." if m else
                                     "pending: no GPU run yet (`replab-fast replicate "
                                     f"{some['model']} --tradeoffs-only --device cuda`)."))  # fmt: skip
    if measured["cpu"] is not None:
        lines.append("On a CPU the Triton kernels run only through Triton's interpreter: that time is the "
                     "interpreter's, no measure of the kernels.")  # fmt: skip
    path = out / "tradeoffs.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_tradeoffs(options: RunOptions, folder: Path, out: Path) -> dict[str, Any]:
    """Measure on ``options``' device, save ``out/tradeoffs-<device>.json``, rewrite the table."""
    measured = measure_tradeoffs(options, folder)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"tradeoffs-{measured['device']}.json").write_text(json.dumps(measured, indent=2) + "\n")
    write_table(out)
    return measured
