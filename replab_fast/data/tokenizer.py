"""Tokenizers for the language models: bytes, characters, and byte-level BPE (HF ``tokenizers``).

One small interface (:class:`Tokenizer`): ``encode(str) -> list[int]``, ``decode(list[int]) -> str``,
``vocab_size``, ``eos_id`` (the end-of-text id, or None), ``save(path)`` and ``load(path)``, each
tokenizer a single JSON file (the trainer saves it beside a checkpoint; ``load_tokenizer`` reads
any of them back).

- :class:`ByteTokenizer`: the 256 byte values of the UTF-8 encoding; no training, no unknowns,
  no end-of-text token. Decoding replaces bytes that do not form UTF-8 with U+FFFD.
- :class:`CharTokenizer`: one id per character seen in the training text (id 0 = unknown, for
  characters it did not see), optionally only the most frequent ``max_size - 1`` of them; no
  end-of-text token. The unknown id decodes to U+FFFD.
- :class:`BPETokenizer`: byte-level BPE (GPT-2's scheme) trained with HF ``tokenizers`` to a
  given vocabulary size (at most: a small corpus may allow fewer merges), with the end-of-text
  token ``<|endoftext|>`` (id 0). Every text encodes; decoding inverts encoding exactly.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections import Counter
from pathlib import Path
from typing import ClassVar, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor

from .text import Piece

__all__ = ["EOS_TOKEN", "BPETokenizer", "ByteTokenizer", "CharTokenizer", "Tokenizer", "load_tokenizer"]

PathLike = Union[str, Path]
EOS_TOKEN = "<|endoftext|>"
REPLACEMENT = "\N{REPLACEMENT CHARACTER}"
_FORMAT_KEY = "replab_fast_tokenizer"  # our own JSON files name their kind under this key


class Tokenizer(ABC):
    """text <-> token ids. ``kind``: "bytes", "chars" or "bpe"."""

    kind: ClassVar[str]

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids: every id is in [0, vocab_size)."""

    @property
    def eos_id(self) -> Optional[int]:
        """The end-of-text id appended after each document, or None (no such token)."""
        return None

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def _to_json(self) -> str: ...

    def save(self, path: PathLike) -> Path:
        """Write the tokenizer as one JSON file; ``load_tokenizer(path)`` reads it back."""
        path = Path(path)
        path.write_text(self._to_json(), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: PathLike) -> "Tokenizer":
        """Read a tokenizer saved by ``save``; on a subclass, it must be of that kind."""
        tokenizer = load_tokenizer(path)
        if not isinstance(tokenizer, cls):
            raise ValueError(f"{path}: a {tokenizer.kind!r} tokenizer, not {cls.kind!r}")
        return tokenizer

    def encode_pieces(self, pieces: Iterable[Piece]) -> Tensor:
        """The ids of ``pieces`` in order, ``eos_id`` after each piece that ends its document
        (when there is an end-of-text token): a (N,) int64 tensor."""
        ids: list[int] = []
        for piece in pieces:
            ids.extend(self.encode(piece.text))
            if piece.ends_document and self.eos_id is not None:
                ids.append(self.eos_id)
        return torch.tensor(ids, dtype=torch.long)

    def describe(self) -> str:
        eos = f", end-of-text id {self.eos_id}" if self.eos_id is not None else ""
        return f"{self.kind} tokenizer, vocabulary {self.vocab_size:,}{eos}"

    def _check_ids(self, ids: Sequence[int]) -> None:
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"{self.kind} tokenizer: ids must be in [0, {self.vocab_size}), got {bad[:5]}")


class ByteTokenizer(Tokenizer):
    kind = "bytes"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Sequence[int]) -> str:
        self._check_ids(ids)
        return bytes(ids).decode("utf-8", errors="replace")

    def _to_json(self) -> str:
        return json.dumps({_FORMAT_KEY: self.kind, "format": 1})


