"""The checks of the debugging gauntlet, each on a model, its loss and real batches: memorizing a
few examples, gradients at initialization, parameter and activation scales, a learning-rate sweep.

Every check takes ``loss_fn(model, inputs, target)`` (a registry ``ModelSpec.loss``) and batches
``(inputs, target)`` already on the model's device, and returns a plain dataclass (what
``replab-fast diagnose`` prints and writes to report.json). A check that trains works on a deep copy
of the model, so every run starts from the same initialization; none changes the model it is given.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .init_rules import ExpectedInit

__all__ = [
    "ActivationScale", "GradientProblem", "OverfitRun", "ParameterScale", "SweepPoint",
    "activation_scales", "gradient_problems", "learning_rates", "lr_sweep", "mean_loss", "overfit", "parameter_scales",
    "watched_modules",
]  # fmt: skip

Batch = tuple[tuple[Tensor, ...], Tensor]
LossFn = Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]
Classify = Callable[[nn.Module, tuple[Tensor, ...]], Tensor]  # (model, inputs) -> predicted classes (B,)

INIT_STD_FACTOR = 2.0  # a parameter's std more than this many times off its rule's is flagged ...
SMALL_TENSOR_FACTOR = 3.0  # ... or this many for a tensor of fewer than SMALL_TENSOR values (a noisy std)
SMALL_TENSOR = 32
CONSTANT_TOLERANCE = 1e-6  # a constant rule: every value within this of the constant
VANISHING, EXPLODING = 1e-3, 1e3  # activation std bounds


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _finite(value: float) -> bool:
    return math.isfinite(value)


# ---- 1. memorizing a few examples -----------------------------------------------------------


@dataclass
class OverfitRun:
    examples: int
    initial: float  # the loss at initialization
    final: float  # after the last step
    floor: float  # the lowest loss possible (0, or the targets' entropy for soft targets)
    ratio: float  # (final - floor) / (initial - floor)
    passed: bool
    correct: Optional[int] = None  # examples classified right at the end (classification)
    problem: str = ""  # why it could not train, when it could not
    losses: list[float] = field(default_factory=list)  # before each step


def _excess_ratio(initial: float, final: float, floor: float) -> float:
    if not (_finite(initial) and _finite(final)):
        return math.nan
    return (final - floor) / max(initial - floor, 1e-12)


def overfit(model: nn.Module, loss_fn: LossFn, batch: Batch, *, lr: float, steps: int, below: float,
            floor: float = 0.0, classify: Optional[Classify] = None,
            need_all_correct: bool = False) -> OverfitRun:  # fmt: skip
    """Full-batch Adam on ``batch`` for ``steps`` steps from a copy of ``model``. Passes when the loss
    above ``floor`` falls below ``below`` times its initial value (and, with ``need_all_correct``,
    ``classify`` gets every example right)."""
    model = copy.deepcopy(model).train()
    inputs, target = batch
    losses: list[float] = []
    problem = ""
    optimizer = torch.optim.Adam(_trainable(model), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, inputs, target)
        losses.append(float(loss.detach()))
        if not _finite(losses[-1]):
            problem = f"the loss became {losses[-1]} at step {len(losses)}"
            break
        if not loss.requires_grad:
            problem = "the loss depends on no trainable parameter"
            break
        loss.backward()
        optimizer.step()
    final = _loss(model, loss_fn, batch) if not problem.startswith("the loss became") else losses[-1]
    initial = losses[0] if losses else math.nan
    ratio = _excess_ratio(initial, final, floor)
    correct = _count_correct(model, classify, inputs, target)
    passed = _finite(ratio) and ratio < below and not problem and (
        not need_all_correct or correct is None or correct == target.shape[0])  # fmt: skip
    return OverfitRun(target.shape[0], initial, final, floor, ratio, passed, correct, problem, losses)


@torch.no_grad()
def _loss(model: nn.Module, loss_fn: LossFn, batch: Batch) -> float:
    return float(loss_fn(model, *batch))


@torch.no_grad()
def _count_correct(model: nn.Module, classify: Optional[Classify], inputs: tuple[Tensor, ...],
                   target: Tensor) -> Optional[int]:  # fmt: skip
    if classify is None:
        return None
    return int((classify(model, inputs) == target).sum())


# ---- 2. gradients at initialization ---------------------------------------------------------


@dataclass
class GradientProblem:
    parameter: str
    problem: str  # "no gradient", "non-finite (k of n values)", "all zero"


def gradient_problems(model: nn.Module, loss_fn: LossFn, batch: Batch) -> tuple[list[GradientProblem], int]:
    """One forward and backward of a copy of ``model`` on ``batch``: the trainable parameters whose
    gradient is missing, non-finite or all zero, and how many trainable parameters there are."""
    model = copy.deepcopy(model).train()
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, *batch)
    if loss.requires_grad:
        loss.backward()
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    problems = [GradientProblem(name, why) for name, p in named if (why := _gradient_problem(p.grad))]
    return problems, len(named)


def _gradient_problem(grad: Optional[Tensor]) -> str:
    if grad is None:
        return "no gradient: detached from the loss"
    bad = int((~torch.isfinite(grad)).sum())
    if bad:
        return f"non-finite in {bad} of {grad.numel()} values"
    if not bool(grad.any()):
        return "all zero"
    return ""


# ---- 3. scales at initialization ------------------------------------------------------------


@dataclass
class ParameterScale:
    parameter: str
    shape: list[int]
    mean: float
    std: float
    expected_std: Optional[float]  # None: no documented rule
    rule: str
    ratio: Optional[float]  # std / expected_std
    flagged: bool
    problem: str = ""


def parameter_scales(model: nn.Module, expected: dict[str, ExpectedInit]) -> list[ParameterScale]:
    """Each parameter's mean and std against what its rule gives; flagged when the std is off by more
    than INIT_STD_FACTOR (SMALL_TENSOR_FACTOR under SMALL_TENSOR values), or a constant is not one."""
    return [_parameter_scale(name, p.detach(), expected.get(name)) for name, p in model.named_parameters()]


def _parameter_scale(name: str, values: Tensor, rule: Optional[ExpectedInit]) -> ParameterScale:
    values = values.double()
    mean = float(values.mean())
    std = float(values.std()) if values.numel() > 1 else 0.0
    shape = list(values.shape)
    if rule is None:
        return ParameterScale(name, shape, mean, std, None, "no documented rule", None, False)
    if rule.constant is not None:
        off = float((values - rule.constant).abs().max())
        problem = f"not the constant {rule.constant:g} (max difference {off:.3g})" if off > CONSTANT_TOLERANCE else ""
        return ParameterScale(name, shape, mean, std, 0.0, rule.rule, None, bool(problem), problem)
    ratio = std / rule.std
    factor = SMALL_TENSOR_FACTOR if values.numel() < SMALL_TENSOR else INIT_STD_FACTOR
    flagged = not 1 / factor <= ratio <= factor
    problem = f"std {ratio:.3g}x the rule's (allowed {1 / factor:.2g}x to {factor:g}x)" if flagged else ""
    return ParameterScale(name, shape, mean, std, rule.std, rule.rule, ratio, flagged, problem)


@dataclass
class ActivationScale:
    module: str
    stds: list[float]  # the output's std at each call of the module in one forward
    flagged: bool
    problem: str = ""


def watched_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's top-level children, the members of a container (ModuleList, ModuleDict,
    Sequential) one level down instead of the container."""
    containers = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
    watched = []
    for name, child in model.named_children():
        if isinstance(child, containers):
            watched.extend((f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children())
        else:
            watched.append((name, child))
    return watched


def _first_float_tensor(output) -> Optional[Tensor]:
    if isinstance(output, Tensor):
        return output if output.is_floating_point() else None
    if isinstance(output, (tuple, list)):
        return next((t for t in map(_first_float_tensor, output) if t is not None), None)
    return None


@torch.no_grad()
def activation_scales(model: nn.Module, loss_fn: LossFn, batch: Batch) -> list[ActivationScale]:
    """The std of each watched module's output in one forward (eval mode) of ``loss_fn`` on ``batch``;
    flagged below VANISHING or above EXPLODING (or non-finite)."""
    model = copy.deepcopy(model).eval()
    seen: dict[str, list[float]] = {}

    def record(name: str):
        def hook(module, args, output):
            tensor = _first_float_tensor(output)
            if tensor is not None and tensor.numel() > 1:
                seen.setdefault(name, []).append(float(tensor.detach().double().std()))

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in watched_modules(model)]
    try:
        loss_fn(model, *batch)
    finally:
        for handle in handles:
            handle.remove()
    return [_activation_scale(name, stds) for name, stds in seen.items()]


