"""Which data each registered model trains on: ``for_model(name)`` gives its three splits.

    data = for_model("lenet5-classic")                  # the default: scikit-learn's digits
    data = for_model("lenet5-classic", dataset="fashion-mnist")   # or data="/path/to/idx/files"
    for images, labels in data.loader("train", batch_size=32):
        loss = spec.loss(model, (images,), labels)

Every item (and so every batch) is ``(input, target)`` shaped as the model's registered
``make_batch`` draws them, so ``spec.loss(model, (x,), y)`` takes a batch as it comes (float32
images, int64 labels and token ids; cast images to the model's dtype). What each kind of model
gets (``task``):

- image classification (LeNet-5, AlexNet), image reconstruction (the autoencoders; target =
  input): ``dataset`` "digits" (default, scikit-learn's, no download), "fashion-mnist" or
  "mnist" (IDX files: ``data=`` names their folder, otherwise the search path of
  ``replab_fast.data.mnist``), each image in the model's size and scale (``images.py``); for
  AlexNet also "image-folder", any folder of labelled photographs given as ``data=``
  (ImageNet's train/ and val/ layout, or one subfolder per class: ``image_folder.py``);
- language modelling (the LSTM LM, LLaMA): ``dataset`` "stdlib" (default: the Python standard
  library's source, ``text.py``) or ``data=`` a text file or folder; windows of the config's
  ``seq_len`` (LSTM) or ``max_seq_len`` (LLaMA) tokens; the LSTM LM's loader gives Zaremba-style
  contiguous batches (``ModelData.contiguous``);
- sequence classification (the LSTM classifier): ``dataset`` "stdlib-packages" (default:
  which of four standard-library packages a snippet of source comes from; there is no natural
  offline benchmark for a 4-class byte-level classifier, and this one is real, offline and
  checkable) or ``data=`` a folder with one subfolder of text files per class.

Splits: IDX files: their test set, and a twelfth of the training images (5,000 of 60,000) carved
out for validation by a seeded permutation; digits: seeded stratified 80/10/10; image folders: as
``image_folder.py`` says; text: 90/5/5 by position
(per class for the classifier). The tokenizer (``tokenizer=``: "bytes", "chars", "bpe", a saved
file, or a Tokenizer; default by the model's ``vocab_size``: 256 -> bytes, more -> BPE of that
size, fewer -> characters) and AlexNet's mean image come from the training split only.
``**overrides`` are model config overrides, as for ``create_model``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset

from ..models.registry import get_spec
from .digits import DIGITS_LEVELS, load_digits_split
from .image_folder import MEAN_SAMPLE, base_side, image_folder_datasets, scan_image_folder
from .images import ImageDataset, ImageFormat, mean_image
from .mnist import MNIST_FORMAT_DATASETS, find_dataset, load_idx_split
from .sequences import ContiguousBatches, TokenWindows, balanced_snippets
from .splits import SPLITS, check_split, holdout_split
from .text import class_corpora, load_corpus, split_corpus
from .tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer, load_tokenizer

__all__ = ["DATASETS", "IDX_VALIDATION_FRACTION", "ModelData", "default_dataset", "for_model", "task_of"]

PathLike = Union[str, Path]
TokenizerChoice = Union[None, str, Path, Tokenizer]
IDX_VALIDATION_FRACTION = 1 / 12  # of the training images: 5,000 of MNIST's and Fashion-MNIST's 60,000
IDX_LEVELS = 255
# The datasets of each task; the first is the default.
DATASETS = {
    "image-classification": ("digits", "fashion-mnist", "mnist", "image-folder"),  # "image-folder": AlexNet, data=
    "image-reconstruction": ("digits", "fashion-mnist", "mnist"),
    "language-model": ("stdlib", "text"),  # "text": the file or folder given as data=
    "sequence-classification": ("stdlib-packages", "folders"),  # "folders": one per class, under data=
}


@dataclass
class ModelData:
    """One model's data: a torch Dataset per split ("train", "val", "test") and how it was made."""

    model: str  # registry name
    task: str  # a key of DATASETS
    dataset: str  # one of DATASETS[task]
    source: str  # where the data came from
    input_format: str  # what one item is
    splits: dict[str, Dataset]
    tokenizer: Optional[Tokenizer] = None  # the language models' and the classifier's
    classes: Optional[tuple[str, ...]] = None  # class names, index = label (classification)
    seq_len: Optional[int] = None  # tokens per window (language models, classifier)
    contiguous: bool = False  # loader() gives Zaremba-style contiguous batches (the LSTM LM)
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> Dataset:
        return self.splits[check_split(name)]

    @property
    def train(self) -> Dataset:
        return self.splits["train"]

    @property
    def val(self) -> Dataset:
        return self.splits["val"]

    @property
    def test(self) -> Dataset:
        return self.splits["test"]

    def loader(
        self, split: str, batch_size: int, *, shuffle: Optional[bool] = None, seed: int = 0, **kwargs: Any
    ) -> DataLoader:
        """A DataLoader over ``split``: shuffled (by ``seed``) for "train" unless ``shuffle=False``.

        With ``contiguous`` (the LSTM LM) it yields contiguous (B, T) batches in order, the
        recurrent state carried from one to the next; ``kwargs`` go to DataLoader.
        """
        dataset = self.split(split)
        if self.contiguous:
            if shuffle:
                raise ValueError("contiguous batches are read in order (the LSTM state carries over); shuffle=True is not possible")
            batches = ContiguousBatches(dataset.ids, batch_size, dataset.seq_len, what=f"the {split} split")
            return DataLoader(batches, batch_size=None, shuffle=False, **kwargs)
        shuffle = split == "train" if shuffle is None else shuffle
        generator = torch.Generator().manual_seed(seed) if shuffle else None
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, **kwargs)

    def describe(self) -> str:
        sizes = ", ".join(f"{name} {len(ds):,}" for name, ds in self.splits.items())
        lines = [f"{self.model}: {self.task} on {self.dataset}", f"  source: {self.source}",
                 f"  items: {self.input_format}", f"  splits: {sizes}"]  # fmt: skip
        if self.tokenizer is not None:
            lines.append(f"  tokenizer: {self.tokenizer.describe()}")
        if self.classes is not None:
            lines.append(f"  classes ({len(self.classes)}): {', '.join(self.classes)}")
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# What each model's config asks for


