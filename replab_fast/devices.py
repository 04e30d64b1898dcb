"""Which device a model runs on: a device the user names, checked before anything is built.

``resolve_device("cuda")`` on a machine whose torch has no CUDA would otherwise end in torch's
bare ``AssertionError: Torch not compiled with CUDA enabled`` at the first allocation; here it
is a ``ValueError`` that names the problem and the fix.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

__all__ = ["DeviceLike", "default_device", "resolve_device"]

DeviceLike = Union[str, torch.device, None]
SUPPORTED_TYPES = ("cpu", "cuda", "meta")  # meta: shapes only, to count parameters without memory


def default_device() -> torch.device:
    """CUDA when a GPU is visible, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cuda_unavailable_reason(device: torch.device) -> Optional[str]:
    if torch.version.cuda is None:
        return (
            f"this torch ({torch.__version__}) is a build without CUDA; install a CUDA build of torch "
            "(for example `pip install torch`, which takes the default CUDA wheels) or use device='cpu'"
        )
    if not torch.cuda.is_available():
        return "torch has CUDA but sees no GPU (torch.cuda.is_available() is False); check the driver and CUDA_VISIBLE_DEVICES, or use device='cpu'"
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        return f"this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1})"
    return None


def resolve_device(device: DeviceLike, *, what: str = "device") -> torch.device:
    """``device`` as a ``torch.device`` that exists here (None: CUDA when available, else CPU).

    Raises ValueError for a device string torch does not know, a device type replab_fast does
    not run on, or CUDA where this torch or this machine has none.
    """
    if device is None:
        return default_device()
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"{what} must be a string such as 'cpu' or 'cuda', a torch.device or None, got {device!r}")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"{what} {device!r} is not a device; use one of {', '.join(SUPPORTED_TYPES)} (or cuda:N)") from None
    if dev.type not in SUPPORTED_TYPES:
        raise ValueError(f"{what} {device!r}: replab_fast runs on {', '.join(SUPPORTED_TYPES)}, not {dev.type}")
    if dev.type == "cuda":
        reason = _cuda_unavailable_reason(dev)
        if reason:
            raise ValueError(f"{what} {device!r} was asked for, but {reason}")
    return dev
