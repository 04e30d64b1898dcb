"""Token streams as torch datasets: language-model windows, contiguous batches, labelled snippets.

- :class:`TokenWindows`: fixed-length windows of one token stream (non-overlapping by
  default), for next-token prediction; with ``shifted=True`` an item is (input, target) with
  the target one token ahead (the LSTM language model's batches), with ``shifted=False`` it is
  (window, window) and the model's loss shifts (LLaMA's).
- :class:`ContiguousBatches`: Zaremba et al. (2014)'s batching for a recurrent language model:
  the stream is cut into ``batch_size`` rows read left to right ``seq_len`` tokens at a time,
  so batch k+1 continues batch k row by row and the LSTM's state carries over between them.
- :class:`SnippetDataset` / ``balanced_snippets``: fixed-length snippets of several classes'
  streams, each with its class label (the LSTM sequence classifier).

Items are int64 tensors: windows (T,), targets (T,) or a label (); ContiguousBatches' items are
whole batches (B, T).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["ContiguousBatches", "SnippetDataset", "TokenWindows", "balanced_snippets"]


def _check_stream(ids: Tensor) -> Tensor:
    if not isinstance(ids, Tensor) or ids.dim() != 1 or ids.dtype != torch.long:
        raise ValueError(f"a token stream is a 1-d int64 tensor, got {getattr(ids, 'shape', type(ids))}")
    return ids


def _check_length(seq_len: int) -> None:
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")


def _too_short(what: str, have: int, need: int, seq_len: int) -> ValueError:
    return ValueError(
        f"{what} has {have:,} tokens, fewer than the {need:,} that one sequence of seq_len={seq_len} needs: "
        f"use a larger corpus (data=, max_bytes=) or a shorter sequence"
    )


class TokenWindows(Dataset):
    """Windows of ``seq_len`` tokens of the stream ``ids`` (N,), starting every ``stride`` tokens
    (default ``seq_len``: non-overlapping). ``shifted``: items (ids[s:s+T], ids[s+1:s+T+1]);
    otherwise (ids[s:s+T], the same tensor)."""

    def __init__(self, ids: Tensor, seq_len: int, *, shifted: bool, stride: Optional[int] = None, what: str = "the text"):
        self.ids = _check_stream(ids)
        _check_length(seq_len)
        self.seq_len, self.shifted, self.stride = seq_len, shifted, seq_len if stride is None else stride
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        span = seq_len + int(shifted)  # tokens one item reads
        if len(ids) < span:
            raise _too_short(what, len(ids), span, seq_len)
        self._count = (len(ids) - span) // self.stride + 1

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = range(self._count)[index] * self.stride
        window = self.ids[start : start + self.seq_len]  # (T,)
        if self.shifted:
            return window, self.ids[start + 1 : start + self.seq_len + 1]  # (T,), (T,)
        return window, window


class ContiguousBatches(Dataset):
    """The stream ``ids`` as ``batch_size`` rows (B, L), L = N // B (the tail dropped); item k is
    (rows[:, kT:(k+1)T], rows[:, kT+1:(k+1)T+1]), each (B, T), for k < (L - 1) // T.

    Load with ``DataLoader(dataset, batch_size=None, shuffle=False)``: order matters.
    """

    def __init__(self, ids: Tensor, batch_size: int, seq_len: int, *, what: str = "the text"):
        _check_stream(ids)
        _check_length(seq_len)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        row_len = len(ids) // batch_size
        if row_len < seq_len + 1:
            raise ValueError(
                f"{what} has {len(ids):,} tokens: {batch_size} rows of {row_len:,} tokens each, fewer than the "
                f"{seq_len + 1} that one batch of seq_len={seq_len} needs: use a larger corpus, a smaller batch or a "
                f"shorter sequence"
            )
        self.rows = ids[: row_len * batch_size].view(batch_size, row_len)  # (B, L)
        self.seq_len = seq_len
        self._count = (row_len - 1) // seq_len

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        start = range(self._count)[index] * self.seq_len
        end = start + self.seq_len
        return self.rows[:, start:end], self.rows[:, start + 1 : end + 1]  # (B, T), (B, T)


class SnippetDataset(Dataset):
    """``snippets`` (M, T) int64 with ``labels`` (M,) int64; items (snippet (T,), label ())."""

    def __init__(self, snippets: Tensor, labels: Tensor, classes: Sequence[str]):
        if snippets.dim() != 2 or labels.shape != snippets.shape[:1]:
            raise ValueError(f"snippets (M, T) and labels (M,), got {tuple(snippets.shape)} and {tuple(labels.shape)}")
        self.snippets, self.labels, self.classes = snippets, labels, tuple(classes)

    def __len__(self) -> int:
        return len(self.snippets)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.snippets[index], self.labels[index]


def balanced_snippets(streams: Sequence[Tensor], classes: Sequence[str], seq_len: int, *, what: str = "") -> SnippetDataset:
    """Non-overlapping ``seq_len``-token snippets of each class's stream, the same number per
    class (the smallest class's count: the others' tails are dropped), labelled by position in
    ``streams``, class after class."""
    _check_length(seq_len)
    counts = [len(_check_stream(s)) // seq_len for s in streams]
    per_class = min(counts)
    if per_class < 1:
        small = classes[counts.index(per_class)]
        have = len(streams[counts.index(per_class)])
        raise _too_short(f"class {small!r}{what}", have, seq_len, seq_len)
    snippets = torch.cat([s[: per_class * seq_len].view(per_class, seq_len) for s in streams])  # (K * n, T)
    labels = torch.arange(len(streams)).repeat_interleave(per_class)  # (K * n,)
    return SnippetDataset(snippets, labels, classes)
