"""Text corpora: the Python standard library's source by default, or any text file or folder.

Every machine with Python has the standard library's source (``sysconfig.get_paths()["stdlib"]``),
so it is the corpus that needs nothing: its ``.py`` files, read in the sorted order of their
paths (``STDLIB_EXCLUDED`` left out: ``site-packages`` and the generated codec tables of
``encodings/``), up to a byte budget (``DEFAULT_STDLIB_BYTES``, 4 MiB) so that loading and
tokenizing stay fast; the last file is cut at the budget. A file or folder given by path is
read the same way: a folder's files recursively, in sorted order, hidden ones and
``__pycache__`` left out, those that are not UTF-8 text (undecodable, or holding NUL bytes)
skipped and counted. The corpus depends on the running Python's version, which
``Corpus.source`` names.

``split_corpus`` cuts a corpus by character position (90/5/5 by default) into pieces; a piece
records whether it ends its document, so an end-of-text token goes only where a file ends.

``class_corpora`` is the sequence classifier's data: one corpus per class, by default four
packages of the standard library (``CLASSIFIER_PACKAGES``), their tests left out.
"""

from __future__ import annotations

import os
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from .splits import contiguous_split

__all__ = [
    "CLASSIFIER_PACKAGES",
    "DEFAULT_STDLIB_BYTES",
    "TEXT_FRACTIONS",
    "Corpus",
    "Document",
    "Piece",
    "class_corpora",
    "load_corpus",
    "read_corpus",
    "split_corpus",
    "stdlib_corpus",
]

PathLike = Union[str, Path]
DEFAULT_STDLIB_BYTES = 4 * 2**20  # the default corpus's budget: 4 MiB of UTF-8
TEXT_FRACTIONS = (0.9, 0.05, 0.05)  # train, val, test, by position
CLASSIFIER_PACKAGES = ("asyncio", "email", "unittest", "xml")  # in every Python 3.10+; label = index
_TEST_FOLDERS = {"test", "tests", "idle_test"}
# Not in the default corpus: installed third-party packages, and the codec tables of encodings/
# (generated, repetitive: sorted by path they would fill the validation and test splits).
STDLIB_EXCLUDED = ("site-packages", "dist-packages", "encodings")


@dataclass(frozen=True)
class Document:
    name: str  # path relative to the corpus root ("" for a single file)
    text: str


@dataclass(frozen=True)
class Corpus:
    source: str  # what was read, e.g. "Python 3.11.7 standard library (/usr/lib/python3.11)"
    documents: tuple[Document, ...]
    truncated: bool = False  # the byte budget cut it short
    skipped: int = 0  # files left out because they are not UTF-8 text

    @property
    def n_chars(self) -> int:
        return sum(len(d.text) for d in self.documents)

    def describe(self) -> str:
        cut = ", cut at the byte budget" if self.truncated else ""
        skipped = f", {self.skipped} non-text file(s) skipped" if self.skipped else ""
        return f"{self.source}: {len(self.documents)} file(s), {self.n_chars:,} characters{cut}{skipped}"


@dataclass(frozen=True)
class Piece:
    text: str
    ends_document: bool  # False for the part of a document that a split boundary cuts off


def _decode_text(raw: bytes) -> Optional[str]:
    """``raw`` as UTF-8 text, or None when it is not text (undecodable, or holding NUL bytes)."""
    if b"\x00" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _read_files(root: Path, files: Iterable[Path], source: str, max_bytes: Optional[int]) -> Corpus:
    """The text files among ``files`` (sorted by the caller), up to ``max_bytes`` of UTF-8."""
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes}")
    documents, skipped, used, truncated = [], 0, 0, False
    for path in files:
        text = _decode_text(path.read_bytes())
        if text is None:
            skipped += 1
            continue
        size = len(text.encode("utf-8"))
        if max_bytes is not None and used + size > max_bytes:
            text = text.encode("utf-8")[: max_bytes - used].decode("utf-8", errors="ignore")  # whole characters
            truncated = True
        name = path.relative_to(root).as_posix() if path != root else ""
        documents.append(Document(name, text))
        used += size
        if truncated:
            break
    return Corpus(source, tuple(documents), truncated, skipped)


