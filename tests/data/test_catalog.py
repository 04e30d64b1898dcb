"""for_model: every registered model gets real batches shaped as its make_batch, and bad requests
are clear errors, never a silent swap of one dataset for another."""

import numpy as np
import pytest
import torch

import replab_fast
from replab_fast.data import DATASETS, DatasetNotFoundError, ModelData, default_dataset, for_model, task_of
from replab_fast.data.mnist import ALL_FILES, DEBIAN_FASHION_MNIST
from replab_fast.data.tokenizer import BPETokenizer, ByteTokenizer

TEXT_BYTES = 400_000  # enough for one 2048-token LLaMA window in the 5% validation split


def _data(name, **kwargs) -> ModelData:
    if task_of(name) in ("language-model", "sequence-classification") and "data" not in kwargs:
        kwargs.setdefault("max_bytes", TEXT_BYTES)
    return for_model(name, **kwargs)


@pytest.mark.parametrize("name", replab_fast.list_models())
def test_every_model_gets_batches_shaped_like_its_make_batch(name):
    data = _data(name)
    assert data.dataset == default_dataset(name) == DATASETS[data.task][0]
    assert all(len(data.split(s)) > 0 for s in ("train", "val", "test"))
    spec = replab_fast.get_spec(name)
    model = replab_fast.create_model(name, device="meta")
    (x_ref,), y_ref = spec.make_batch(model, 2, generator=torch.Generator().manual_seed(0))
    x, y = next(iter(data.loader("train", batch_size=2)))
    if isinstance(model, replab_fast.models.llama.Llama):  # make_batch draws 64 tokens; training uses the context
        assert data.seq_len == model.config.max_seq_len
        x_ref, y_ref = x_ref.new_empty(2, data.seq_len), y_ref.new_empty(2, data.seq_len)
    assert (x.shape, y.shape) == (x_ref.shape, y_ref.shape)
    assert x.dtype == (torch.long if data.tokenizer else torch.float32) and y.dtype == y_ref.dtype
    if data.tokenizer is not None:
        assert int(x.max()) < model.config.vocab_size and data.tokenizer.vocab_size <= model.config.vocab_size


@pytest.mark.parametrize(
    "name, overrides",
    [("lenet5-classic", {}), ("lenet5-modern", {}), ("autoencoder-deep", {}), ("autoencoder-linear", {}),
     ("autoencoder-conv", {}), ("alexnet-10class", {"image_size": 67}), ("lstm-lm-small", {"seq_len": 16}),
     ("llama-tiny", {}), ("lstm-classifier-small", {})],
)  # fmt: skip
def test_a_real_batch_gives_a_finite_loss_and_gradients(name, overrides):
    torch.manual_seed(0)
    data = _data(name, **overrides)
    spec, model = replab_fast.get_spec(name), replab_fast.create_model(name, **overrides)
    x, y = next(iter(data.loader("train", batch_size=4)))
    loss = spec.loss(model, (x,), y)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_image_items_are_in_each_models_scale():
    lenet = for_model("lenet5-classic").train[0][0]
    assert float(lenet.min()) == pytest.approx(-0.1) and float(lenet.max()) <= 1.175 + 1e-6
    autoencoder = for_model("autoencoder-deep").train[0][0]
    assert autoencoder.shape == (784,) and 0.0 <= float(autoencoder.min()) and float(autoencoder.max()) <= 1.0
    alexnet = for_model("alexnet-10class", image_size=67)
    images = torch.stack([alexnet.train[i][0] for i in range(200)])
    assert abs(float(images.mean())) < 5 and float(images.std()) > 30  # centred raw 0-255 values
    assert "mean image" in alexnet.describe()


def test_no_silent_fallback_when_a_dataset_is_missing(isolated_search_path):
    with pytest.raises(DatasetNotFoundError, match="MNIST not found"):
        for_model("lenet5-classic", dataset="mnist")


def test_an_idx_folder_given_as_data(tmp_path, write_idx_folder):
    folder = write_idx_folder(tmp_path / "idx", n_train=36, n_test=10)
    data = for_model("autoencoder-conv", dataset="mnist", data=folder)
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [33, 3, 10]  # a twelfth held out
    assert str(folder) in data.source
    x, target = data.train[0]
    assert x.shape == (1, 28, 28) and target is x
    other_seed = for_model("autoencoder-conv", dataset="mnist", data=folder, seed=1)
    assert not torch.equal(data.val.pixels, other_seed.val.pixels)