def _input_spec(config: Any) -> tuple[str, dict[str, Any]]:
    """(task, what the data must match) from a model config."""
    from ..models.alexnet import AlexNetConfig
    from ..models.autoencoder import AutoencoderConfig, ConvAutoencoderConfig
    from ..models.lenet import LeNet5Config
    from ..models.llama import LlamaConfig
    from ..models.lstm import LSTMClassifierConfig, LSTMLanguageModelConfig

    c = config
    if isinstance(c, LeNet5Config):  # 28x28 content padded to 32x32 (Section II-B), -0.1 / 1.175
        return "image-classification", dict(format=ImageFormat(c.image_size, c.in_channels, pad=2, scale="lenet"), num_classes=c.n_classes)
    if isinstance(c, AlexNetConfig):  # the centred raw pixel values (Section 2)
        return "image-classification", dict(format=ImageFormat(c.image_size, c.in_channels, scale="centered255"), num_classes=c.num_classes)
    if isinstance(c, AutoencoderConfig):
        if c.image_side is None:
            raise ValueError(f"input_dim={c.input_dim} is not a square image (s * s), so no image data fits it")
        return "image-reconstruction", dict(format=ImageFormat(c.image_side, 1, flatten=True))
    if isinstance(c, ConvAutoencoderConfig):
        return "image-reconstruction", dict(format=ImageFormat(c.image_size, c.in_channels))
    if isinstance(c, LSTMLanguageModelConfig):
        return "language-model", dict(seq_len=c.seq_len, vocab_size=c.vocab_size, shifted=True, contiguous=True)
    if isinstance(c, LlamaConfig):
        return "language-model", dict(seq_len=c.max_seq_len, vocab_size=c.vocab_size, shifted=False, contiguous=False)
    if isinstance(c, LSTMClassifierConfig):
        return "sequence-classification", dict(seq_len=c.seq_len, vocab_size=c.vocab_size, num_classes=c.num_classes)
    raise ValueError(f"no data is defined for a model configured by {type(c).__name__}; the data module knows "
                     "LeNet5Config, AlexNetConfig, AutoencoderConfig, ConvAutoencoderConfig, LSTMLanguageModelConfig, "
                     "LlamaConfig and LSTMClassifierConfig")  # fmt: skip


