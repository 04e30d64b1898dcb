"""What ``replab-fast diagnose`` reports: each check's verdict, table and advice, as text, as JSON
(report.json) and, for the learning-rate sweep, as a plot (lr_sweep.png)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .gauntlet import (
    EXPLODING, INIT_STD_FACTOR, SMALL_TENSOR, SMALL_TENSOR_FACTOR, VANISHING, ActivationScale, GradientProblem,
    OverfitRun, ParameterScale, SweepPoint,
)  # fmt: skip

__all__ = ["Check", "Report", "plot_lr_sweep"]


def _names(items: list[str], limit: int = 6) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _listed(items: list[str]) -> str:
    """'1', '1 and 10', '1, 10 and 100'."""
    return " and ".join([", ".join(items[:-1]), items[-1]]) if len(items) > 1 else "".join(items)


def _verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


@dataclass
class Check:
    name: str
    passed: bool
    summary: str  # one line
    table: list[str]  # the lines printed under it
    advice: list[str]  # what to look at
    data: Any  # the gauntlet's results, for report.json

    @classmethod
    def of_overfit(cls, runs: list[OverfitRun], *, lr: float, steps: int, below: float) -> "Check":
        failed = [str(r.examples) for r in runs if not r.passed]
        sizes = _listed([str(r.examples) for r in runs])
        what = f"does not memorize {_listed(failed)} of {sizes} examples" if failed else f"memorizes {sizes} examples"
        rule = f"loss above its floor < {below:g} x the initial"
        if any(r.correct is not None for r in runs):
            rule += ", and every example classified right at n = 1 and 10"
        summary = f"{what} (Adam lr {lr:g}, {steps} full-batch steps; pass: {rule})"
        table = [f"  {'n':>5} {'initial':>10} {'final':>10} {'floor':>8} {'ratio':>9}  {'right':>7}"]
        table += [_overfit_row(r) for r in runs]
        return cls("overfit", not failed and bool(runs), summary, table, _overfit_advice(runs, below), runs)

    @classmethod
    def of_gradients(cls, problems: list[GradientProblem], count: int, probe: int) -> "Check":
        if problems:
            summary = f"{len(problems)} of {count} trainable parameters: {_names([p.parameter for p in problems])}"
        else:
            summary = f"all {count} trainable parameters get a finite, non-zero gradient"
        summary += f" (one backward on {probe} examples at initialization)"
        table = [f"  {p.parameter}: {p.problem}" for p in problems]
        return cls("gradients", not problems, summary, table, _gradient_advice(problems), problems)

    @classmethod
    def of_init(cls, scales: list[ParameterScale]) -> "Check":
        flagged = [s.parameter for s in scales if s.flagged]
        unruled = [s.parameter for s in scales if s.expected_std is None]
        tolerance = f"{INIT_STD_FACTOR:g}x ({SMALL_TENSOR_FACTOR:g}x under {SMALL_TENSOR} values)"
        if flagged:
            summary = f"{len(flagged)} of {len(scales)} parameters beyond {tolerance} of their rule: {_names(flagged)}"
        else:
            summary = f"every parameter within {tolerance} of its rule's std, every constant exact"
        if unruled:
            summary += f"; {len(unruled)} with no documented rule, not checked"
        table = [f"  {'parameter':<34} {'shape':<14} {'mean':>10} {'std':>10} {'rule std':>10} {'ratio':>6}  rule"]
        table += [_parameter_row(s) for s in scales]
        return cls("init", not flagged, summary, table, _init_advice(scales), scales)

    @classmethod
    def of_activations(cls, scales: list[ActivationScale], probe: int) -> "Check":
        flagged = [s.module for s in scales if s.flagged]
        bounds = f"[{VANISHING:g}, {EXPLODING:g}]"
        summary = (f"{len(flagged)} of {len(scales)} outputs outside {bounds}: {_names(flagged)}" if flagged
                   else f"every child's output std within {bounds}")  # fmt: skip
        summary += f" (one forward on {probe} examples, eval mode)"
        table = [_activation_row(s) for s in scales]
        return cls("activations", not flagged, summary, table, _activation_advice(scales), scales)

    @classmethod
    def of_sweep(cls, points: list[SweepPoint], initial: float, *, steps: int, batch: int) -> "Check":
        finite = [p for p in points if not p.diverged]
        best = min(finite, key=lambda p: p.final) if finite else None
        passed = best is not None and best.final < initial
        how = (f"Adam, {steps} steps of {batch} examples from the same initialization on the same batches; "
               "final: the mean loss over them")  # fmt: skip
        if best is None:
            summary = f"every learning rate diverged ({how})"
        else:
            summary = f"best lr {best.lr:.2g}: loss {initial:.4g} -> {best.final:.4g} ({how})"
        table = [_sweep_row(p, best) for p in points]
        data = {"initial": initial, "best_lr": best.lr if best else None, "steps": steps, "batch": batch,
                "points": points}  # fmt: skip
        return cls("lr_sweep", passed, summary, table, _sweep_advice(points, best, initial), data)


# ---- table rows -----------------------------------------------------------------------------


def _overfit_row(r: OverfitRun) -> str:
    right = f"{r.correct}/{r.examples}" if r.correct is not None else "-"
    row = f"  {r.examples:>5} {r.initial:>10.4g} {r.final:>10.4g} {r.floor:>8.3g} {r.ratio:>9.2e}  {right:>7}"
    return f"{row}  {_verdict(r.passed)}" + (f"  {r.problem}" if r.problem else "")


def _parameter_row(s: ParameterScale) -> str:
    shape = "x".join(map(str, s.shape)) or "scalar"
    expected = f"{s.expected_std:.4g}" if s.expected_std is not None else "-"
    ratio = f"{s.ratio:.2f}" if s.ratio is not None else "-"
    flag = f"  <- {s.problem}" if s.flagged else ""
    return f"  {s.parameter:<34} {shape:<14} {s.mean:>10.3g} {s.std:>10.4g} {expected:>10} {ratio:>6}  {s.rule}{flag}"


def _activation_row(s: ActivationScale) -> str:
    low, high = min(s.stds), max(s.stds)
    stds = f"{low:.4g}" if len(s.stds) == 1 else f"{low:.4g} to {high:.4g} ({len(s.stds)} calls)"
    return f"  {s.module:<34} std {stds}" + (f"  <- {s.problem}" if s.flagged else "")


def _sweep_row(p: SweepPoint, best: Optional[SweepPoint]) -> str:
    final = "diverged" if p.diverged else f"{p.final:.4g}"
    return f"  lr {p.lr:8.2e}  {final:>10}" + ("  <- best" if p is best else "")


# ---- what to look at ------------------------------------------------------------------------


def _overfit_advice(runs: list[OverfitRun], below: float) -> list[str]:
    advice = []
    if runs and not runs[0].passed:
        why = f" ({runs[0].problem})" if runs[0].problem else ""
        advice.append(f"the model cannot memorize one example{why}: an architecture or gradient bug (an output "
                      "detached from the parameters or constant, a loss that does not compare the output with the "
                      "target, targets misaligned with the outputs); see the gradients and activations")  # fmt: skip
    elif any(not r.passed for r in runs):
        passed = [str(r.examples) for r in runs if r.passed]
        failed = [str(r.examples) for r in runs if not r.passed]
        advice.append(f"memorizes {_listed(passed)} but not {_listed(failed)} examples: too few steps (--steps), "
                      "a learning rate far from the sweep's best (--lr), or too little capacity (a narrow code, "
                      "a small model)")  # fmt: skip
    wrong = [str(r.examples) for r in runs if not r.passed and r.ratio < below and r.correct is not None]
    if wrong:
        advice.append(f"at n = {_listed(wrong)} the loss falls but not every example is classified right: does "
                      "the prediction read the output the way the loss does?")  # fmt: skip
    return advice


def _gradient_advice(problems: list[GradientProblem]) -> list[str]:
    kinds = {
        "no gradient": "no gradient reaches {}: detached from the loss (unused in forward, a .detach() or .data, "
                       "computed under torch.no_grad, or a tensor replaced in forward)",
        "non-finite": "{} get NaN or inf gradients: an overflow in the forward (the log of 0, exp of a large "
                      "value, a division by 0)",
        "all zero": "{} get all-zero gradients: a dead path (ReLUs that never fire, a zero layer feeding a zero "
                    "layer, a multiplication by 0, a constant output)",
    }  # fmt: skip
    advice = []
    for prefix, text in kinds.items():
        names = [p.parameter for p in problems if p.problem.startswith(prefix)]
        if names:
            advice.append(text.format(_names(names)))
    return advice


def _init_advice(scales: list[ParameterScale]) -> list[str]:
    stds = [s.parameter for s in scales if s.flagged and s.ratio is not None]
    constants = [s.parameter for s in scales if s.flagged and s.ratio is None]
    advice = []
    if stds:
        advice.append(f"{_names(stds)}: the std is off the documented rule: compare reset_parameters with the model "
                      "file's paper-vs-code note (the fan-in, a bound used as a std: U(-a, a) has std a/sqrt(3), "
                      "a missing gain, a layer the loop skips)")  # fmt: skip
    if constants:
        advice.append(f"{_names(constants)}: not the constant the rule sets (is the layer reset at all?)")
    return advice


def _activation_advice(scales: list[ActivationScale]) -> list[str]:
    flagged = [s for s in scales if s.flagged]
    if not flagged:
        return []
    return [f"{_names([s.module for s in flagged])}: activations vanish or explode at initialization: weights "
            "too small or large for the depth, or inputs not at the scale the init expects (the data's "
            "normalization)"]  # fmt: skip


def _sweep_advice(points: list[SweepPoint], best: Optional[SweepPoint], initial: float) -> list[str]:
    if best is None or not best.final < initial:
        return [f"no learning rate from {points[0].lr:.0e} to {points[-1].lr:.0e} lowered the loss: the gradient "
                "does not reach the loss (see gradients), or the loss is not what the parameters change"]  # fmt: skip
    if best is points[0] or best is points[-1]:
        return [f"the best lr ({best.lr:.0e}) is at the edge of the sweep: the best may lie beyond it"]
    return []


# ---- the report -----------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it: dataclasses as dicts, NaN and infinities as None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


@dataclass
class Report:
    setup: dict[str, Any]
    checks: list[Check]
    files: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        checks = {c.name: {"passed": c.passed, "summary": c.summary, "advice": c.advice, "results": plain(c.data)}
                  for c in self.checks}  # fmt: skip
        return {"passed": self.passed, "setup": plain(self.setup), "checks": checks, "files": self.files}

    def text(self) -> str:
        s = self.setup
        overrides = ", ".join(f"{k}={v!r}" for k, v in s["overrides"].items()) or "none"
        lines = [f"diagnose {s['model']} ({s['paper']}): {s['data']} ({s['task']}, {s['training_examples']:,} "
                 f"training examples); {s['device']}, seed {s['seed']}; config overrides: {overrides}", ""]  # fmt: skip
        for check in self.checks:
            lines.append(f"{check.name:<12} {_verdict(check.passed)}  {check.summary}")
            lines.extend(check.table)
        failed = [c.name for c in self.checks if not c.passed]
        lines.append("")
        lines.append(f"FAIL: {', '.join(failed)}" if failed else f"PASS: all {len(self.checks)} checks passed")
        advice = [a for c in self.checks for a in c.advice]
        if advice:
            lines.append("what to look at:")
            lines.extend(f"  - {a}" for a in advice)
        if self.files:
            lines.append(f"written: {', '.join(self.files)}")
        return "\n".join(lines)


def plot_lr_sweep(sweep: dict[str, Any], out: Path, *, title: str) -> Path:
    """The final loss against the learning rate (log scale), the diverged runs marked, the loss at
    initialization as a dashed line, the best lr starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: list[SweepPoint] = sweep["points"]
    finite = [p for p in points if not p.diverged]
    fig, ax = plt.subplots(figsize=(6, 4))
    if finite:
        ax.plot([p.lr for p in finite], [p.final for p in finite], "o-", label="final loss")
    ax.axhline(sweep["initial"], ls="--", color="grey", label="at initialization")
    top = max([sweep["initial"], *(p.final for p in finite)])
    diverged = [p.lr for p in points if p.diverged]
    if diverged:
        ax.plot(diverged, [top] * len(diverged), "x", color="C3", ms=9, mew=2, label="diverged")
    if sweep["best_lr"] is not None:
        best = next(p for p in finite if p.lr == sweep["best_lr"])
        ax.plot([best.lr], [best.final], "*", color="C1", ms=14, label=f"best lr {best.lr:.2g}")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (Adam)", ylabel=f"mean loss after {sweep['steps']} steps", title=title)
    ax.legend()
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
