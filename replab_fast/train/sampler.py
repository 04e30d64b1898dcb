"""The data position of a run: global batches of example indices in a seeded order, resumable.

``BatchStream`` is an endless ``torch.utils.data.Sampler`` of batches: epoch e visits the examples
in the order of ``torch.randperm(n)`` drawn from a generator seeded with (seed, e), cut into
batches of ``batch_size`` (the last incomplete batch of an epoch is dropped, so every step sees a
full batch). Its state is two integers, the epoch and the batch within it; a resumed run loads
them and draws exactly the batches the uninterrupted run would have drawn. The position moves
when the run calls ``consumed()`` for a batch it took, not when the loader draws one, so loader
workers that prefetch batches ahead do not move it. Its own generator
never touches torch's global RNG, which dropout uses.

``rank`` and ``world_size`` give one process of a data-parallel run its share of each global
batch (examples rank, rank + world_size, ...), so N processes see the same examples at each step
as one process would.

``keyed=True`` yields ``(index, epoch)`` pairs instead of indices, for a dataset whose items
depend on the epoch (the image folder's random crops: ``ImageFolderDataset.keyed_by_epoch``), so
those draws follow the data position too and resume exactly.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["BatchStream"]


class BatchStream(Sampler[list[int]]):
    def __init__(self, n_examples: int, batch_size: int, *, seed: int, shuffle: bool = True, rank: int = 0,
                 world_size: int = 1, keyed: bool = False) -> None:  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {batch_size}")
        if n_examples < batch_size:
            raise ValueError(f"the batch ({batch_size} examples) is larger than the data ({n_examples} examples); "
                             "use a smaller --batch-size or more data")  # fmt: skip
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size} processes")
        if batch_size % world_size:
            raise ValueError(f"the global batch ({batch_size}) must split evenly over {world_size} processes")
        self.n_examples, self.batch_size, self.seed, self.shuffle = n_examples, batch_size, seed, shuffle
        self.rank, self.world_size, self.keyed = rank, world_size, keyed
        self.epoch, self.batch = 0, 0  # the position: the next batch to draw

    @property
    def batches_per_epoch(self) -> int:
        return self.n_examples // self.batch_size

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n_examples)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_examples, generator=g)

    def __iter__(self) -> Iterator[list[int]]:
        # Drawing runs ahead of the position when loader workers prefetch: it keeps its own cursor,
        # and only consumed() moves the position a checkpoint saves.
        epoch, batch = self.epoch, self.batch
        while True:
            order = self._order(epoch)
            while batch < self.batches_per_epoch:
                global_batch = order[batch * self.batch_size : (batch + 1) * self.batch_size]
                batch += 1
                mine = global_batch[self.rank :: self.world_size].tolist()
                yield [(index, epoch) for index in mine] if self.keyed else mine
            epoch, batch = epoch + 1, 0

    def consumed(self) -> None:
        """One batch was taken by the run: the saved position moves past it."""
        self.batch += 1
        if self.batch == self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only asks for it when len(loader) is called
        raise TypeError("BatchStream is endless: it has no length")

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "n_examples": self.n_examples,
                "batch_size": self.batch_size}  # fmt: skip

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "n_examples", "batch_size"):
            if state[key] != getattr(self, key):
                raise ValueError(f"the saved data position is for {key}={state[key]}, this run has "
                                 f"{key}={getattr(self, key)}")  # fmt: skip
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
