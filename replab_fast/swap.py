"""Swap fast drop-in modules into a reference model, and back.

Which fast module replaces which reference module is one table, ``DROP_INS`` in
``replab_fast.nn``: a ``DropIn`` (``replab_fast.drop_in``) per reference class, naming its kernel,
how to build it and the check that says why it cannot run a module. This module reads that table
at the first ``accelerate`` (importing the drop-ins then, not when replab_fast is imported);
``register_drop_in`` adds one's own after it.

A drop-in may carry several kernels that replace different parts of one reference module (the
LLaMA ``Attention`` drop-in: "rope" for the rotation, "attention" for the attention core). It
names them all, gives a check per kernel, and its build receives the kernels to use: those the
caller left on and whose check passed. Each kernel is thus turned off on its own, and the report
says, per swapped module, which kernels it uses and why the others were left out::

    DropIn(Attention, ("rope", "attention"), FastAttention.from_reference,
           check={"rope": rope_reason, "attention": attention_reason})
    # build(module, ("rope",)) when accelerate(model, attention=False)

``accelerate(model)`` walks the model, and for every submodule whose class is exactly a
registered reference class it builds the drop-in and puts it in the parent's place, then walks
on into the drop-in's children (a fused block may keep reference children that have drop-ins
of their own). Off CUDA, a drop-in registered with ``interpreted_on_cpu=True`` (the Triton
kernels, which run there only through Triton's interpreter) is swapped in only with
``accelerate(model, interpret=True)``: a plain call swaps what is fast on the model's device. The
drop-in reuses the reference's parameters and buffers (the same tensor objects: an optimizer built
before the swap keeps training the same weights) under the same state_dict keys; this is
verified at swap time. ``restore(model)`` puts the original modules back, bound to the current
tensors, so training done and ``.to()`` calls made while accelerated carry over.

Nothing here patches a class or a global: a swap touches one model instance and is reversible.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional, Sequence, Union

from torch import nn

from .drop_in import BuildFn, CheckFn, DropIn, MultiBuildFn, adopt_tensors, verify_shares_tensors

_DROP_INS: dict[type, list[DropIn]] = {}


def register_drop_in(
    reference: type,
    *,
    kernel: Union[str, Sequence[str]],
    build: Union[BuildFn, MultiBuildFn],
    check: Union[CheckFn, Mapping[str, CheckFn], None] = None,
    applies: Optional[Callable[[nn.Module], bool]] = None,
    interpreted_on_cpu: bool = False,
) -> DropIn:
    """Add a fast replacement for ``reference`` of one's own, after replab_fast's (``DROP_INS``
    in ``replab_fast.nn``); for each module the first usable one wins.

    ``kernel`` is one name, or several for a drop-in that carries several kernels; then ``build``
    takes ``(module, kernels)`` (the enabled, usable subset) and ``check`` may be a mapping from
    kernel name to its check. ``interpreted_on_cpu``: the kernels are Triton kernels, which run
    off CUDA only through the interpreter; ``accelerate`` then swaps them there only with
    ``interpret=True``.
    """
    drop_in = DropIn(reference, kernel if isinstance(kernel, str) else tuple(kernel), build, check, applies,
                     bool(interpreted_on_cpu))  # fmt: skip
    _drop_ins().setdefault(reference, []).append(drop_in)
    return drop_in


def unregister_drop_in(drop_in: DropIn) -> None:
    entries = _drop_ins().get(drop_in.reference, [])
    if drop_in in entries:
        entries.remove(drop_in)
    if not entries:
        _DROP_INS.pop(drop_in.reference, None)


_DROP_INS: dict[type, list[DropIn]] = {}  # by reference class: replab_fast's table, then the user's
_TABLE_READ = False


def _drop_ins() -> dict[type, list[DropIn]]:
    """The drop-ins ``accelerate`` uses, replab_fast's table (``replab_fast.nn.DROP_INS``) read at
    the first call: importing it imports the drop-in modules, and where Triton runs, triton."""
    global _TABLE_READ
    if not _TABLE_READ:
        from .nn import DROP_INS  # the table; it imports nothing of this module

        for drop_in in DROP_INS:
            _DROP_INS.setdefault(drop_in.reference, []).append(drop_in)
        _TABLE_READ = True
    return _DROP_INS


def registered_kernels() -> list[str]:
    """Names of the kernels that have at least one drop-in registered."""
    return sorted({k for entries in _drop_ins().values() for d in entries for k in d.kernels})


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class SwapEntry:
    path: str  # the submodule's dotted path in the model ("" for the model itself)
    reference: str  # reference class name
    kernel: Optional[str]  # the kernel(s) swapped in ("rope+attention" for several), None when not swapped
    swapped: bool
    reason: str = ""  # why it was not swapped; when swapped, why some of the drop-in's kernels were left out
    kernels: tuple[str, ...] = ()  # the kernels the swapped-in drop-in uses


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
        return sorted({k for e in self.swapped for k in e.kernels})

    def __str__(self) -> str:
        if not self.entries:
            return "no submodule of this model has a registered fast drop-in"
        lines = []
        for e in self.entries:
            if e.swapped:
                status = f"swapped ({', '.join(e.kernels)})" + (f"; left out: {e.reason}" if e.reason else "")
            else:
                status = f"kept: {e.reason}"
            lines.append(f"{e.path or '<model>'} [{e.reference}]: {status}")
        return "\n".join(lines)


@dataclass
class _Swap:
    parent: Optional[nn.Module]  # None when the swapped module is the model itself
    name: str
    original: nn.Module
    fast: nn.Module
    kernels: tuple[str, ...]


# --------------------------------------------------------------------------- accelerate / restore


def _applicable(module: nn.Module) -> list[DropIn]:
    """The drop-ins registered for ``module``'s exact class that apply to this instance."""
    return [d for d in _drop_ins().get(type(module), []) if d.applies is None or d.applies(module)]


