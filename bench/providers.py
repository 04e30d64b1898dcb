"""The providers of a case: the implementations every case runs side by side in one process.

A provider is a column of the report and a pytest id ("eager", "compile", "torch", "sdpa-*",
"liger", "replab_fast"); ``require`` skips, with the reason, one that cannot run on this device.
``sdpa_backend`` pins an ``sdpa-*`` provider's backend; ``fast_drop_in`` is the replab_fast
provider's module (a copy of the reference with ``replab_fast.accelerate`` applied).

Nothing here runs at import: no CUDA call, no compilation, no global setting.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
from torch import nn

__all__ = ["Provider", "PROVIDERS", "provider", "require", "sdpa_backend", "fast_drop_in"]


@dataclass(frozen=True)
class Provider:
    """One implementation of a case, run side by side with the others in the same process."""

    name: str  # column name in the report, also the pytest id ("eager", "compile", "liger", ...)
    role: str  # "reference" | "compiled" | "pytorch" | "ours" | "peer"
    description: str  # one line for the report's legend
    needs_cuda: bool = False  # skipped (with this reason) where there is no CUDA device
    needs_module: Optional[str] = None  # a peer's import name: skipped when not installed

    def unavailable(self, device: torch.device) -> Optional[str]:
        """Why this provider cannot run here, or None."""
        if self.needs_cuda and device.type != "cuda":
            return f"provider {self.name!r} needs a CUDA device; this run is on {device.type}"
        if self.needs_module and importlib.util.find_spec(self.needs_module) is None:
            return f"provider {self.name!r}: {self.needs_module} is not installed"
        return None


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in [
        Provider("eager", "reference", "the reference implementation in eager mode"),
        Provider("eager-tf32", "reference", "the reference in eager mode with cuDNN's default TF32 convolutions "
                 "(float32 conv cases; the other providers run them in true fp32)", needs_cuda=True),
        Provider("compile", "compiled", "the reference under torch.compile (default mode)"),
        Provider("torch", "pytorch", "PyTorch's own fused op (e.g. F.rms_norm, cuDNN conv/LSTM)"),
        Provider("sdpa-flash", "pytorch", "F.scaled_dot_product_attention, flash backend", needs_cuda=True),
        Provider("sdpa-efficient", "pytorch", "F.scaled_dot_product_attention, memory-efficient backend",
                 needs_cuda=True),
        Provider("sdpa-cudnn", "pytorch", "F.scaled_dot_product_attention, cuDNN backend", needs_cuda=True),
        Provider("sdpa-math", "pytorch", "F.scaled_dot_product_attention, math backend"),
        Provider("liger", "peer", "Liger-Kernel (linkedin/Liger-Kernel)", needs_cuda=True, needs_module="liger_kernel"),
        Provider("replab_fast", "ours", "replab_fast's kernels, swapped in with replab_fast.accelerate"),
    ]
}  # fmt: skip


def provider(name: str) -> Provider:
    try:
        return PROVIDERS[name]
    except KeyError:
        raise KeyError(f"unknown provider {name!r}; known: {', '.join(PROVIDERS)}") from None


def require(name: str, device: torch.device) -> Provider:
    """The provider, or ``pytest.skip`` with the reason it cannot run on ``device``."""
    import pytest

    prov = provider(name)
    reason = prov.unavailable(device)
    if reason:
        pytest.skip(reason)
    return prov


@contextlib.contextmanager
def sdpa_backend(name: str) -> Iterator[None]:
    """Restrict F.scaled_dot_product_attention to one backend for an ``sdpa-*`` provider."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "sdpa-flash": SDPBackend.FLASH_ATTENTION,
        "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
        "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
        "sdpa-math": SDPBackend.MATH,
    }[name]
    with sdpa_kernel(backend):
        yield


def fast_drop_in(reference: nn.Module) -> tuple[Optional[nn.Module], str]:
    """replab_fast's drop-in for a copy of ``reference`` (via ``accelerate``), or None and why.

    The copy is accelerated, not ``reference``: the other providers keep the reference module.
    """
    from replab_fast.swap import accelerate

    model = accelerate(copy.deepcopy(reference))
    report = model.__dict__.get("replab_report")
    if report is not None and report.swapped:
        return model, ""
    if report is None or not report.entries:
        return None, f"replab_fast has no fast drop-in registered for {type(reference).__name__} yet"
    return None, f"replab_fast did not swap {type(reference).__name__}: {report}"