@pytest.mark.parametrize(
    "name, kwargs, match",
    [("lenet5-classic", {"data": "/x"}, "say which dataset the folder holds"),
     ("lenet5-classic", {"dataset": "digits", "data": "/x"}, "data= is not used"),
     ("lenet5-classic", {"dataset": "cifar10"}, "trains on one of digits, fashion-mnist, mnist"),
     ("lenet5-classic", {"tokenizer": "bytes"}, "for the text models"),
     ("llama-tiny", {"dataset": "fashion-mnist"}, "needs data="),
     ("llama-tiny", {"dataset": "stdlib", "data": "/x"}, "not 'stdlib'"),
     ("lenet5-classic", {"n_clases": 3}, "has no field"),
     ("lenet5-classic", {"n_classes": 5, "variant": "modern", "init": "he"}, "num_classes=10")],
)  # fmt: skip
def test_bad_requests_are_clear_errors(name, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        for_model(name, **kwargs)


def test_alexnet_with_more_outputs_than_classes_says_so():
    assert "uses 10 of the model's 1000 outputs" in for_model("alexnet", image_size=67).describe()


def test_image_loaders_shuffle_train_by_seed_only():
    data = for_model("lenet5-modern")
    first = lambda **kw: next(iter(data.loader("train", 8, **kw)))[1].tolist()  # noqa: E731
    assert first(seed=0) == first(seed=0) != first(seed=1)
    assert next(iter(data.loader("test", 8)))[1].tolist() == [int(data.test[i][1]) for i in range(8)]


def test_the_lstm_lm_loader_gives_contiguous_batches():
    data = _data("lstm-lm-small", seq_len=8)
    assert data.contiguous
    batches = iter(data.loader("train", batch_size=3))
    (x0, y0), (x1, _) = next(batches), next(batches)
    assert x0.shape == (3, 8) and torch.equal(x0[:, 1:], y0[:, :-1]) and torch.equal(x1[:, 0], y0[:, -1])
    with pytest.raises(ValueError, match="read in order"):
        data.loader("train", 3, shuffle=True)


def test_the_default_tokenizer_follows_the_vocab_size(tmp_path):
    assert isinstance(_data("llama-tiny").tokenizer, ByteTokenizer)
    medium = _data("lstm-lm-medium")
    assert isinstance(medium.tokenizer, BPETokenizer) and medium.tokenizer.vocab_size <= 10_000
    chars = _data("lstm-lm-small", tokenizer="chars")
    assert chars.tokenizer.kind == "chars" and chars.tokenizer.vocab_size <= 256


def test_a_saved_tokenizer_is_reused_and_must_fit_the_model(tmp_path):
    data = _data("llama-tiny", vocab_size=400, tokenizer="bpe")
    path = data.tokenizer.save(tmp_path / "tokenizer.json")
    again = _data("llama-tiny", vocab_size=400, tokenizer=path)
    assert torch.equal(again.train.ids, data.train.ids) and again.train.ids.tolist().count(data.tokenizer.eos_id) > 1
    with pytest.raises(ValueError, match=f"pass the config override vocab_size={data.tokenizer.vocab_size}"):
        _data("lstm-lm-small", tokenizer=path)


def test_text_given_by_path_and_its_errors(tmp_path):
    (tmp_path / "book.txt").write_text("It was a dark and stormy night. " * 200)
    data = for_model("lstm-lm-small", data=tmp_path / "book.txt", seq_len=32)
    assert data.dataset == "text" and "book.txt" in data.source
    with pytest.raises(ValueError, match="seq_len=500"):
        for_model("lstm-lm-small", data=tmp_path / "book.txt", seq_len=500)  # longer than the val split
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no UTF-8 text files"):
        for_model("llama-tiny", data=tmp_path / "empty")


def test_class_folders_for_the_classifier(tmp_path):
    for name, word in (("ham", "ham "), ("spam", "spam ")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.txt").write_text(word * 400)
    with pytest.raises(ValueError, match="pass the config override num_classes=2"):
        for_model("lstm-classifier-small", data=tmp_path)
    data = for_model("lstm-classifier-small", data=tmp_path, num_classes=2)
    assert data.classes == ("ham", "spam") and data.dataset == "folders"
    labels = np.array([int(data.train[i][1]) for i in range(len(data.train))])
    assert np.bincount(labels).tolist() == [len(labels) // 2] * 2


@pytest.mark.skipif(
    not all((DEBIAN_FASHION_MNIST / f"{n}.gz").is_file() for n in ALL_FILES),
    reason=f"Fashion-MNIST is not installed in {DEBIAN_FASHION_MNIST} (`make data`, or apt-get install dataset-fashion-mnist)",
)
def test_lenet_on_the_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv("REPLAB_DATA", raising=False)
    data = for_model("lenet5-classic", dataset="fashion-mnist")
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [55_000, 5_000, 10_000]
    assert data.classes[0] == "T-shirt/top" and str(DEBIAN_FASHION_MNIST) in data.source
    x, y = data.test[0]
    assert x.shape == (1, 32, 32) and float(x.max()) == pytest.approx(1.175) and int(y) == 9  # an ankle boot


def test_importing_the_data_package_reads_nothing_and_imports_no_heavy_library():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, replab_fast.data; "
            "print(sorted(m for m in ('sklearn', 'tokenizers', 'replab_fast.models.llama') if m in sys.modules))")  # fmt: skip
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
