"""Real, offline training data for every model family, one module per source.

    from replab_fast import data
    d = data.for_model("lenet5-classic")              # digits, 32x32, LeNet-5's scale
    print(d.describe())
    for images, labels in d.loader("train", batch_size=64):
        ...

- ``catalog``: ``for_model(name, ...)`` -> :class:`ModelData` (train / val / test datasets,
  loaders, the tokenizer), ``default_dataset(name)``, ``DATASETS``;
- ``idx``: the IDX (MNIST) file reader, every field checked;
- ``mnist``: MNIST and Fashion-MNIST: files, search path, checksums, loading a split;
- ``download``: the checked download into the user cache (``python -m replab_fast.data.download``);
- ``digits``: scikit-learn's bundled 8x8 digits;
- ``images``: images in each model's size and scale;
- ``image_folder``: any folder of labelled photographs, AlexNet's preprocessing and crops;
- ``text``: the standard library's source and other text corpora, split by position;
- ``tokenizer``: bytes, characters and byte-level BPE (HF ``tokenizers``);
- ``sequences``: language-model windows, contiguous batches, labelled snippets;
- ``splits``: the seeded and contiguous train / validation / test splits.

It imports ``models`` for the configs' input sizes only. Importing this package reads no data.
"""

from .catalog import DATASETS, ModelData, default_dataset, for_model, task_of
from .idx import IdxFormatError, read_idx
from .mnist import DatasetNotFoundError, find_dataset, search_path
from .text import Corpus, load_corpus
from .tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer, load_tokenizer

__all__ = [
    "DATASETS",
    "BPETokenizer",
    "ByteTokenizer",
    "CharTokenizer",
    "Corpus",
    "DatasetNotFoundError",
    "IdxFormatError",
    "ModelData",
    "Tokenizer",
    "default_dataset",
    "find_dataset",
    "for_model",
    "load_corpus",
    "load_tokenizer",
    "read_idx",
    "search_path",
    "task_of",
]
