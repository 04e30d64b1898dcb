"""Learning-rate schedules: warmup then cosine decay to a floor, constant, and a paper's step decay.

Each is the factor the base learning rate is multiplied by at a step (``LambdaLR``'s contract),
a pure function of the step and the planned total, so that a resumed run rebuilds the same
schedule from its recipe and the scheduler's saved step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Schedule", "make_scheduler"]

KINDS = ("cosine", "constant", "step")


@dataclass(frozen=True)
class Schedule:
    kind: str = "cosine"  # "cosine": linear warmup then cosine to min_ratio; "constant"; "step": decay at milestones
    warmup: int = 0  # steps of linear warmup from lr / warmup (cosine and constant)
    min_ratio: float = 0.1  # cosine: the last step's lr is base lr * min_ratio
    milestones: tuple[float, ...] = ()  # step: fractions of the total steps at which the lr is multiplied by gamma
    gamma: float = 0.1  # step: the factor at each milestone

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0 steps, got {self.warmup}")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {self.min_ratio}")
        if any(not 0.0 < m < 1.0 for m in self.milestones) or list(self.milestones) != sorted(self.milestones):
            raise ValueError(f"milestones must be increasing fractions of the run in (0, 1), got {self.milestones}")

    def factor(self, step: int, total: int) -> float:
        """The multiplier of the base learning rate at 0-based ``step`` of ``total``."""
        if self.kind != "step" and self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "constant":
            return 1.0
        if self.kind == "step":
            return self.gamma ** sum(step >= m * total for m in self.milestones)
        decay_steps = max(1, total - self.warmup - 1)
        progress = min(1.0, (step - self.warmup) / decay_steps)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:  # fmt: skip
    """A LambdaLR following ``schedule`` over ``total_steps`` optimizer steps."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step, total_steps))
