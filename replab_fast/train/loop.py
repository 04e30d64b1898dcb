"""The one training loop of every model family: build, step, evaluate, log, checkpoint, resume.

One optimizer step takes a global batch from the run's ``BatchStream`` (in ``grad_accum``
micro-batches, gradients summed), optionally under bf16 or fp16 autocast (fp16 with a
GradScaler), clips the global gradient norm after unscaling, steps the optimizer and the
learning-rate schedule. Every ``log_every`` steps a training line, every ``eval_every`` steps
(and at the end) the paper's metric on the validation split, every ``checkpoint_every`` steps
(and at the end, and at ``stop_at``) a checkpoint: ``OUT/checkpoint`` the last, ``OUT/best``
the best by the validation metric.

Exact resume. A checkpoint holds the model, the optimizer, the schedule, the GradScaler, the
RNG states (torch's CPU and CUDA generators, Python's) and the data position (the batch
stream's epoch and batch). The data loader draws from its own generator, evaluation draws no
random numbers, and nothing else does; so a run stopped at step k and resumed draws the same
batches and dropout masks as an uninterrupted one, and on a CPU logs bitwise the same losses.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import __version__
from ..devices import resolve_device
from ..models.registry import ModelSpec, create_model, get_spec
from ..swap import accelerate
from . import checkpoint as ckpt
from .distributed import Dist, full_state, load_full_state, setup, teardown, wrap
from .logs import MetricsLog, plot_curves
from .metrics import METRICS, evaluate
from .recipes import Recipe, recipe_for
from .sampler import BatchStream
from .schedule import make_scheduler
from .tasks import TOKENIZER_FILE, Task, make_task

__all__ = ["RunOptions", "RunResult", "train"]


@dataclass
class RunOptions:
    """What ``replab-fast train`` takes; None keeps the recipe's value."""

    model: str  # a registry name
    out: Path  # the run folder: metrics.jsonl, curves.png, checkpoint/, best/
    data: Optional[str] = None  # a dataset name or path (default: the recipe's)
    steps: Optional[int] = None
    batch_size: Optional[int] = None  # the global batch
    lr: Optional[float] = None
    grad_accum: Optional[int] = None
    amp: Optional[str] = None
    seed: int = 0
    fast: bool = False  # accelerate(): the kernels fast on this device
    interpret: bool = False  # with fast: the Triton kernels through the interpreter too (CPU parity)
    compile: bool = False  # torch.compile the model
    resume: bool = False  # continue from OUT/checkpoint
    stop_at: Optional[int] = None  # end after this step with a checkpoint, as a preempted job would
    device: Optional[str] = None
    strategy: Optional[str] = None  # under torchrun: "ddp" (default) or "fsdp" (LLaMA)
    progress: bool = True  # a tqdm progress bar on stderr
    workers: int = 0  # data loader worker processes (decoding image files); 0: in the training process
    overrides: dict[str, Any] = field(default_factory=dict)  # model config fields


@dataclass
class RunResult:
    step: int  # the last step taken
    metrics: dict[str, float]  # the last validation metrics
    out: Path
    rank: int = 0  # this process's rank (0 in one process)


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    cls = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)


def _config_dict(model: nn.Module) -> dict[str, Any]:
    config = getattr(model, "config", None)
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}


