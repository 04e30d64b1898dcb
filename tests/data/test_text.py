"""Text corpora: the standard library by default, files and folders by path, the position split."""

import pytest

from replab_fast.data.text import (
    CLASSIFIER_PACKAGES,
    DEFAULT_STDLIB_BYTES,
    class_corpora,
    load_corpus,
    read_corpus,
    split_corpus,
    stdlib_corpus,
)


def _tree(root, files: dict):
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return root


def test_a_folder_is_read_recursively_in_sorted_order_without_hidden_or_binary_files(tmp_path):
    root = _tree(tmp_path / "c", {"b.txt": "bee\n", "a/z.md": "zed\n", "a/b.py": "x = 1\n", ".hidden": "no",
                                   "__pycache__/m.pyc": "no", "data.bin": b"\x00\x01", "latin1.txt": b"caf\xe9"})  # fmt: skip
    corpus = read_corpus(root)
    assert [d.name for d in corpus.documents] == ["a/b.py", "a/z.md", "b.txt"]
    assert corpus.skipped == 2 and not corpus.truncated
    assert "2 non-text file(s) skipped" in corpus.describe()


def test_the_byte_budget_cuts_the_last_file_on_a_character_boundary(tmp_path):
    root = _tree(tmp_path / "c", {"1.txt": "abcd", "2.txt": "\u00e9\u00e9\u00e9", "3.txt": "never read"})
    corpus = read_corpus(root, max_bytes=7)  # 4 bytes + 3 of "\u00e9\u00e9\u00e9" (2 bytes each)
    assert [d.text for d in corpus.documents] == ["abcd", "\u00e9"] and corpus.truncated


def test_a_single_file(tmp_path):
    path = _tree(tmp_path, {"t.txt": "hello"}) / "t.txt"
    assert read_corpus(path).documents[0].text == "hello"
    assert load_corpus(path).source == str(path)


@pytest.mark.parametrize(
    "files, match",
    [({"empty.txt": ""}, "the text is empty"), ({"x.bin": b"\x00\xff"}, "no UTF-8 text files"), ({}, "no UTF-8 text files")],
)
def test_a_folder_without_text_is_an_error(tmp_path, files, match):
    root = _tree(tmp_path / "c", files)
    root.mkdir(exist_ok=True)
    with pytest.raises(ValueError, match=match):
        read_corpus(root)


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        read_corpus(tmp_path / "missing")
    binary = _tree(tmp_path, {"b.bin": b"\x00\x01\x02"}) / "b.bin"
    with pytest.raises(ValueError, match="not UTF-8 text"):
        read_corpus(binary)
    empty = _tree(tmp_path, {"e.txt": ""}) / "e.txt"
    with pytest.raises(ValueError, match="empty"):
        read_corpus(empty)


def test_the_default_corpus_is_the_standard_library_within_its_budget():
    corpus = load_corpus()
    assert corpus.source.startswith("Python ") and "standard library" in corpus.source
    assert sum(len(d.text.encode()) for d in corpus.documents) <= DEFAULT_STDLIB_BYTES and corpus.truncated
    names = [d.name for d in corpus.documents]
    assert names == sorted(names) and all(n.endswith(".py") for n in names)
    assert not any(n.startswith(("site-packages/", "encodings/")) for n in names)
    small = stdlib_corpus(max_bytes=10_000)
    assert small.documents[0] == corpus.documents[0]  # deterministic: the same first file


def test_the_position_split_puts_every_character_in_one_split_in_order(tmp_path):
    root = _tree(tmp_path / "c", {f"{i}.txt": f"document {i}\n" * (i + 1) for i in range(6)})
    corpus = read_corpus(root)
    parts = split_corpus(corpus, (0.6, 0.2, 0.2))
    joined = "".join(p.text for s in ("train", "val", "test") for p in parts[s])
    assert joined == "".join(d.text for d in corpus.documents)
    assert sum(len(p.text) for p in parts["train"]) == round(0.6 * corpus.n_chars)
    ends = sum(p.ends_document for s in parts for p in parts[s])
    assert ends == len(corpus.documents)  # a piece cut by a boundary does not end its document
    one = split_corpus(read_corpus(_tree(tmp_path, {"one.txt": "abcdefghij"}) / "one.txt"), (0.6, 0.2, 0.2))
    assert [(p.text, p.ends_document) for s in ("train", "val", "test") for p in one[s]] == [
        ("abcdef", False), ("gh", False), ("ij", True)]  # fmt: skip


def test_the_classifier_classes_are_stdlib_packages_without_their_tests():
    corpora = class_corpora()
    assert tuple(corpora) == CLASSIFIER_PACKAGES
    for corpus in corpora.values():
        assert not any("/test" in f"/{d.name}" for d in corpus.documents)
        assert corpus.n_chars > 100_000


def test_class_folders(tmp_path):
    root = _tree(tmp_path / "c", {"spam/a.txt": "spam spam", "eggs/b.txt": "eggs", "eggs/tests/c.txt": "kept"})
    corpora = class_corpora(root)
    assert list(corpora) == ["eggs", "spam"] and len(corpora["eggs"].documents) == 2
    with pytest.raises(ValueError, match="one subfolder of text files per class, found 1"):
        class_corpora(_tree(tmp_path / "one", {"only/a.txt": "x"}))
    with pytest.raises(FileNotFoundError):
        class_corpora(tmp_path / "missing")
