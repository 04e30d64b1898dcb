"""The model registry: every reference model and preset under one name.

Each model file describes its paper's presets as data: a :class:`Family` (what every preset of
the paper shares: its config and model classes, how to make a random batch, its training loss)
and a tuple ``SPECS`` of :class:`ModelSpec`, one per preset, made with ``Family.preset``. This
module lists the model files (``MODEL_MODULES``) and reads their ``SPECS`` the first time a
name is looked up; importing a model file registers nothing. A :class:`ModelSpec` lets the CLI,
the demo, the benchmarks and the tests treat every paper alike:

    spec = get_spec("lenet5-classic")
    model = create_model("lenet5-classic")
    inputs, target = spec.make_batch(model, batch_size=4, generator=torch.Generator().manual_seed(0))
    loss = spec.loss(model, inputs, target)

``register_model`` adds a preset of one's own.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from ..devices import resolve_device

# A batch is (inputs, target): the model is called as model(*inputs); target feeds the loss.
Batch = tuple[tuple[Tensor, ...], Tensor]
MakeBatch = Callable[..., Batch]  # (model, batch_size, *, generator) -> Batch
# The loss takes the model itself or a wrapper of it (DDP, torch.compile): it calls only the
# wrapper's forward, and reads attributes through ``unwrap``.
LossFn = Callable[[nn.Module, tuple[Tensor, ...], Tensor], Tensor]


@dataclass(frozen=True)
class OverfitRecipe:
    """How the debugging gauntlet overfits one fixed batch (Adam, fixed seed)."""

    batch_size: int = 4  # size of the one batch memorized
    steps: int = 60  # optimizer steps allowed
    lr: float = 1e-3  # Adam learning rate
    below: float = 0.1  # pass when the final loss < below * the initial loss
    overrides: tuple[tuple[str, Any], ...] = ()  # config overrides for the run (e.g. no dropout)


@dataclass(frozen=True)
class ModelSpec:
    name: str  # registry name, e.g. "lenet5-classic"
    family: str  # paper family, e.g. "lenet5"; the demo runs one preset per family
    paper: str  # short citation, e.g. "LeCun et al. 1998"
    config_cls: type  # typed dataclass with a from_name(preset, **overrides) classmethod
    preset: str  # the preset name passed to config_cls.from_name
    model_cls: type  # nn.Module subclass built as model_cls(config, device=..., dtype=...)
    make_batch: MakeBatch  # random (inputs, target) on the model's device and dtype
    loss: LossFn  # scalar training loss of model(*inputs) against target
    paper_param_count: Optional[int] = None  # the paper's own figure, None where it gives none
    demo: bool = False  # the preset `replab-fast demo` runs for this family (small, CPU-friendly)
    description: str = ""  # one line for `replab-fast models`
    overfit: Optional[OverfitRecipe] = None  # None for presets too large to train on a CPU in tests

    def build_config(self, **overrides: Any):
        return self.config_cls.from_name(self.preset, **overrides)


@dataclass(frozen=True)
class Family:
    """What every preset of one paper shares; ``preset`` makes the ModelSpec of one of them."""

    name: str  # family name, e.g. "lenet5"
    paper: str  # short citation
    config_cls: type  # typed dataclass with a from_name(preset, **overrides) classmethod
    model_cls: type  # built as model_cls(config, device=..., dtype=...)
    make_batch: MakeBatch  # random (inputs, target) on the model's device and dtype
    loss: LossFn  # scalar training loss

    def preset(self, name: str, preset: str, description: str, **fields: Any) -> ModelSpec:
        """The ModelSpec of preset ``preset`` registered as ``name``; ``fields`` sets the rest
        (``paper_param_count``, ``demo``, ``overfit``, and any shared field to override, such as
        ``paper`` or ``config_cls``)."""
        shared = dict(family=self.name, paper=self.paper, config_cls=self.config_cls, model_cls=self.model_cls,
                      make_batch=self.make_batch, loss=self.loss)  # fmt: skip
        return ModelSpec(name=name, preset=preset, description=description, **{**shared, **fields})


# The model files, one per paper, each with its SPECS (replab_fast/models/<module>.py).
MODEL_MODULES = ("alexnet", "autoencoder", "lenet", "llama", "lstm")

_REGISTRY: dict[str, ModelSpec] = {}
_LOADED = False


def register_model(spec: ModelSpec) -> ModelSpec:
    """Add a model preset to the registry; a name may be registered once."""
    _load_all()
    _add(spec)
    return spec


def _add(spec: ModelSpec) -> None:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] != spec:
        raise ValueError(f"model name {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec


def _load_all() -> None:
    """Read every model file's SPECS into the registry, once."""
    global _LOADED
    if _LOADED:
        return
    for module_name in MODEL_MODULES:
        module = importlib.import_module(f"{__package__}.{module_name}")
        for spec in module.SPECS:
            _add(spec)
    _LOADED = True


def list_models(family: Optional[str] = None) -> list[str]:
    """Names of every registered model preset, optionally only one family's."""
    _load_all()
    return [n for n, s in _REGISTRY.items() if family is None or s.family == family]


def get_spec(name: str) -> ModelSpec:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"unknown model {name!r}; known models: {known}") from None


def create_model(
    name: str,
    *,
    device: Optional[torch.device | str] = None,
    dtype: Optional[torch.dtype] = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model. ``overrides`` replace fields of the preset's config.

    ``device="meta"`` builds the model without allocating memory (to count parameters of
    the large presets).
    """
    spec = get_spec(name)
    config = spec.build_config(**overrides)
    device = resolve_device(device) if device is not None else None  # None: torch's default device
    return spec.model_cls(config, device=device, dtype=dtype)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a wrapper that keeps it as an attribute (DistributedDataParallel's
    ``module``, torch.compile's ``_orig_mod``): the losses read its config through this, and
    run its forward through the wrapper, so a data-parallel model's gradients are synced."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