def task_of(name: str, **overrides: Any) -> str:
    """The task of registered model ``name`` (a key of DATASETS)."""
    return _input_spec(get_spec(name).build_config(**overrides))[0]


def default_dataset(name: str) -> str:
    """The dataset ``for_model(name)`` uses when none is asked for."""
    return DATASETS[task_of(name)][0]


def _choose_dataset(name: str, task: str, dataset: Optional[str], data: Optional[PathLike]) -> str:
    allowed = DATASETS[task]
    if task.startswith("image"):
        if dataset is None and data is not None:
            raise ValueError(f"data={str(data)!r}: say which dataset the folder holds, dataset='fashion-mnist' or "
                             "'mnist' (MNIST-format IDX files) or 'image-folder' (one subfolder per class)")  # fmt: skip
        dataset = dataset or allowed[0]
        if dataset == "digits" and data is not None:
            raise ValueError("the digits ship inside scikit-learn: data= is not used with dataset='digits'")
        if dataset == "image-folder" and data is None:
            raise ValueError("dataset='image-folder' reads the folder given as data= (ROOT/<class>/* or "
                             "ROOT/train/<class>/* with ROOT/val/<class>/*)")  # fmt: skip
    elif data is not None:
        dataset = dataset or allowed[1]
        if dataset != allowed[1]:
            raise ValueError(f"data= gives {name} the dataset {allowed[1]!r} (the files there), not {dataset!r}")
    else:
        dataset = dataset or allowed[0]
        if dataset != allowed[0]:
            raise ValueError(f"dataset {dataset!r} needs data= (a path) for {name}; without it, use {allowed[0]!r}")
    if dataset not in allowed:
        raise ValueError(f"{name} ({task}) trains on one of {', '.join(allowed)}, not {dataset!r}")
    return dataset


# ----------------------------------------------------------------------------------------
# Images


def _image_splits(dataset: str, data: Optional[PathLike], seed: int) -> tuple[dict[str, tuple], int, str, tuple[str, ...]]:
    """{split: (pixels, labels)}, grey levels, source, class names."""
    if dataset == "digits":
        splits = {s: load_digits_split(s, seed) for s in SPLITS}
        return splits, DIGITS_LEVELS, "sklearn.datasets.load_digits (8x8, 0..16)", tuple(str(d) for d in range(10))
    spec = MNIST_FORMAT_DATASETS[dataset]
    folder = find_dataset(dataset, data)
    train_pixels, train_labels = load_idx_split(dataset, "train", folder)
    kept, held = holdout_split(len(train_pixels), max(1, round(IDX_VALIDATION_FRACTION * len(train_pixels))), seed)
    splits = {"train": (train_pixels[kept], train_labels[kept]), "val": (train_pixels[held], train_labels[held]),
              "test": load_idx_split(dataset, "test", folder)}  # fmt: skip
    return splits, IDX_LEVELS, f"{spec.title} IDX files in {folder}", spec.classes


def _class_count_notes(name: str, dataset: str, classes: tuple[str, ...], num_classes: int) -> list[str]:
    if len(classes) > num_classes:
        raise ValueError(f"{name} has {num_classes} classes, {dataset} has {len(classes)}: "
                         f"pass the config override num_classes={len(classes)} (n_classes for LeNet-5)")  # fmt: skip
    if len(classes) < num_classes:
        return [f"{dataset} uses {len(classes)} of the model's {num_classes} outputs"]
    return []


