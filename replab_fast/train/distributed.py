"""Data-parallel training with torch.distributed, launched by torchrun: the process group, the
model wrappers (DDP for every family, FSDP2 for LLaMA), and full checkpoints.

    torchrun --nproc_per_node 2 -m replab_fast.cli train llama-tiny --strategy fsdp

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE and the rendezvous; ``setup`` opens the process
group (nccl on CUDA, one GPU per process, LOCAL_RANK's; gloo on a CPU) with a timeout, so that a
collective never waits for a dead peer forever. A rank that fails ends its process with the
error; torchrun then stops the others and exits non-zero with that rank's error.

The same global batch as one process: every rank draws the run's batch stream and takes its
share (``BatchStream``: examples rank, rank + N, ...); the gradients are averaged over the
ranks, so the step is the one-process step on the whole batch. Rank 0 alone logs, draws the
progress bar and writes checkpoints (after a barrier, so a checkpoint is whole before any rank
goes on); the training loss it logs is the mean over the ranks.

Strategies. ``ddp``: ``DistributedDataParallel``, every rank holding the whole model, gradients
all-reduced in buckets during the backward (with gradient accumulation, only on the last
micro-batch: ``no_sync``). ``fsdp`` (LLaMA): FSDP2, ``fully_shard`` on each transformer block
and then on the root: parameters, gradients and optimizer state sharded over the ranks, each
block's parameters all-gathered for its forward and backward and freed after.

Checkpoints are always full (loadable in one process): with FSDP the model and optimizer state
dicts are gathered to rank 0 (``torch.distributed.checkpoint.state_dict`` with
``full_state_dict=True``) and, on resume, broadcast from it. The RNG states of every rank are
saved, so a distributed run resumes distributed, with the same dropout masks.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["STRATEGIES", "Dist", "setup"]

STRATEGIES = ("ddp", "fsdp")
DEFAULT_TIMEOUT_S = 300


@dataclass
class Dist:
    """This process's place in the run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: Optional[str] = None  # None: one process

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the ranks (the value itself in one process)."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return float(t) / self.world_size

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def _device(self) -> torch.device:
        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")


def launched_by_torchrun() -> bool:
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def setup(strategy: Optional[str], device: Optional[str], timeout_s: int = DEFAULT_TIMEOUT_S) -> tuple[Dist, Optional[str]]:
    """Open the process group when launched by torchrun; (this process's Dist, its device name).

    Without torchrun a strategy is an error (it needs the processes torchrun starts).
    """
    if strategy is not None and strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        if strategy is not None and not launched_by_torchrun():
            raise ValueError(f"--strategy {strategy} needs several processes: launch with "
                             "`torchrun --nproc_per_node N -m replab_fast.cli train ...`")  # fmt: skip
        return Dist(), device
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(rank, world, local, strategy or "ddp"), device


def wrap(model: nn.Module, d: Dist, *, transformer_blocks: Optional[type] = None) -> nn.Module:
    """The model as the run's strategy trains it: DDP, or FSDP2 over ``transformer_blocks``."""
    if not d.active:
        return model
    if d.strategy == "fsdp":
        if transformer_blocks is None:
            raise ValueError("--strategy fsdp shards LLaMA's transformer blocks; this model has none: use ddp")
        from torch.distributed.fsdp import fully_shard

        for module in model.modules():
            if isinstance(module, transformer_blocks):
                fully_shard(module)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [d.local_rank] if next(model.parameters()).device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer, d: Dist) -> tuple[dict, dict]:
    """(model state_dict, optimizer state_dict), whole, on every rank (rank 0 writes them)."""
    if d.strategy != "fsdp":
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, weights: dict, optim_state: dict,
                    d: Dist) -> None:  # fmt: skip
    """Load a whole checkpoint into a (possibly sharded) model and its optimizer."""
    if d.strategy != "fsdp":
        model.load_state_dict(weights)
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, weights, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state, options=options)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
