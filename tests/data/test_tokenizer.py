"""Tokenizers: bytes, characters, byte-level BPE; one interface, save and load as one JSON file."""

import json

import pytest
import torch

from replab_fast.data.text import Piece, stdlib_corpus
from replab_fast.data.tokenizer import (
    EOS_TOKEN,
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    Tokenizer,
    load_tokenizer,
)

TEXT = "def f(x):\n    return x + 1  # caf\u00e9 \u2603\n"


@pytest.fixture(scope="module")
def corpus_text():
    return [d.text for d in stdlib_corpus(max_bytes=60_000).documents]


@pytest.fixture(scope="module")
def bpe(corpus_text):
    return BPETokenizer.train(corpus_text, vocab_size=400)


def test_bytes_round_trip_and_replace_broken_utf8():
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert ids[:3] == list(b"def") and len(ids) == len(TEXT.encode()) and tok.vocab_size == 256 and tok.eos_id is None
    assert tok.decode(ids) == TEXT
    assert tok.decode([0xC3]) == "\N{REPLACEMENT CHARACTER}"
    with pytest.raises(ValueError, match="ids must be in"):
        tok.decode([256])


def test_chars_have_an_unknown_id():
    tok = CharTokenizer.train(["abcab"])
    assert tok.vocab_size == 4 and tok.encode("abz") == [1, 2, 0]
    assert tok.decode([1, 0, 3]) == "a\N{REPLACEMENT CHARACTER}c"


def test_chars_keep_the_most_frequent_when_capped():
    tok = CharTokenizer.train(["aaabbc", "d"], max_size=3)
    assert tok.chars == ("a", "b") and tok.vocab_size == 3
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.train([""])


def test_bpe_learns_merges_and_inverts_exactly(bpe):
    assert 257 < bpe.vocab_size <= 400 and bpe.eos_id == bpe.hf.token_to_id(EOS_TOKEN)
    ids = bpe.encode(TEXT)
    assert len(ids) < len(TEXT.encode())  # merges
    assert bpe.decode(ids) == TEXT
    assert all(0 <= i < bpe.vocab_size for i in ids)


def test_bpe_training_is_deterministic(corpus_text, bpe):
    assert BPETokenizer.train(corpus_text, vocab_size=400).hf.to_str() == bpe.hf.to_str()


def test_bpe_needs_room_for_the_bytes_and_the_end_of_text():
    with pytest.raises(ValueError, match="vocab_size >= 257"):
        BPETokenizer.train(["abc"], vocab_size=256)


@pytest.mark.parametrize("make", [ByteTokenizer, lambda: CharTokenizer.train([TEXT]), "bpe"])
def test_save_and_load_as_one_json_file(tmp_path, make, bpe):
    tok = bpe if make == "bpe" else make()
    path = tok.save(tmp_path / "tokenizer.json")
    json.loads(path.read_text())  # one JSON document
    back = load_tokenizer(path)
    assert type(back) is type(tok) and back.vocab_size == tok.vocab_size and back.eos_id == tok.eos_id
    assert back.encode(TEXT) == tok.encode(TEXT)
    assert type(tok).load(path).encode("x") == tok.encode("x")


def test_load_checks_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_tokenizer(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_tokenizer(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"model": {"type": "WordPiece"}}')
    with pytest.raises(ValueError, match="neither"):
        load_tokenizer(tmp_path / "other.json")
    ByteTokenizer().save(tmp_path / "bytes.json")
    with pytest.raises(ValueError, match="not 'chars'"):
        CharTokenizer.load(tmp_path / "bytes.json")


def test_encode_pieces_marks_document_ends_with_the_end_of_text(bpe):
    pieces = [Piece("a = 1\n", True), Piece("b = ", False), Piece("2\n", True)]
    ids = bpe.encode_pieces(pieces)
    assert ids.dtype == torch.long and ids.tolist().count(bpe.eos_id) == 2
    assert bpe.decode(ids.tolist()) == f"a = 1\n{EOS_TOKEN}b = 2\n{EOS_TOKEN}"
    assert ByteTokenizer().encode_pieces(pieces).tolist() == list(b"a = 1\nb = 2\n")  # no end-of-text token


def test_every_tokenizer_is_a_tokenizer(bpe):
    for tok in (ByteTokenizer(), CharTokenizer.train(["x"]), bpe):
        assert isinstance(tok, Tokenizer) and tok.kind in tok.describe()