def _folder_files(root: Path, suffix: str = "", exclude: Sequence[str] = ()) -> list[Path]:
    """Regular files under ``root`` whose names end in ``suffix``, sorted by relative path; hidden
    files and folders, ``__pycache__`` and the top-level folders ``exclude`` left out."""
    files = []
    for folder, subfolders, names in os.walk(root):
        top = Path(folder) == root
        subfolders[:] = [d for d in subfolders if not (d.startswith(".") or d == "__pycache__" or (top and d in exclude))]
        files.extend(Path(folder) / n for n in names if n.endswith(suffix) and not n.startswith("."))
    return sorted((f for f in files if f.is_file()), key=lambda p: p.relative_to(root).as_posix())


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_corpus(max_bytes: Optional[int] = DEFAULT_STDLIB_BYTES) -> Corpus:
    """The standard library's ``.py`` files, sorted by path, up to ``max_bytes`` (None: all)."""
    root = stdlib_root()
    files = _folder_files(root, ".py", exclude=STDLIB_EXCLUDED)
    source = f"Python {platform.python_version()} standard library ({root})"
    return _check_not_empty(_read_files(root, files, source, max_bytes), root)


def _check_not_empty(corpus: Corpus, path: Path) -> Corpus:
    if not corpus.documents:
        skipped = f" ({corpus.skipped} file(s) skipped: not UTF-8 text)" if corpus.skipped else ""
        raise ValueError(f"text corpus {path}: no UTF-8 text files in the folder{skipped}")
    if corpus.n_chars == 0:
        raise ValueError(f"text corpus {path}: the text is empty")
    return corpus


def read_corpus(path: PathLike, max_bytes: Optional[int] = None) -> Corpus:
    """A text file, or every text file under a folder (sorted by path), up to ``max_bytes``.

    Raises FileNotFoundError for a missing path, ValueError for a file that is not UTF-8 text,
    a folder with no text file, or an empty text.
    """
    path = Path(path).expanduser()
    if path.is_file():
        if _decode_text(path.read_bytes()) is None:
            raise ValueError(f"text corpus {path}: not UTF-8 text (undecodable, or it holds NUL bytes)")
        return _check_not_empty(_read_files(path, [path], str(path), max_bytes), path)
    if path.is_dir():
        return _check_not_empty(_read_files(path, _folder_files(path), str(path), max_bytes), path)
    raise FileNotFoundError(f"text corpus {path}: no such file or folder")


def load_corpus(data: Optional[PathLike] = None, max_bytes: Optional[int] = None) -> Corpus:
    """``data`` (a file or folder; whole unless ``max_bytes``) or, when None, the standard
    library (``max_bytes`` None: ``DEFAULT_STDLIB_BYTES``)."""
    if data is None:
        return stdlib_corpus(DEFAULT_STDLIB_BYTES if max_bytes is None else max_bytes)
    return read_corpus(data, max_bytes)


def split_corpus(corpus: Corpus, fractions: Sequence[float] = TEXT_FRACTIONS) -> dict[str, list[Piece]]:
    """The corpus cut by character position into train, val and test, each a list of pieces."""
    bounds = contiguous_split(corpus.n_chars, fractions)
    splits: dict[str, list[Piece]] = {name: [] for name in bounds}
    offset = 0
    for document in corpus.documents:
        start, end = offset, offset + len(document.text)
        for name, (lo, hi) in bounds.items():
            a, b = max(start, lo), min(end, hi)
            if a < b:
                splits[name].append(Piece(document.text[a - start : b - start], ends_document=b == end))
        offset = end
    return splits


def class_corpora(data: Optional[PathLike] = None, max_bytes: Optional[int] = None) -> dict[str, Corpus]:
    """One corpus per class, in label order: the subfolders of ``data`` (sorted by name), or by
    default the standard library packages ``CLASSIFIER_PACKAGES`` without their test folders.

    Raises ValueError when ``data`` has fewer than two subfolders or a class has no text.
    """
    if data is None:
        root = stdlib_root()
        folders = [root / name for name in CLASSIFIER_PACKAGES]
        version = f"Python {platform.python_version()} standard library package"
    else:
        root = Path(data).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"classification data {root}: no such folder (one subfolder of text files per class)")
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if len(folders) < 2:
            raise ValueError(f"classification data {root}: needs one subfolder of text files per class, found {len(folders)}")
        version = "class folder"
    corpora = {}
    for folder in folders:
        files = _folder_files(folder, ".py" if data is None else "")
        if data is None:  # the packages' own tests are left out
            files = [f for f in files if not _TEST_FOLDERS & set(f.relative_to(folder).parts[:-1])]
        corpus = _read_files(folder, files, f"{version} {folder.name} ({folder})", max_bytes)
        corpora[folder.name] = _check_not_empty(corpus, folder)
    return corpora
