"""What a run writes as it goes: metrics as JSON lines, and the curves as a PNG.

``metrics.jsonl`` holds one JSON object per logged step: ``step``, ``split`` ("train" or "val"),
``loss`` and, for validation, the paper's metric under its name (plus its companions); training
lines also carry the learning rate. Nothing in a line depends on the clock, so a stopped and
resumed run writes the same lines as an uninterrupted one. On resume, lines after the
checkpoint's step (logged by the interrupted run after its last checkpoint) are dropped.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

__all__ = ["MetricsLog", "plot_curves"]


class MetricsLog:
    def __init__(self, path: Path, *, resume_from: Optional[int] = None, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled  # only rank 0 of a distributed run writes
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_from is None:
            self.path.write_text("")
        elif self.path.exists():
            kept = [line for line in self.read(self.path) if line["step"] <= resume_from]
            self.path.write_text("".join(json.dumps(line) + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, out: Path, *, metric: str, title: str) -> Path:
    """The training and validation loss, and the validation metric, against the step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = MetricsLog.read(metrics_path)
    train = [(r["step"], r["loss"]) for r in lines if r["split"] == "train"]
    val = [r for r in lines if r["split"] == "val"]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        ax_loss.plot(*zip(*train), label="train", lw=1)
    if val:
        ax_loss.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="validation", ms=3)
        ax_metric.plot([r["step"] for r in val], [r.get(metric, math.nan) for r in val], "o-", ms=3, color="C1")
    ax_loss.set(xlabel="step", ylabel="loss", title="loss")
    if train or val:
        ax_loss.legend()
    ax_metric.set(xlabel="step", ylabel=metric, title=f"validation {metric}")
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