def _image_folder_data(name: str, task: str, want: dict, data: PathLike, seed: int) -> ModelData:
    fmt: ImageFormat = want["format"]
    if task != "image-classification" or fmt.scale != "centered255":
        raise ValueError(f"dataset='image-folder' is AlexNet's (RGB photographs, its preprocessing); {name} trains "
                         "on digits, fashion-mnist or mnist")  # fmt: skip
    scanned = scan_image_folder(data, seed)
    notes = _class_count_notes(name, "the image folder", scanned.classes, want["num_classes"])
    datasets = image_folder_datasets(scanned, fmt.size, fmt.channels, seed)
    notes += [f"splits: {scanned.layout}",
              f"images rescaled to a {base_side(fmt.size)}-pixel shorter side and centre-cropped, minus the mean image "
              f"of up to {MEAN_SAMPLE:,} training images; training: random {fmt.size}x{fmt.size} crops and "
              "horizontal flips; evaluation: the central crop"]  # fmt: skip
    items = f"{fmt.channels}x{fmt.size}x{fmt.size} float32 (0..255 minus the mean image)"
    return ModelData(name, task, "image-folder", f"image folder {Path(data).resolve()}", items, datasets,
                     classes=scanned.classes, notes=notes)  # fmt: skip


def _image_data(name: str, task: str, want: dict, dataset: str, data: Optional[PathLike], seed: int) -> ModelData:
    if dataset == "image-folder":
        return _image_folder_data(name, task, want, data, seed)
    fmt: ImageFormat = want["format"]
    splits, levels, source, classes = _image_splits(dataset, data, seed)
    notes = _class_count_notes(name, dataset, classes, want["num_classes"]) if task == "image-classification" else []
    mean = mean_image(splits["train"][0], levels, fmt) if fmt.scale == "centered255" else None
    target = "label" if task == "image-classification" else "image"
    datasets = {s: ImageDataset(pixels, levels, fmt, labels=labels, target=target, mean=mean) for s, (pixels, labels) in splits.items()}
    if mean is not None:
        notes.append("images are 255 x (pixel in [0, 1]) minus the training split's mean image")
    return ModelData(name, task, dataset, source, fmt.describe(), datasets,
                     classes=classes if target == "label" else None, notes=notes)  # fmt: skip


# ----------------------------------------------------------------------------------------
# Text


def _tokenizer(choice: TokenizerChoice, vocab_size: int, train_texts: list[str], name: str) -> Tokenizer:
    """The tokenizer asked for (or the default for ``vocab_size``), trained on ``train_texts``."""
    if isinstance(choice, Tokenizer):
        tokenizer = choice
    else:
        kind = choice
        if choice is None:
            kind = "bytes" if vocab_size == 256 else "bpe" if vocab_size > 256 else "chars"
        if kind == "bytes":
            tokenizer = ByteTokenizer()
        elif kind == "chars":
            tokenizer = CharTokenizer.train(train_texts, max_size=vocab_size)
        elif kind == "bpe":
            tokenizer = BPETokenizer.train(train_texts, vocab_size)
        else:
            tokenizer = load_tokenizer(kind)  # a saved tokenizer file
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"the {tokenizer.kind} tokenizer has {tokenizer.vocab_size:,} ids but {name}'s vocab_size is "
                         f"{vocab_size:,}: pass the config override vocab_size={tokenizer.vocab_size}")  # fmt: skip
    return tokenizer


def _vocabulary_notes(tokenizer: Tokenizer, vocab_size: int) -> list[str]:
    if tokenizer.vocab_size == vocab_size:
        return []
    why = " (the training text allows no more BPE merges)" if tokenizer.kind == "bpe" else ""
    return [f"the tokenizer has {tokenizer.vocab_size:,} ids{why}: the model's ids {tokenizer.vocab_size:,} to "
            f"{vocab_size - 1:,} are never used"]  # fmt: skip