class Trainer:
    """One run. ``run()`` trains to the planned steps (or ``stop_at``) and returns the result."""

    def __init__(self, options: RunOptions, dist: Optional[Dist] = None) -> None:
        self.options, self.dist = options, dist or Dist()
        self.rank, self.world_size = self.dist.rank, self.dist.world_size
        self.spec: ModelSpec = get_spec(options.model)
        self.recipe = recipe_for(options.model).replace(
            steps=options.steps, batch_size=options.batch_size, lr=options.lr, grad_accum=options.grad_accum,
            amp=options.amp,
        )  # fmt: skip
        if options.stop_at is not None and not 1 <= options.stop_at <= self.recipe.steps:
            raise ValueError(f"--stop-at {options.stop_at} is outside the planned run of {self.recipe.steps} steps")
        self.device = resolve_device(options.device)
        self.out = Path(options.out)
        torch.manual_seed(options.seed)
        random.seed(options.seed)
        overrides = {**dict(self.recipe.model_overrides), **options.overrides}
        self.model = create_model(options.model, device=self.device, **overrides)
        self.config = _config_dict(self.model)
        saved_tokenizer = self.out / TOKENIZER_FILE
        self.task: Task = make_task(options.model, self.model, self.recipe, options.data, seed=options.seed,
                                    tokenizer=saved_tokenizer if options.resume and saved_tokenizer.is_file() else None,
                                    workers=options.workers)  # fmt: skip
        self.metric = METRICS[self.recipe.metric]
        if options.fast:
            accelerate(self.model, interpret=options.interpret)
        wrapped = wrap(self.model, self.dist, transformer_blocks=_transformer_block_class(self.model))
        self.forward_model = torch.compile(wrapped) if options.compile else wrapped
        self.optimizer = _optimizer(self.model, self.recipe)  # after fully_shard: over the sharded parameters
        self.scheduler = make_scheduler(self.optimizer, self.recipe.schedule, self.recipe.steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.recipe.amp == "fp16")
        self.stream = BatchStream(len(self.task.train), self.recipe.batch_size, seed=options.seed, rank=self.rank,
                                  world_size=self.world_size, keyed=getattr(self.task.train, "keyed_by_epoch", False))  # fmt: skip
        self.step, self.best = 0, None
        self.last_metrics: dict[str, float] = {}
        self.meta = self._meta()
        if options.resume:
            self._resume()
        self.log = MetricsLog(self.out / "metrics.jsonl", resume_from=self.step if options.resume else None,
                              enabled=self.rank == 0)  # fmt: skip

    # ---- state --------------------------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {
            "model": self.options.model, "config": self.config, "recipe": self.recipe.as_dict(),
            "data": {**self.task.describe, "arg": self.options.data}, "seed": self.options.seed,
            "world_size": self.world_size,
            "versions": {"replab_fast": __version__, "torch": torch.__version__, "python": sys.version.split()[0]},
            "tokenizer": self.task.tokenizer_file,
        }  # fmt: skip

    def _state(self, optimizer_state: dict[str, Any]) -> dict[str, Any]:
        return {
            "step": self.step, "optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": self.dist.gather(_rng_state()), "data": self.stream.state_dict(),
            "best": self.best,
        }  # fmt: skip

    def _resume(self) -> None:
        folder = self.out / "checkpoint"
        meta = ckpt.load_meta(folder)
        ckpt.check_same_run(meta, self.meta, keys=("model", "config", "seed", "world_size"))
        state = ckpt.load_state(folder)
        weights = ckpt.read_weights(folder)
        try:
            load_full_state(self.model, self.optimizer, weights, state["optimizer"], self.dist)
        except RuntimeError as exc:
            raise ckpt.CheckpointError(f"{folder} does not fit this model: {exc}") from exc
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.stream.load_state_dict(state["data"])
        _set_rng_state(state["rng"][self.rank])
        self.step, self.best = int(state["step"]), state["best"]

    def save(self, name: str = "checkpoint") -> None:
        """Every rank takes part (the full state is gathered); rank 0 writes; then all go on."""
        weights, optimizer_state = full_state(self.model, self.optimizer, self.dist)
        state = self._state(optimizer_state)
        if self.rank == 0:
            meta = {**self.meta, "step": self.step, "metrics": self.last_metrics}
            ckpt.save(self.out / name, weights, state, meta)
            if self.task.tokenizer is not None:
                self.task.tokenizer.save(self.out / self.task.tokenizer_file)
        self.dist.barrier()

    # ---- steps --------------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.recipe.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.recipe.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _to_device(self, batch):
        inputs, target = batch
        return tuple(t.to(self.device) for t in inputs), target.to(self.device)

    def train_step(self, batch) -> float:
        """One optimizer step on this process's share of a global batch; the mean loss."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        inputs, target = self._to_device(batch)
        n = target.shape[0]
        micro = max(1, n // self.recipe.grad_accum)
        total = 0.0
        for start in range(0, n, micro):
            part_inputs = tuple(t[start : start + micro] for t in inputs)
            part_target = target[start : start + micro]
            with self._sync_context(last=start + micro >= n), self._autocast():
                loss = self.spec.loss(self.forward_model, part_inputs, part_target) * (part_target.shape[0] / n)
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        total = self.dist.mean(total)  # the global batch's mean loss (every rank's share is the same size)
        if self.recipe.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return total

    def _sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        """Gradient accumulation: a data-parallel model syncs only on the last micro-batch."""
        set_sync = getattr(self.model, "set_requires_gradient_sync", None)  # FSDP2
        if set_sync is not None:
            set_sync(last)
            return contextlib.nullcontext()
        no_sync = getattr(self.forward_model, "no_sync", None)  # DDP
        return contextlib.nullcontext() if last or no_sync is None else no_sync()

    def evaluate(self, split: str = "val") -> dict[str, float]:
        loader = self.task.loader(split, self.recipe.batch_size)
        limit = self.recipe.eval_batches if split == "val" else None
        return evaluate(self.model, self.spec.loss, (self._to_device(b) for b in loader), self.metric,
                        max_batches=limit)  # fmt: skip

    # ---- the run ------------------------------------------------------------------------------

    def _batches(self) -> Iterator:
        loader = DataLoader(self.task.train, batch_sampler=self.stream, collate_fn=self.task.collate,
                            generator=torch.Generator().manual_seed(self.options.seed), **self.task.loader_options())  # fmt: skip
        for batch in loader:
            self.stream.consumed()  # the workers draw ahead; the saved position follows the steps
            yield batch

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.metric.higher_is_better else value < self.best

    def _validate(self) -> None:
        self.last_metrics = self.evaluate("val")
        self.log.write({"step": self.step, "split": "val", **self.last_metrics})
        value = self.last_metrics[self.metric.name]
        if self._improved(value):
            self.best = value
            self.save("best")

    def run(self) -> RunResult:
        end = self.options.stop_at or self.recipe.steps
        batches = self._batches()
        bar = self._progress(end)
        try:
            while self.step < end:
                loss = self.train_step(next(batches))
                self.step += 1
                bar.update(1)
                # The lines follow the planned run only (not --stop-at), so a resumed run logs the same ones.
                if self.step % self.recipe.log_every == 0 or self.step == self.recipe.steps:
                    lr = self.optimizer.param_groups[0]["lr"]
                    self.log.write({"step": self.step, "split": "train", "loss": loss, "lr": lr})
                    bar.set_postfix(loss=f"{loss:.4f}")
                if self.step % self.recipe.eval_every == 0 or self.step == self.recipe.steps:
                    self._validate()
                if self.step % self.recipe.checkpoint_every == 0 or self.step == end:
                    self.save()
        except KeyboardInterrupt:
            print(f"\ninterrupted at step {self.step}; the last checkpoint in {self.out / 'checkpoint'} is whole: "
                  "continue with --resume", file=sys.stderr)  # fmt: skip
            raise
        finally:
            bar.close()
        if self.rank == 0 and (self.out / "metrics.jsonl").exists():
            plot_curves(self.out / "metrics.jsonl", self.out / "curves.png", metric=self.metric.name,
                        title=f"{self.options.model} on {self.task.describe.get('name', 'data')}")  # fmt: skip
        return RunResult(self.step, self.last_metrics, self.out, self.rank)

    def _progress(self, end: int):
        from tqdm.auto import tqdm

        return tqdm(total=end, initial=self.step, desc=self.options.model, unit="step",
                    disable=not self.options.progress or self.rank != 0, file=sys.stderr)  # fmt: skip


def _transformer_block_class(model: nn.Module) -> Optional[type]:
    """The class FSDP shards by (LLaMA's transformer block), or None for the other families."""
    from ..models.llama import TransformerBlock

    return TransformerBlock if any(isinstance(m, TransformerBlock) for m in model.modules()) else None


def train(options: RunOptions) -> RunResult:
    """Train ``options.model`` by its recipe (see the module docstring); under torchrun, data
    parallel (``replab_fast.train.distributed``)."""
    dist, device = setup(options.strategy, options.device)
    try:
        return Trainer(dataclasses.replace(options, device=device), dist).run()
    finally:
        teardown()
