"""Checkpoints: the model's weights as safetensors and everything else a run needs to resume
exactly, written atomically so that an interrupted write never leaves a broken checkpoint.

A checkpoint is a folder:

    model.safetensors   the model's state_dict (its own keys), loadable without replab_fast
    state.pt            optimizer, scheduler, GradScaler, RNG states, data position, step
    meta.json           what it is: the model name and its config, the recipe, the step, versions

``save`` writes the three files into a fresh temporary folder beside the target, flushes them to
disk, then swaps it in with renames: the old checkpoint is renamed aside, the new one renamed into
place, the old one deleted. A crash at any point leaves either the new or the old checkpoint
whole; ``find`` looks for the aside copy when the target is missing (a crash between the two
renames). ``load`` refuses a checkpoint of another model or config, naming the difference, and
says a damaged file is damaged.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["CheckpointError", "check_same_run", "find", "load_meta", "load_state", "load_weights", "read_weights", "save"]

WEIGHTS, STATE, META = "model.safetensors", "state.pt", "meta.json"
_ASIDE = ".old"  # suffix of the previous checkpoint while the new one is renamed into place


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, damaged, or not the one the run asks for."""


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make the renames in ``folder`` durable (where the platform lets a folder be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(folder: Path, weights: Union[nn.Module, dict[str, torch.Tensor]], state: dict[str, Any],
         meta: dict[str, Any]) -> Path:  # fmt: skip
    """Write a checkpoint to ``folder`` atomically (see the module docstring); returns ``folder``.
    ``weights``: the model, or its (whole) state_dict."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        state_dict = weights.state_dict() if isinstance(weights, nn.Module) else weights
        tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
        save_file(tensors, tmp / WEIGHTS, metadata={"format": "pt"})
        torch.save(state, tmp / STATE)
        (tmp / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n")
        _fsync_tree(tmp)
        aside = folder.with_name(folder.name + _ASIDE)
        if aside.exists():
            shutil.rmtree(aside)
        if folder.exists():
            os.rename(folder, aside)
        os.rename(tmp, folder)
        _fsync_dir(folder.parent)
        if aside.exists():
            shutil.rmtree(aside)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def find(folder: Path) -> Optional[Path]:
    """The checkpoint at ``folder``, or the previous one left aside by a crash mid-swap, or None."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + _ASIDE)):
        if (candidate / META).is_file():
            return candidate
    return None


def _require(folder: Path) -> Path:
    found = find(folder)
    if found is None:
        raise CheckpointError(f"no checkpoint at {folder} (no {META} there); train one with `replab-fast train`")
    return found


def load_meta(folder: Path) -> dict[str, Any]:
    """meta.json of the checkpoint at ``folder``."""
    path = _require(folder) / META
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is damaged ({exc}); delete the checkpoint or train again") from exc


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors of the checkpoint at ``folder``, as a state_dict (on the CPU)."""
    path = _require(folder) / WEIGHTS
    try:
        return load_file(path)
    except (OSError, SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{path} is damaged or incomplete ({exc}); delete the checkpoint or train again") from exc


def load_weights(folder: Path, model: nn.Module) -> None:
    """Load model.safetensors into ``model`` (strict: every key, every shape)."""
    path = _require(folder) / WEIGHTS
    weights = read_weights(folder)
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit this model: {exc}") from exc


def load_state(folder: Path) -> dict[str, Any]:
    """state.pt of the checkpoint at ``folder`` (tensors and plain Python values only)."""
    path = _require(folder) / STATE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds for a damaged file
        raise CheckpointError(f"{path} is damaged or incomplete ({type(exc).__name__}: {exc}); delete the checkpoint "
                              "or train again") from exc  # fmt: skip


def check_same_run(meta: dict[str, Any], expected: dict[str, Any], keys: tuple[str, ...] = ("model", "config")) -> None:
    """Refuse to resume a checkpoint whose ``keys`` differ from this run's, naming the difference."""
    for key in keys:
        have, want = meta.get(key), expected.get(key)
        if have == want:
            continue
        if isinstance(have, dict) and isinstance(want, dict):
            fields = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            detail = ", ".join(f"{k}: {have.get(k)!r} in the checkpoint, {want.get(k)!r} now" for k in fields)
        else:
            detail = f"{have!r} in the checkpoint, {want!r} now"
        raise CheckpointError(f"the checkpoint is of another {key} ({detail}); resume with the same settings or "
                              "train into another --out folder")  # fmt: skip