INTERPRETER_REASON = (
    "Triton kernels run on a CPU only through the interpreter (slow); pass interpret=True to check parity"
)


def _off_cuda(module: nn.Module) -> bool:
    """Whether ``module``'s tensors live off CUDA (where Triton kernels are only interpreted)."""
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return tensor is None or tensor.device.type != "cuda"


@dataclass(frozen=True)
class _Options:
    enabled: Mapping[str, bool]  # kernel name -> on/off, as the caller gave them (default on)
    interpret: bool  # swap Triton kernels off CUDA too (through the interpreter)


def _choose(module: nn.Module, options: _Options) -> tuple[Optional[DropIn], tuple[str, ...], str]:
    """The first drop-in for ``module`` with at least one usable kernel, the kernels it will use
    and why its other kernels were left out; or None, () and the reasons."""
    reasons = []
    for drop_in in _applicable(module):
        usable, left_out = [], []
        interpreter_only = drop_in.interpreted_on_cpu and not options.interpret and _off_cuda(module)
        for kernel in drop_in.kernels:
            if not options.enabled.get(kernel, True):
                left_out.append(f"{kernel} disabled by the caller")
                continue
            reason = drop_in.unusable_reason(kernel, module) or (INTERPRETER_REASON if interpreter_only else None)
            if reason:
                left_out.append(f"{kernel}: {reason}")
                continue
            usable.append(kernel)
        if usable:
            return drop_in, tuple(usable), "; ".join(left_out)
        reasons += left_out
    return None, (), "; ".join(reasons)


def _swap_one(module: nn.Module, path: str, options: _Options, report: SwapReport) -> Optional[nn.Module]:
    """The drop-in for ``module`` if one is registered and usable, else None; the report says which."""
    if not _applicable(module):
        return None
    drop_in, kernels, reason = _choose(module, options)
    if drop_in is None:
        report.entries.append(SwapEntry(path, type(module).__name__, None, False, reason))
        return None
    fast = drop_in.make(module, kernels)
    verify_shares_tensors(fast, module)
    fast.train(module.training)
    report.entries.append(SwapEntry(path, type(module).__name__, "+".join(kernels), True, reason, kernels))
    return fast


