"""Loading the compiled extension ``replab_fast._C`` (csrc/), with a clear error when it is
missing, stale or built for another torch; never a silent fallback.

``load()`` imports ``replab_fast._C`` (which registers ``torch.ops.replab_fast.conv2d`` and
``conv2d_backward`` through its TORCH_LIBRARY blocks). Before the import it reads
``_C_build.json``, written next to the library by setup.py, and refuses a build made against
another torch than the one running (a C++ extension is tied to the torch it was compiled
against: loading it under another one fails on missing symbols, or worse). After the import it
checks that the build comes from the csrc/ sources next to the package (a hash stamped at build
time, see ``replab_fast/_sources_hash.py``). Each refusal is an ``ImportError`` with the command
that builds it. An installed wheel ships no csrc/, so there the hash cannot be compared and is not.

``unavailable_reason()`` says the same thing without raising, for ``accelerate``'s report.
Nothing is loaded at import of this module.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch

from ._sources_hash import sources_hash

__all__ = ["BUILD_COMMAND", "BUILD_INFO", "build_info", "load", "unavailable_reason", "with_cuda"]

BUILD_COMMAND = "pip install --no-build-isolation -e ."
BUILD_INFO = "_C_build.json"  # written by setup.py next to the built library
_PACKAGE = Path(__file__).resolve().parent
_CSRC = _PACKAGE.parent / "csrc"


def build_info() -> Optional[dict]:
    """What the built ``replab_fast._C`` was built against (``torch``, ``with_cuda``,
    ``sources_hash``), or None when no build is found."""
    spec = importlib.util.find_spec("replab_fast._C")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).with_name(BUILD_INFO)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a build without its record (made by an older setup.py) or a damaged record


def _check_torch(info: Optional[dict]) -> None:
    """ImportError when the build was made against another torch than this one."""
    if info is None:
        return  # nothing built: the import below says so
    built = info.get("torch")
    if built is None:
        raise ImportError(
            f"replab_fast._C has no build record ({BUILD_INFO} next to it is missing or unreadable), so the "
            f"torch it was built against is unknown. Rebuild it against torch {torch.__version__} with "
            f"`{BUILD_COMMAND}`."
        )
    if built != torch.__version__:
        raise ImportError(
            f"replab_fast._C was built against torch {built}, but this is torch {torch.__version__}; a C++ "
            f"extension only loads under the torch it was compiled against. Rebuild it with `{BUILD_COMMAND}` "
            "(against the installed torch; a plain `pip install -e .` builds against the newest torch in an "
            "isolated environment instead)."
        )


@functools.lru_cache(maxsize=None)
def load() -> ModuleType:
    """The loaded ``replab_fast._C``; ``ImportError`` (saying how to build) if missing, stale or
    built for another torch."""
    _check_torch(build_info())
    try:
        module = importlib.import_module("replab_fast._C")
    except ImportError as exc:  # not built
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
    """Why the extension cannot be used here (not built, stale, another torch), or None."""
    try:
        load()
    except ImportError as exc:
        return str(exc)
    return None


def with_cuda() -> bool:
    """Whether the loaded extension was built with its CUDA kernels."""
    return bool(getattr(load(), "WITH_CUDA", 0))