def _text_source(corpus_description: str, data: Optional[PathLike]) -> str:
    return corpus_description if data is not None else corpus_description + " (the default corpus)"


def _language_model_data(name, want, dataset, data, tokenizer, max_bytes) -> ModelData:
    corpus = load_corpus(data, max_bytes)
    pieces = split_corpus(corpus)
    tok = _tokenizer(tokenizer, want["vocab_size"], [p.text for p in pieces["train"]], name)
    seq_len, shifted = want["seq_len"], want["shifted"]
    datasets = {s: TokenWindows(tok.encode_pieces(pieces[s]), seq_len, shifted=shifted, what=f"the {s} split of {corpus.source}")
                for s in SPLITS}  # fmt: skip
    target = "the next token at each position" if shifted else "the same window (the loss shifts)"
    return ModelData(name, "language-model", dataset, _text_source(corpus.describe(), data),
                     f"windows of {seq_len} int64 token ids; target: {target}", datasets,
                     tokenizer=tok, seq_len=seq_len, contiguous=want["contiguous"],
                     notes=_vocabulary_notes(tok, want["vocab_size"]))  # fmt: skip


def _sequence_classification_data(name, want, dataset, data, tokenizer, max_bytes) -> ModelData:
    corpora = class_corpora(data, max_bytes)
    classes = tuple(corpora)
    if len(classes) != want["num_classes"]:
        raise ValueError(f"{name} has num_classes={want['num_classes']}; the data has {len(classes)} classes "
                         f"({', '.join(classes)}): pass the config override num_classes={len(classes)}")  # fmt: skip
    pieces = {c: split_corpus(corpus) for c, corpus in corpora.items()}
    tok = _tokenizer(tokenizer, want["vocab_size"], [p.text for c in classes for p in pieces[c]["train"]], name)
    datasets = {s: balanced_snippets([tok.encode_pieces(pieces[c][s]) for c in classes], classes, want["seq_len"],
                                     what=f" in the {s} split") for s in SPLITS}  # fmt: skip
    source = "; ".join(corpus.describe() for corpus in corpora.values())
    return ModelData(name, "sequence-classification", dataset, _text_source(source, data),
                     f"snippets of {want['seq_len']} int64 token ids, label = class index", datasets,
                     tokenizer=tok, classes=classes, seq_len=want["seq_len"],
                     notes=["every class has the same number of snippets in each split (the smallest class's)",
                            *_vocabulary_notes(tok, want["vocab_size"])])  # fmt: skip


# ----------------------------------------------------------------------------------------


def for_model(
    name: str,
    *,
    dataset: Optional[str] = None,
    data: Optional[PathLike] = None,
    tokenizer: TokenizerChoice = None,
    max_bytes: Optional[int] = None,
    seed: int = 0,
    **overrides: Any,
) -> ModelData:
    """The data of registered model ``name``: its train, val and test datasets (see the module docstring).

    ``dataset``: a name of DATASETS[task] (default: the first); ``data``: the folder of IDX
    files, the text file or folder, or the folder of class folders; ``tokenizer``: for the text
    models; ``max_bytes``: the text budget (default: 4 MiB of the standard library, all of a
    given path); ``seed``: the image splits (the digits' stratified split, the IDX validation set;
    text is split by position). ``overrides``: model config fields.
    """
    config = get_spec(name).build_config(**overrides)
    task, want = _input_spec(config)
    dataset = _choose_dataset(name, task, dataset, data)
    if task.startswith("image"):
        if tokenizer is not None or max_bytes is not None:
            raise ValueError(f"{name} trains on images: tokenizer= and max_bytes= are for the text models")
        return _image_data(name, task, want, dataset, data, seed)
    if task == "language-model":
        return _language_model_data(name, want, dataset, data, tokenizer, max_bytes)
    return _sequence_classification_data(name, want, dataset, data, tokenizer, max_bytes)
