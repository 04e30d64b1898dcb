"""A trained run, used: the test metrics of a checkpoint, and text generated from one.

A run folder (``replab-fast train --out DIR``) holds ``checkpoint/`` (the last) and ``best/``
(the best by the validation metric), and for the language models ``tokenizer.json``. Either the
run folder or one checkpoint folder may be given; from a run folder the last checkpoint is used
unless ``which="best"``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from torch import nn

from ..devices import resolve_device
from ..models.registry import create_model, get_spec
from . import checkpoint as ckpt
from .metrics import METRICS, evaluate
from .recipes import recipe_for
from .tasks import make_task

__all__ = ["checkpoint_folder", "evaluate_checkpoint", "generate_text", "load_model"]


def checkpoint_folder(path: Path, which: str = "last") -> Path:
    """The checkpoint folder ``path`` names: itself, or the run's last (or best) checkpoint."""
    path = Path(path)
    if which not in ("last", "best"):
        raise ValueError(f"which must be 'last' or 'best', got {which!r}")
    if ckpt.find(path) is not None and not (path / "checkpoint").exists():
        return path
    return path / ("checkpoint" if which == "last" else "best")


def load_model(folder: Path, *, device: Optional[str] = None) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a checkpoint, its weights loaded, in eval mode, and the checkpoint's meta."""
    meta = ckpt.load_meta(folder)
    spec = get_spec(meta["model"])
    fields = {f.name for f in dataclasses.fields(spec.config_cls) if f.init}
    overrides = {k: v for k, v in meta["config"].items() if k in fields}
    model = create_model(meta["model"], device=resolve_device(device), **overrides)
    ckpt.load_weights(folder, model)
    return model.eval(), meta


def _run_folder(folder: Path) -> Path:
    """The run folder of a checkpoint folder (where tokenizer.json is)."""
    folder = Path(folder)
    return folder.parent if folder.name in ("checkpoint", "best", "checkpoint.old", "best.old") else folder


def evaluate_checkpoint(path: Path, *, split: str = "test", which: str = "last", device: Optional[str] = None,
                        batch_size: Optional[int] = None) -> dict[str, Any]:  # fmt: skip
    """The paper's metric (and the loss) of a checkpoint on ``split`` of the data it was trained on."""
    folder = checkpoint_folder(path, which)
    model, meta = load_model(folder, device=device)
    recipe = recipe_for(meta["model"])
    data = meta.get("data", {}).get("arg")
    tokenizer = _run_folder(folder) / meta["tokenizer"] if meta.get("tokenizer") else None
    if tokenizer is not None and not tokenizer.is_file():
        raise ckpt.CheckpointError(f"{tokenizer} is missing: the run's tokenizer is saved beside its checkpoints")
    task = make_task(meta["model"], model, recipe, data, seed=meta.get("seed", 0), tokenizer=tokenizer)
    spec = get_spec(meta["model"])
    metric = METRICS[meta["recipe"]["metric"]]
    dev = next(model.parameters()).device
    batches = ((tuple(t.to(dev) for t in inputs), target.to(dev))
               for inputs, target in task.loader(split, batch_size or meta["recipe"]["batch_size"]))  # fmt: skip
    result = evaluate(model, spec.loss, batches, metric)
    return {"model": meta["model"], "checkpoint": str(folder), "step": meta.get("step"), "split": split,
            "data": task.describe["name"], "metric": metric.name, "value": result[metric.name], **result}  # fmt: skip


def generate_text(path: Path, prompt: str, *, max_new_tokens: int = 200, temperature: float = 0.8,
                  top_k: Optional[int] = None, top_p: Optional[float] = None, seed: int = 0, which: str = "last",
                  device: Optional[str] = None) -> Iterator[str]:  # fmt: skip
    """The text a language model's checkpoint continues ``prompt`` with, piece by piece as it is
    sampled (the same seed gives the same text); stops at the end-of-text token."""
    from ..data.tokenizer import load_tokenizer

    folder = checkpoint_folder(path, which)
    model, meta = load_model(folder, device=device)
    if not callable(getattr(model, "stream", None)):
        raise ValueError(f"{meta['model']} is not a language model: generate takes the LLaMA and LSTM LM runs")
    tokenizer_path = _run_folder(folder) / (meta.get("tokenizer") or "tokenizer.json")
    if not tokenizer_path.is_file():
        raise ckpt.CheckpointError(f"{tokenizer_path} is missing: the run's tokenizer is saved beside its checkpoints")
    tokenizer = load_tokenizer(tokenizer_path)
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty: give at least one character to continue")
    dev = next(model.parameters()).device
    prompt_ids = torch.tensor([ids], dtype=torch.long, device=dev)  # (1, T0)
    generator = torch.Generator(device=dev).manual_seed(seed)
    new: list[int] = []
    shown = ""
    for token in model.stream(prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                              generator=generator, eos_id=tokenizer.eos_id):  # fmt: skip
        if tokenizer.eos_id is not None and int(token[0]) == tokenizer.eos_id:
            break
        new.append(int(token[0]))
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):  # an incomplete multi-byte character: wait for its other bytes
            continue
        yield text[len(shown):]
        shown = text
    rest = tokenizer.decode(new)[len(shown):]
    if rest:
        yield rest