class CharTokenizer(Tokenizer):
    """Characters ``chars`` get ids 1..len(chars) in the given order; id 0 is unknown."""

    kind = "chars"
    UNKNOWN_ID = 0

    def __init__(self, chars: Sequence[str]) -> None:
        if any(len(c) != 1 for c in chars) or len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer needs distinct single characters")
        self.chars = tuple(chars)
        self._ids = {c: i + 1 for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, texts: Iterable[str], max_size: Optional[int] = None) -> "CharTokenizer":
        """The characters of ``texts`` (sorted by code point), or only the ``max_size - 1`` most
        frequent ones (ties: the smaller code point) so the vocabulary is at most ``max_size``."""
        counts: Counter = Counter()
        for text in texts:
            counts.update(text)
        if not counts:
            raise ValueError("CharTokenizer.train: the text is empty")
        if max_size is not None:
            if max_size < 2:
                raise ValueError(f"a character vocabulary needs max_size >= 2 (unknown + one character), got {max_size}")
            kept = sorted(counts, key=lambda c: (-counts[c], c))[: max_size - 1]
        else:
            kept = list(counts)
        return cls(sorted(kept))

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        ids = self._ids
        return [ids.get(c, self.UNKNOWN_ID) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        self._check_ids(ids)
        return "".join(REPLACEMENT if i == self.UNKNOWN_ID else self.chars[i - 1] for i in ids)

    def _to_json(self) -> str:
        return json.dumps({_FORMAT_KEY: self.kind, "format": 1, "chars": list(self.chars)}, ensure_ascii=False)


class BPETokenizer(Tokenizer):
    """Byte-level BPE around a ``tokenizers.Tokenizer`` that has the ``<|endoftext|>`` token."""

    kind = "bpe"
    MIN_VOCAB = 257  # the 256 byte symbols and the end-of-text token

    def __init__(self, hf_tokenizer) -> None:
        eos = hf_tokenizer.token_to_id(EOS_TOKEN)
        if eos is None:
            raise ValueError(f"a BPETokenizer needs the end-of-text token {EOS_TOKEN!r} in its vocabulary")
        self.hf, self._eos_id = hf_tokenizer, eos

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "BPETokenizer":
        """Byte-level BPE with at most ``vocab_size`` ids (>= 257), trained on ``texts``."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < cls.MIN_VOCAB:
            raise ValueError(
                f"byte-level BPE needs vocab_size >= {cls.MIN_VOCAB} (256 bytes + {EOS_TOKEN}), got {vocab_size}; "
                f"for 256 ids use the bytes tokenizer"
            )
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS_TOKEN],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    @property
    def eos_id(self) -> int:
        return self._eos_id

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        self._check_ids(ids)
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def encode_pieces(self, pieces: Iterable[Piece]) -> Tensor:
        pieces = list(pieces)
        ids: list[int] = []
        for piece, encoding in zip(pieces, self.hf.encode_batch([p.text for p in pieces])):
            ids.extend(encoding.ids)
            if piece.ends_document:
                ids.append(self._eos_id)
        return torch.tensor(ids, dtype=torch.long)

    def _to_json(self) -> str:
        return self.hf.to_str()


def load_tokenizer(path: PathLike) -> Tokenizer:
    """The tokenizer saved at ``path`` (bytes, characters or BPE: told from the file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        content = json.loads(text)
    except FileNotFoundError:
        raise FileNotFoundError(f"tokenizer file {path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"tokenizer file {path}: not JSON ({error})") from None
    kind = content.get(_FORMAT_KEY) if isinstance(content, dict) else None
    if kind == ByteTokenizer.kind:
        return ByteTokenizer()
    if kind == CharTokenizer.kind:
        return CharTokenizer(content["chars"])
    if isinstance(content, dict) and isinstance(content.get("model"), dict) and content["model"].get("type") == "BPE":
        from tokenizers import Tokenizer as HFTokenizer

        return BPETokenizer(HFTokenizer.from_str(text))
    raise ValueError(f"tokenizer file {path}: neither a replab_fast tokenizer (bytes, chars) nor a BPE tokenizer")