def _activation_scale(name: str, stds: list[float]) -> ActivationScale:
    if not all(map(_finite, stds)):
        return ActivationScale(name, stds, True, "non-finite")
    if min(stds) < VANISHING:
        return ActivationScale(name, stds, True, f"vanishing: std {min(stds):.3g} < {VANISHING:g}")
    if max(stds) > EXPLODING:
        return ActivationScale(name, stds, True, f"exploding: std {max(stds):.3g} > {EXPLODING:g}")
    return ActivationScale(name, stds, False)


# ---- 4. the learning-rate sweep -------------------------------------------------------------


@dataclass
class SweepPoint:
    lr: float
    final: float  # the mean loss over the sweep's batches after the run (NaN when diverged)
    diverged: bool  # a loss became NaN or infinite
    losses: list[float] = field(default_factory=list)  # before each step


def learning_rates(low: float = 1e-5, high: float = 1e-1, points: int = 9) -> list[float]:
    """``points`` learning rates from ``low`` to ``high``, evenly spaced on a log scale."""
    return [float(lr) for lr in torch.logspace(math.log10(low), math.log10(high), points, dtype=torch.float64)]


def mean_loss(model: nn.Module, loss_fn: LossFn, batches: list[Batch]) -> float:
    """The mean loss of ``model`` over ``batches``, in eval mode (restored afterwards), no gradient."""
    was_training = model.training
    model.eval()
    try:
        return sum(_loss(model, loss_fn, b) for b in batches) / len(batches)
    finally:
        model.train(was_training)


def lr_sweep(model: nn.Module, loss_fn: LossFn, batches: list[Batch], lrs: list[float], *,
             seed: int = 0) -> list[SweepPoint]:  # fmt: skip
    """For each lr, Adam from a copy of ``model``, one step per batch of ``batches`` (the same ones,
    in the same order, for every lr), then the mean loss over them."""
    return [_sweep_run(model, loss_fn, batches, lr, seed) for lr in lrs]


def _sweep_run(model: nn.Module, loss_fn: LossFn, batches: list[Batch], lr: float, seed: int) -> SweepPoint:
    torch.manual_seed(seed)  # the same dropout masks for every lr
    model = copy.deepcopy(model).train()
    optimizer = torch.optim.Adam(_trainable(model), lr=lr)
    losses = []
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, *batch)
        losses.append(float(loss.detach()))
        if not _finite(losses[-1]):
            return SweepPoint(lr, math.nan, True, losses)
        if loss.requires_grad:
            loss.backward()
            optimizer.step()
    final = mean_loss(model, loss_fn, batches)
    return SweepPoint(lr, final if _finite(final) else math.nan, not _finite(final), losses)
