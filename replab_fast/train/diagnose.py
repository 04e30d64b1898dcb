"""``replab-fast diagnose MODEL``: the debugging gauntlet on a model's real training data, as a report.

Five checks, each from the same initialization (``gauntlet.py`` holds them):

1. overfit: full-batch Adam on 1, 10 and 100 training examples for ``steps`` steps (the model's
   ``OverfitRecipe`` config overrides where it has one; its lr, or the lr sweep's best where that
   is lower, unless ``lr`` is given). Passes when the loss above its
   floor falls below ``below`` (0.1) times its initial value, and for classification every example
   is classified right at n = 1 and 10. A model that cannot memorize one example has an
   architecture or gradient bug. The floor is 0, except for reconstruction: cross-entropy against
   soft (grey) targets cannot fall below their entropy, and a linear autoencoder cannot reconstruct
   more than its code's share of the principal components (``reconstruction_floor``).
2. gradients: one forward and backward on 10 examples; every trainable parameter's gradient finite
   and non-zero.
3. init: each parameter's mean and std against the std of the rule its model file documents
   (``init_rules.py``), and the std at the output of each top-level child on 10 examples.
4. lr sweep: 9 learning rates from 1e-5 to 1e-1, Adam for ``sweep_steps`` mini-batches; the mean
   loss over those batches afterwards, a diverged run (NaN or inf) marked; the best lr.
5. the report: printed, and in ``out``: report.json and lr_sweep.png.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..devices import resolve_device
from ..models.registry import ModelSpec, create_model, get_spec
from . import gauntlet
from .diagnose_report import Check, Report, plot_lr_sweep
from .init_rules import expected_init
from .metrics import predict_classes
from .recipes import RECIPES
from .tasks import Task, make_task

__all__ = ["DiagnoseOptions", "diagnose"]

OVERFIT_SIZES = (1, 10, 100)  # examples memorized
ALL_RIGHT_SIZES = (1, 10)  # classification: every example right at these sizes
PROBE_SIZE = 10  # examples of the gradient and activation checks
DEFAULT_STEPS = 200  # full-batch steps per overfit run
DEFAULT_LR = 1e-3  # Adam, for a model without an OverfitRecipe
DEFAULT_BELOW = 0.1
SWEEP_STEPS = 20
SWEEP_BATCH = 16


@dataclass
class DiagnoseOptions:
    """What ``replab-fast diagnose`` takes."""

    model: str  # a registry name
    out: Optional[Path] = None  # report.json and lr_sweep.png (default: runs/diagnose-MODEL)
    data: Optional[str] = None  # a dataset name or path, as for train
    steps: int = DEFAULT_STEPS  # Adam steps of each overfit run
    sweep_steps: int = SWEEP_STEPS  # mini-batches of each learning-rate run
    lr: Optional[float] = None  # the overfit lr (default: the OverfitRecipe's, else DEFAULT_LR)
    device: Optional[str] = None
    seed: int = 0
    overrides: dict[str, Any] = field(default_factory=dict)  # model config fields


@dataclass
class Subject:
    """The model under diagnosis at initialization, its data and how it is judged."""

    spec: ModelSpec
    model: nn.Module
    task: Task
    device: torch.device
    examples: list  # training items in a seeded order, the first OVERFIT_SIZES[-1] overfit
    lr: float
    below: float
    overrides: dict[str, Any]

    @property
    def classification(self) -> bool:
        return self.task.describe["task"].endswith("classification")

    @property
    def reconstruction(self) -> bool:
        return self.task.describe["task"] == "image-reconstruction"

    def batch(self, items: list) -> gauntlet.Batch:
        inputs, target = self.task.collate(items)
        return tuple(t.to(self.device) for t in inputs), target.to(self.device)


def _overrides(spec: ModelSpec, given: dict[str, Any]) -> dict[str, Any]:
    """The OverfitRecipe's config overrides, else the training recipe's with dropout off; then ``given``."""
    if spec.overfit is not None:
        base = dict(spec.overfit.overrides)
    else:
        base = dict(RECIPES[spec.name].model_overrides) if spec.name in RECIPES else {}
        if "dropout" in {f.name for f in dataclasses.fields(spec.config_cls)}:
            base["dropout"] = 0.0  # memorizing needs every unit
    return {**base, **given}


def prepare(options: DiagnoseOptions) -> Subject:
    """The model at initialization (seeded), its task, and its training examples in a seeded order."""
    spec = get_spec(options.model)
    device = resolve_device(options.device)
    overrides = _overrides(spec, options.overrides)
    torch.manual_seed(options.seed)
    model = create_model(spec.name, device=device, **overrides)
    task = make_task(spec.name, model, RECIPES.get(spec.name), options.data, seed=options.seed)
    order = torch.randperm(len(task.train), generator=torch.Generator().manual_seed(options.seed))
    needed = max(OVERFIT_SIZES[-1], SWEEP_BATCH * options.sweep_steps)
    examples = [task.train[int(order[i % len(order)])] for i in range(needed)]  # cycles through a small split
    recipe = spec.overfit
    lr = options.lr or (recipe.lr if recipe else DEFAULT_LR)
    return Subject(spec, model, task, device, examples, lr, recipe.below if recipe else DEFAULT_BELOW, overrides)


# ---- the checks -----------------------------------------------------------------------------


def reconstruction_floor(model: nn.Module, target: Tensor) -> float:
    """The lowest reconstruction loss ``model`` can reach on ``target``. Cross-entropy (the MLP
    autoencoders with ``config.loss == "bce"``, the conv autoencoder): the targets' mean binary
    entropy (0 for binary targets). The squared error of a linear autoencoder: the variance beyond
    the top ``code_dim`` principal components of the centred targets, which no rank-``code_dim``
    affine map reconstructs (Baldi & Hornik 1989). Any other squared error: 0."""
    config, target = model.config, target.double()
    if getattr(config, "loss", "bce") == "bce":
        return float(F.binary_cross_entropy(target, target))
    if getattr(config, "hidden_activation", None) == "identity" and config.output_activation == "identity":
        flat = target.flatten(1)
        residual = torch.linalg.svdvals(flat - flat.mean(0)).pow(2)[config.code_dim :].sum()
        return float(residual / flat.numel())
    return 0.0


def check_overfit(subject: Subject, steps: int) -> Check:
    runs = []
    for n in OVERFIT_SIZES:
        if n > len(subject.task.train):
            break
        batch = subject.batch(subject.examples[:n])
        floor = reconstruction_floor(subject.model, batch[1]) if subject.reconstruction else 0.0
        classify = predict_classes if subject.classification else None
        runs.append(gauntlet.overfit(subject.model, subject.spec.loss, batch, lr=subject.lr, steps=steps,
                                     below=subject.below, floor=floor, classify=classify,
                                     need_all_correct=n in ALL_RIGHT_SIZES))  # fmt: skip
    return Check.of_overfit(runs, lr=subject.lr, steps=steps, below=subject.below)


def check_gradients(subject: Subject) -> Check:
    problems, count = gauntlet.gradient_problems(subject.model, subject.spec.loss, _probe(subject))
    return Check.of_gradients(problems, count, PROBE_SIZE)


def check_init(subject: Subject) -> Check:
    return Check.of_init(gauntlet.parameter_scales(subject.model, expected_init(subject.model)))


def check_activations(subject: Subject) -> Check:
    scales = gauntlet.activation_scales(subject.model, subject.spec.loss, _probe(subject))
    return Check.of_activations(scales, PROBE_SIZE)


def check_lr_sweep(subject: Subject, sweep_steps: int, seed: int) -> Check:
    batches = [subject.batch(subject.examples[i * SWEEP_BATCH : (i + 1) * SWEEP_BATCH]) for i in range(sweep_steps)]
    batches = [b for b in batches if b[1].shape[0]]
    initial = gauntlet.mean_loss(subject.model, subject.spec.loss, batches)
    points = gauntlet.lr_sweep(subject.model, subject.spec.loss, batches, gauntlet.learning_rates(), seed=seed)
    return Check.of_sweep(points, initial, steps=len(batches), batch=SWEEP_BATCH)


def _probe(subject: Subject) -> gauntlet.Batch:
    return subject.batch(subject.examples[:PROBE_SIZE])


# ---- the run --------------------------------------------------------------------------------


def _suggest_the_sweeps_lr(overfit: Check, sweep: Check, lr: float) -> None:
    """An overfit that failed at a learning rate far (over 3x) from the sweep's best: say which to try."""
    best = sweep.data["best_lr"]
    if not overfit.passed and best is not None and not 1 / 3 <= lr / best <= 3:
        overfit.advice.append(f"the overfit ran at lr {lr:g}, the sweep's best is {best:.2g}: try --lr {best:.2g}")


