"""Loading the compiled extension ``replab_fast._C`` (csrc/), with a clear error when it is
missing or stale; never a silent fallback.

``load()`` imports ``replab_fast._C`` (which registers ``torch.ops.replab_fast.conv2d`` and
``conv2d_backward`` through its TORCH_LIBRARY blocks) and checks that it was built from the
csrc/ sources next to the package (a hash stamped at build time, see
``replab_fast/_sources_hash.py``): after an edit of csrc/ without a rebuild, or a build made
against another torch, it raises ``ImportError`` with the command that builds it. An installed
wheel ships no csrc/, so there the hash cannot be compared and is not.

``unavailable_reason()`` says the same thing without raising, for ``accelerate``'s report.
Nothing is loaded at import of this module.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from types import ModuleType
from typing import Optional

from ._sources_hash import sources_hash

__all__ = ["BUILD_COMMAND", "load", "unavailable_reason", "with_cuda"]

BUILD_COMMAND = "pip install --no-build-isolation -e ."
_CSRC = Path(__file__).resolve().parent.parent / "csrc"


@functools.lru_cache(maxsize=None)
def load() -> ModuleType:
    """The loaded ``replab_fast._C``; ``ImportError`` (saying how to build) if missing or stale."""
    try:
        module = importlib.import_module("replab_fast._C")
    except ImportError as exc:  # not built, or built against another torch (undefined symbols)
        raise ImportError(
            f"replab_fast's C++/CUDA extension (replab_fast._C, the conv2d kernels) could not be loaded: {exc}. "
            f"Build it against the installed torch from the repository root with `{BUILD_COMMAND}`."
        ) from exc
    expected = sources_hash(_CSRC)
    built = getattr(module, "SOURCES_HASH", None)
    if expected is not None and built != expected:
        raise ImportError(
            f"replab_fast._C is stale: it was built from other sources than {_CSRC} holds now "
            f"(source hash {built} in the build, {expected} on disk). Rebuild it with `{BUILD_COMMAND}`."
        )
    return module


def unavailable_reason() -> Optional[str]:
    """Why the extension cannot be used here (not built, stale), or None."""
    try:
        load()
    except ImportError as exc:
        return str(exc)
    return None


def with_cuda() -> bool:
    """Whether the loaded extension was built with its CUDA kernels."""
    return bool(getattr(load(), "WITH_CUDA", 0))
