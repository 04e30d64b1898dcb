"""Swap fast drop-in modules into a reference model, and back.

A kernel registers a *drop-in* for one reference module class::

    register_drop_in(RMSNorm, kernel="rms_norm", build=FastRMSNorm.from_reference,
                     check=lambda m: None if triton_usable(m) else "Triton not installed")

``accelerate(model)`` walks the model, and for every submodule whose class is exactly a
registered reference class it builds the drop-in and puts it in the parent's place, then walks
on into the drop-in's children (a fused block may keep reference children that have drop-ins
of their own). The drop-in
reuses the reference's parameters and buffers (the same tensor objects: an optimizer built
before the swap keeps training the same weights) under the same state_dict keys; this is
verified at swap time. ``restore(model)`` puts the original modules back, bound to the current
tensors, so training done and ``.to()`` calls made while accelerated carry over.

Nothing here patches a class or a global: a swap touches one model instance and is reversible.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import nn

BuildFn = Callable[[nn.Module], nn.Module]  # reference module -> drop-in sharing its tensors
CheckFn = Callable[[nn.Module], Optional[str]]  # reference module -> reason it can't swap, or None


@dataclass(frozen=True)
class DropIn:
    reference: type  # the reference nn.Module class it replaces (exact class, not subclasses)
    kernel: str  # the kernel's name: accelerate(model, <kernel>=False) leaves it out
    build: BuildFn
    check: Optional[CheckFn] = None  # e.g. "Triton is not installed", "dtype float64 unsupported"


_DROP_INS: dict[type, list[DropIn]] = {}


def register_drop_in(
    reference: type, *, kernel: str, build: BuildFn, check: Optional[CheckFn] = None
) -> DropIn:
    """Register a fast replacement for ``reference``; the first usable one registered wins."""
    if not (isinstance(reference, type) and issubclass(reference, nn.Module)):
        raise TypeError(f"reference must be an nn.Module subclass, got {reference!r}")
    drop_in = DropIn(reference, kernel, build, check)
    _DROP_INS.setdefault(reference, []).append(drop_in)
    return drop_in


def unregister_drop_in(drop_in: DropIn) -> None:
    entries = _DROP_INS.get(drop_in.reference, [])
    if drop_in in entries:
        entries.remove(drop_in)
    if not entries:
        _DROP_INS.pop(drop_in.reference, None)


def _load_drop_ins() -> None:
    import replab_fast.nn  # noqa: F401  (the drop-in modules register themselves there)


def registered_kernels() -> list[str]:
    """Names of the kernels that have at least one drop-in registered."""
    _load_drop_ins()
    return sorted({d.kernel for entries in _DROP_INS.values() for d in entries})


# --------------------------------------------------------------------------- tensor sharing


def _tensor_slots(module: nn.Module) -> tuple[dict, dict]:
    """Every parameter and buffer slot by dotted name, ``None`` slots included (a bias=None, a
    KV cache not allocated yet), as (parameters, buffers)."""
    params, buffers = {}, {}
    for prefix, sub in module.named_modules(remove_duplicate=False):
        dot = prefix + "." if prefix else ""
        params.update({dot + k: v for k, v in sub._parameters.items()})
        buffers.update({dot + k: v for k, v in sub._buffers.items()})
    return params, buffers


def _set_slot(module: nn.Module, dotted: str, tensor: Optional[torch.Tensor], is_param: bool) -> None:
    owner_path, _, leaf = dotted.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    (owner._parameters if is_param else owner._buffers)[leaf] = tensor


def adopt_tensors(target: nn.Module, source: nn.Module) -> nn.Module:
    """Make ``target`` use ``source``'s parameters and buffers (same objects), matched by name.

    Both modules must have the same parameter and buffer slots (persistent or not, empty ones
    included). Returns ``target``. Drop-ins use it to bind a freshly built (e.g. meta-device)
    module to the reference's tensors; ``restore`` uses it to bind the original module back.
    """
    src_params, src_buffers = _tensor_slots(source)
    dst_params, dst_buffers = _tensor_slots(target)
    if src_params.keys() != dst_params.keys() or src_buffers.keys() != dst_buffers.keys():
        raise ValueError(
            f"{type(target).__name__} cannot adopt the tensors of {type(source).__name__}: "
            f"parameters {sorted(dst_params)} vs {sorted(src_params)}, "
            f"buffers {sorted(dst_buffers)} vs {sorted(src_buffers)}"
        )
    for name, param in src_params.items():
        _set_slot(target, name, param, is_param=True)
    for name, buf in src_buffers.items():
        _set_slot(target, name, buf, is_param=False)
    target.train(source.training)
    return target


def _verify_shares_tensors(fast: nn.Module, reference: nn.Module) -> None:
    ref_state, fast_state = reference.state_dict(keep_vars=True), fast.state_dict(keep_vars=True)
    if ref_state.keys() != fast_state.keys():
        raise RuntimeError(
            f"drop-in {type(fast).__name__} changes the state_dict keys of {type(reference).__name__}: "
            f"{sorted(fast_state)} vs {sorted(ref_state)}"
        )
    ref_params = dict(reference.named_parameters())
    for name, param in fast.named_parameters():
        if ref_params.get(name) is not param:
            raise RuntimeError(
                f"drop-in {type(fast).__name__} does not reuse the reference parameter {name!r}; "
                "build it with replab_fast.swap.adopt_tensors"
            )


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class SwapEntry:
    path: str  # the submodule's dotted path in the model ("" for the model itself)
    reference: str  # reference class name
    kernel: Optional[str]  # the drop-in's kernel, None when none is registered
    swapped: bool
    reason: str = ""  # why it was not swapped


@dataclass
class SwapReport:
    entries: list[SwapEntry] = field(default_factory=list)

    @property
    def swapped(self) -> list[SwapEntry]:
        return [e for e in self.entries if e.swapped]

    @property
    def skipped(self) -> list[SwapEntry]:
        return [e for e in self.entries if not e.swapped]

    def kernels(self) -> list[str]:
        """The kernels swapped in, each once."""
        return sorted({e.kernel for e in self.swapped if e.kernel})

    def __str__(self) -> str:
        if not self.entries:
            return "no submodule of this model has a registered fast drop-in"
        lines = []
        for e in self.entries:
            status = f"swapped ({e.kernel})" if e.swapped else f"kept: {e.reason}"
            lines.append(f"{e.path or '<model>'} [{e.reference}]: {status}")
        return "\n".join(lines)


@dataclass
class _Swap:
    parent: Optional[nn.Module]  # None when the swapped module is the model itself
    name: str
    original: nn.Module
    fast: nn.Module
    kernel: str


# --------------------------------------------------------------------------- accelerate / restore


def _choose(module: nn.Module, enabled: dict[str, bool]) -> tuple[Optional[DropIn], str]:
    """The first usable drop-in for ``module``, or None and the reason."""
    reasons = []
    for drop_in in _DROP_INS.get(type(module), []):
        if not enabled.get(drop_in.kernel, True):
            reasons.append(f"{drop_in.kernel} disabled by the caller")
            continue
        reason = drop_in.check(module) if drop_in.check else None
        if reason:
            reasons.append(f"{drop_in.kernel}: {reason}")
            continue
        return drop_in, ""
    return None, "; ".join(reasons)


def _swap_one(module: nn.Module, path: str, enabled: dict[str, bool], report: SwapReport) -> Optional[nn.Module]:
    """The drop-in for ``module`` if one is registered and usable, else None; the report says which."""
    if type(module) not in _DROP_INS:
        return None
    drop_in, reason = _choose(module, enabled)
    if drop_in is None:
        report.entries.append(SwapEntry(path, type(module).__name__, None, False, reason))
        return None
    fast = drop_in.build(module)
    _verify_shares_tensors(fast, module)
    fast.train(module.training)
    report.entries.append(SwapEntry(path, type(module).__name__, drop_in.kernel, True))
    return fast


def _swap_children(parent: nn.Module, prefix: str, enabled, report: SwapReport, swaps: list[_Swap]) -> None:
    """Depth first: a child is swapped first, then the children of whatever now sits in its place
    (a drop-in may keep reference children, e.g. a fused block keeps its norms and attention,
    and those get their own drop-ins)."""
    for name, child in list(parent.named_children()):
        path = f"{prefix}.{name}" if prefix else name
        fast = _swap_one(child, path, enabled, report)
        if fast is not None:
            setattr(parent, name, fast)
            swaps.append(_Swap(parent, name, child, fast, report.entries[-1].kernel))
        _swap_children(fast if fast is not None else child, path, enabled, report, swaps)


def accelerate(model: nn.Module, **which: bool) -> nn.Module:
    """Replace reference submodules of ``model`` in place with their fast drop-ins.

    ``which`` turns kernels on or off by name, e.g. ``accelerate(model, rope=False)``; every
    registered kernel is on by default. Returns the model (the drop-in itself when the model is
    a reference module). What was swapped, what was not and why is in ``model.replab_report``
    (a :class:`SwapReport`). Calling it again swaps what is left.
    """
    known = registered_kernels()
    unknown = sorted(set(which) - set(known))
    if unknown:
        raise ValueError(f"unknown kernel(s) {', '.join(unknown)}; registered kernels: {', '.join(known) or 'none'}")

    report = SwapReport()
    swaps: list[_Swap] = []
    root = _swap_one(model, "", which, report)
    if root is not None:
        swaps.append(_Swap(None, "", model, root, report.entries[-1].kernel))
    else:
        root = model
    _swap_children(root, "", which, report, swaps)

    previous: list[_Swap] = model.__dict__.get("_replab_swaps", [])
    root.__dict__["_replab_swaps"] = previous + swaps
    root.__dict__["replab_report"] = report
    return root


def restore(model: nn.Module) -> nn.Module:
    """Undo every ``accelerate`` on ``model``: the original modules go back, bound to the
    current parameters and buffers. Returns the model (the original when the model itself
    was swapped)."""
    swaps: list[_Swap] = model.__dict__.pop("_replab_swaps", [])
    model.__dict__.pop("replab_report", None)
    root = model
    for swap in reversed(swaps):
        adopt_tensors(swap.original, swap.fast)
        if swap.parent is None:
            root = swap.original
        else:
            setattr(swap.parent, swap.name, swap.original)
    return root


def swapped_kernels(model: nn.Module) -> list[str]:
    """The kernels currently swapped into ``model``."""
    return sorted({s.kernel for s in model.__dict__.get("_replab_swaps", [])})
