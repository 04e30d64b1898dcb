"""What a drop-in is: the ``DropIn`` record ``accelerate`` reads, and the tensor sharing that
makes a fast module a drop-in for a reference one.

A drop-in is a module that computes the reference module's function with fast kernels while
using the reference's own parameter and buffer tensors (the same objects, under the same
state_dict keys): ``adopt_tensors`` binds a freshly built (meta-device) module to them, and
``verify_shares_tensors`` is what ``accelerate`` checks before it swaps one in. The drop-ins of
replab_fast are in ``replab_fast.nn``, whose ``DROP_INS`` table lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

import torch
from torch import nn

__all__ = ["BuildFn", "CheckFn", "DropIn", "MultiBuildFn", "adopt_tensors", "verify_shares_tensors"]

BuildFn = Callable[[nn.Module], nn.Module]  # reference module -> drop-in sharing its tensors
# Several kernels: (reference module, the kernels to use, a non-empty subset) -> drop-in
MultiBuildFn = Callable[[nn.Module, tuple], nn.Module]
CheckFn = Callable[[nn.Module], Optional[str]]  # reference module -> reason it can't swap, or None


@dataclass(frozen=True)
class DropIn:
    """One fast replacement for one reference module class, as ``accelerate`` reads it."""

    reference: type  # the reference nn.Module class it replaces (exact class, not subclasses)
    kernel: Union[str, tuple[str, ...]]  # its kernel's name (or names): accelerate(model, <kernel>=False)
    build: Union[BuildFn, MultiBuildFn]  # build(module), or build(module, kernels) for several kernels
    # e.g. "Triton is not installed": one check, or one per kernel ({name: check}) for several kernels
    check: Union[CheckFn, Mapping[str, CheckFn], None] = None
    # False for an instance the drop-in is not about at all (a Sequential without a convolution
    # for the fused conv): accelerate then treats it as unregistered, with no report entry.
    applies: Optional[Callable[[nn.Module], bool]] = None
    # True for Triton kernels: off a CUDA device they run only through Triton's interpreter
    # (correct, and orders of magnitude slower), so accelerate swaps them there only when asked.
    interpreted_on_cpu: bool = False

    @property
    def kernels(self) -> tuple[str, ...]:
        """The kernels this drop-in carries."""
        return (self.kernel,) if isinstance(self.kernel, str) else tuple(self.kernel)

    def unusable_reason(self, kernel: str, module: nn.Module) -> Optional[str]:
        """Why ``kernel`` of this drop-in cannot run ``module``, or None."""
        check = self.check.get(kernel) if isinstance(self.check, Mapping) else self.check
        return check(module) if check is not None else None

    def __post_init__(self) -> None:
        if not (isinstance(self.reference, type) and issubclass(self.reference, nn.Module)):
            raise TypeError(f"reference must be an nn.Module subclass, got {self.reference!r}")
        if not isinstance(self.kernel, str):
            kernel = tuple(self.kernel)
            if not kernel or not all(isinstance(k, str) for k in kernel) or len(set(kernel)) != len(kernel):
                raise ValueError(f"kernel must be a name or distinct names, got {self.kernel!r}")
            object.__setattr__(self, "kernel", kernel)
        if isinstance(self.check, Mapping):
            unknown = sorted(set(self.check) - set(self.kernels))
            if unknown:
                raise ValueError(f"checks for kernels the drop-in does not carry: {', '.join(unknown)}")

    def make(self, module: nn.Module, kernels: tuple[str, ...]) -> nn.Module:
        """The drop-in for ``module`` using ``kernels`` (all of its kernels for a one-kernel drop-in)."""
        return self.build(module) if isinstance(self.kernel, str) else self.build(module, kernels)


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


def verify_shares_tensors(fast: nn.Module, reference: nn.Module) -> None:
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
