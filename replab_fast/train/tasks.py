"""What a run trains on: a model's data (``replab_fast.data.for_model``) in the form the loop uses.

A ``Task`` holds the three splits, turns a list of items into a batch ``((inputs, ...), target)``
as the model's loss takes it (floating inputs in the model's dtype), gives evaluation loaders,
and carries the tokenizer of the language models (saved beside the checkpoint, so ``eval`` and
``generate`` read text the way training did).

``data`` on the command line is a dataset name (``digits``, ``fashion-mnist``, ``mnist``,
``stdlib``, ``stdlib-packages``) or a path: for the image models a folder of MNIST-format IDX
files (then ``fashion-mnist`` unless the folder's files are MNIST's: say ``mnist:PATH``) or, for
AlexNet, a folder of class subfolders of images (``image-folder``, found by its layout, or say
``image-folder:PATH``), for the language models a text file or folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..data import DATASETS, for_model
from ..data.tokenizer import Tokenizer
from .recipes import Recipe

__all__ = ["Task", "make_task", "parse_data"]

TOKENIZER_FILE = "tokenizer.json"


def parse_data(model: str, data: Optional[str], task: str) -> tuple[Optional[str], Optional[str]]:
    """(dataset, data path) from the --data argument (see the module docstring)."""
    if data is None:
        return None, None
    names = DATASETS[task]
    if data in names:
        return data, None
    kind, sep, path = data.partition(":")
    if sep and kind in names and not Path(data).exists():
        return kind, path
    if task.startswith("image"):
        from ..data.image_folder import is_image_folder

        return ("image-folder" if is_image_folder(data) else "fashion-mnist"), data
    return None, data


@dataclass
class Task:
    model_name: str
    splits: dict[str, Dataset]
    dtype: torch.dtype  # the model's floating dtype: image inputs are cast to it
    tokenizer: Optional[Tokenizer]
    describe: dict[str, Any]  # what the data is, for meta.json and final.json
    workers: int = 0  # DataLoader worker processes

    @property
    def train(self) -> Dataset:
        return self.splits["train"]

    @property
    def tokenizer_file(self) -> Optional[str]:
        return TOKENIZER_FILE if self.tokenizer is not None else None

    def collate(self, items: list[tuple[Tensor, Tensor]]) -> tuple[tuple[Tensor, ...], Tensor]:
        inputs = torch.stack([x for x, _ in items])
        if inputs.is_floating_point():
            inputs = inputs.to(self.dtype)
        target = torch.stack([y for _, y in items])
        return (inputs,), (target.to(self.dtype) if target.is_floating_point() else target)

    def loader_options(self) -> dict[str, Any]:
        """DataLoader options: the worker processes (kept alive between evaluations)."""
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        return {"num_workers": self.workers, "persistent_workers": self.workers > 0}

    def loader(self, split: str, batch_size: int) -> DataLoader:
        """The split in order (evaluation), batches of ``batch_size`` (the last one smaller)."""
        return DataLoader(self.splits[split], batch_size=batch_size, shuffle=False, collate_fn=self.collate,
                          **self.loader_options())  # fmt: skip


def make_task(model_name: str, model: nn.Module, recipe: Optional[Recipe], data: Optional[str], *, seed: int,
              tokenizer: Optional[Path] = None, workers: int = 0) -> Task:  # fmt: skip
    """The task of ``model`` (a registry model built with the run's overrides) on ``data``
    (when None, the recipe's dataset, or the model's default one where there is no recipe).
    ``tokenizer``: a saved tokenizer file (a resumed or evaluated run reads its text as training
    did), else the language models' tokenizer is made from the training split. ``workers``: the
    DataLoader worker processes of its loaders."""
    from ..data import task_of

    config_fields = _config_overrides(model)
    kind = task_of(model_name, **config_fields)
    if data is None and recipe is not None:
        data = recipe.data
    dataset, path = parse_data(model_name, data, kind)
    extra = {"tokenizer": str(tokenizer)} if tokenizer is not None else {}
    model_data = for_model(model_name, dataset=dataset, data=path, seed=seed, **extra, **config_fields)
    dtype = next(model.parameters()).dtype
    describe = {"name": model_data.dataset, "source": model_data.source, "task": model_data.task,
                "items": model_data.input_format, "sizes": {s: len(d) for s, d in model_data.splits.items()},
                "notes": list(model_data.notes), "text": model_data.describe()}  # fmt: skip
    if model_data.tokenizer is not None:
        describe["tokenizer"] = model_data.tokenizer.describe()
    return Task(model_name, dict(model_data.splits), dtype, model_data.tokenizer, describe, workers)


def _config_overrides(model: nn.Module) -> dict[str, Any]:
    """The model's config as overrides of its preset (every init field), so the data matches it."""
    import dataclasses

    config = model.config
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.init}
