"""The hash that ties a built ``replab_fast._C`` to the csrc/ sources it was built from.

Standalone (no import of torch or of the package): ``setup.py`` loads this file by path and
stamps the hash into the extension (``-DREPLAB_SOURCES_HASH``); ``replab_fast._extension``
recomputes it from the csrc/ next to the package and refuses a build of other sources.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

SOURCE_SUFFIXES = (".cpp", ".cu", ".h", ".cuh")
HASH_BITS = 60  # fits a C long long and a Python int, positive


def sources_hash(csrc: Path) -> Optional[int]:
    """A 60-bit hash of every C++/CUDA source and header in ``csrc`` (names and contents), or
    None when the folder holds none (an installed wheel ships no csrc/)."""
    files = sorted(p for p in Path(csrc).iterdir() if p.is_file() and p.suffix in SOURCE_SUFFIXES) if Path(csrc).is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return int(digest.hexdigest(), 16) >> (256 - HASH_BITS)