def _setup(subject: Subject, options: DiagnoseOptions) -> dict[str, Any]:
    d = subject.task.describe
    return {"model": subject.spec.name, "paper": subject.spec.paper, "data": d.get("name"), "task": d.get("task"),
            "training_examples": len(subject.task.train), "device": str(subject.device), "seed": options.seed,
            "overrides": subject.overrides, "steps": options.steps, "sweep_steps": options.sweep_steps,
            "lr": subject.lr, "below": subject.below}  # fmt: skip


def diagnose(options: DiagnoseOptions) -> Report:
    """Run every check on ``options.model`` and write report.json and lr_sweep.png into ``options.out``."""
    if options.steps < 1 or options.sweep_steps < 1:
        raise ValueError(f"steps and sweep_steps must be >= 1, got {options.steps} and {options.sweep_steps}")
    subject = prepare(options)
    sweep = check_lr_sweep(subject, options.sweep_steps, options.seed)
    best = sweep.data["best_lr"]
    if options.lr is None and best is not None and best < subject.lr:
        # The overfit recipes' rates were set on 4 random examples; on 100 real ones a rate above
        # the sweep's best often oscillates (llama-tiny at 1e-2, lstm-lm-small at 0.05).
        subject.lr = best
    checks = [
        check_overfit(subject, options.steps),
        check_gradients(subject),
        check_init(subject),
        check_activations(subject),
        sweep,
    ]
    _suggest_the_sweeps_lr(checks[0], checks[-1], subject.lr)
    report = Report(_setup(subject, options), checks)
    out = Path(options.out if options.out is not None else f"runs/diagnose-{options.model}")
    out.mkdir(parents=True, exist_ok=True)
    report.files = [str(out / "report.json"), str(out / "lr_sweep.png")]
    (out / "report.json").write_text(json.dumps(report.as_dict(), indent=1) + "\n")
    plot_lr_sweep(checks[-1].data, out / "lr_sweep.png", title=f"{options.model}: learning-rate sweep")
    return report