def _swap_children(parent: nn.Module, prefix: str, options: _Options, report: SwapReport, swaps: list[_Swap]) -> None:
    """Depth first: a child is swapped first, then the children of whatever now sits in its place
    (a drop-in may keep reference children, e.g. a fused block keeps its norms and attention,
    and those get their own drop-ins)."""
    for name, child in list(parent.named_children()):
        path = f"{prefix}.{name}" if prefix else name
        fast = _swap_one(child, path, options, report)
        if fast is not None:
            setattr(parent, name, fast)
            swaps.append(_Swap(parent, name, child, fast, report.entries[-1].kernels))
        _swap_children(fast if fast is not None else child, path, options, report, swaps)


def _check_arguments(model: object, interpret: object, which: Mapping[str, object]) -> None:
    if not isinstance(model, nn.Module):
        hint = (f"; build the model first: replab_fast.create_model({model!r})" if isinstance(model, str) else "")
        raise TypeError(f"accelerate expects an nn.Module (a model), got {type(model).__name__} {model!r:.60}{hint}")
    if not isinstance(interpret, bool):
        raise TypeError(f"accelerate: interpret must be True or False, got {interpret!r}")
    known = registered_kernels()
    unknown = sorted(set(which) - set(known))
    if unknown:
        raise ValueError(f"unknown kernel(s) {', '.join(unknown)}; registered kernels: {', '.join(known) or 'none'}")
    for name, value in which.items():
        if not isinstance(value, bool):
            raise TypeError(f"accelerate: {name} must be True or False (turns the {name} kernel on or off), got {value!r}")


def accelerate(model: nn.Module, *, interpret: bool = False, **which: bool) -> nn.Module:
    """Replace reference submodules of ``model`` in place with their fast drop-ins.

    ``which`` turns kernels on or off by name, e.g. ``accelerate(model, rope=False)``; every
    registered kernel is on by default. By default only kernels that are fast on the model's
    device are swapped in: off CUDA, the Triton kernels run only through Triton's interpreter
    (correct, and far slower than PyTorch), so there they are swapped in only with
    ``interpret=True`` (to check parity on a machine without a GPU); the C++ convolution runs
    natively on the CPU. Returns the model (the drop-in itself when the model is a reference
    module). What was swapped, what was not and why is in ``model.replab_report`` (a
    :class:`SwapReport`). A model that is already accelerated is left as it is, with a warning:
    ``restore`` it first to accelerate it with other options.
    """
    _check_arguments(model, interpret, which)
    previous: list[_Swap] = model.__dict__.get("_replab_swaps", [])
    if previous:
        kernels = ", ".join(swapped_kernels(model))
        warnings.warn(
            f"{type(model).__name__} is already accelerated ({kernels}); nothing changed. "
            "Call replab_fast.restore(model) first to accelerate it with other options.",
            stacklevel=2,
        )
        return model

    options = _Options(which, interpret)
    report = SwapReport()
    swaps: list[_Swap] = []
    root = _swap_one(model, "", options, report)
    if root is not None:
        swaps.append(_Swap(None, "", model, root, report.entries[-1].kernels))
    else:
        root = model
    _swap_children(root, "", options, report, swaps)

    root.__dict__["_replab_swaps"] = swaps
    root.__dict__["replab_report"] = report
    return root


def restore(model: nn.Module) -> nn.Module:
    """Undo ``accelerate`` on ``model``: the original modules go back, bound to the current
    parameters and buffers. Returns the model (the original when the model itself was swapped)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"restore expects an nn.Module (a model), got {type(model).__name__} {model!r:.60}")
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
    return sorted({k for s in model.__dict__.get("_replab_swaps", []) for k in s.kernels})
