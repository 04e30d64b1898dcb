"""Image folders (replab_fast/data/image_folder.py): both layouts, AlexNet's preprocessing, the
seeded crops, and clear errors. The folders are small images the tests write with Pillow."""

import numpy as np
import pytest
import torch
from support import write_image_folder

from replab_fast.data import for_model
from replab_fast.data.image_folder import (ImageFolderDataset, base_side, image_folder_datasets, is_image_folder,
                                           load_base_image, scan_image_folder)  # fmt: skip
from replab_fast.train.tasks import parse_data

CLASSES = ("cat", "dog", "fish")


@pytest.fixture
def one_folder_per_class(tmp_path):
    write_image_folder(tmp_path / "flat", 10)
    return tmp_path / "flat"


@pytest.fixture
def imagenet_layout(tmp_path):
    write_image_folder(tmp_path / "inet" / "train", 12, seed=1)
    write_image_folder(tmp_path / "inet" / "val", 3, seed=2)
    return tmp_path / "inet"


def test_one_folder_per_class_is_split_80_10_10_stratified(one_folder_per_class):
    scanned = scan_image_folder(one_folder_per_class)
    assert scanned.classes == CLASSES
    assert {s: len(f) for s, f in scanned.files.items()} == {"train": 24, "val": 3, "test": 3}
    assert sorted(np.bincount(scanned.labels["test"])) == [1, 1, 1]  # every class in each split
    every = [p for files in scanned.files.values() for p in files]
    assert len(set(every)) == 30  # no image in two splits
    assert scan_image_folder(one_folder_per_class).files == scanned.files  # seeded: the same again


def test_the_imagenet_layout_tests_on_val_and_holds_out_part_of_train(imagenet_layout):
    scanned = scan_image_folder(imagenet_layout)
    assert len(scanned.files["test"]) == 9 and all("val" in p.parts for p in scanned.files["test"])
    assert len(scanned.files["val"]) == 1 and len(scanned.files["train"]) == 35  # 2% of 36, at least one
    assert "val/ as the test split" in scanned.layout


def test_items_are_alexnets_input_centred_by_the_training_mean(one_folder_per_class):
    datasets = image_folder_datasets(scan_image_folder(one_folder_per_class), size=32, channels=3)
    image, label = datasets["train"][(0, 0)]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label.dtype == torch.int64
    base = base_side(32)
    raw = torch.stack([load_base_image(p, base, 3) for p in datasets["train"].files])
    assert torch.allclose(datasets["train"].mean, raw.mean(0), atol=1e-3)  # all 24 < the sample size
    test_image, _ = datasets["test"][0]
    room = (base - 32) // 2
    expected = load_base_image(datasets["test"].files[0], base, 3) - datasets["train"].mean
    assert torch.equal(test_image, expected[:, room : room + 32, room : room + 32])  # the central crop


def test_training_crops_are_drawn_per_index_and_epoch(one_folder_per_class):
    train = image_folder_datasets(scan_image_folder(one_folder_per_class), size=24, channels=3)["train"]
    assert torch.equal(train[(3, 5)][0], train[(3, 5)][0])  # the same key: the same crop
    draws = {tuple(train[(3, epoch)][0].flatten()[:50].tolist()) for epoch in range(8)}
    assert len(draws) > 1  # another epoch: another crop or flip
    assert torch.equal(train[3][0], train[(3, 0)][0])


def test_for_alexnet_from_either_layout(one_folder_per_class, imagenet_layout):
    for root in (one_folder_per_class, imagenet_layout):
        data = for_model("alexnet-10class", dataset="image-folder", data=root, image_size=67)
        assert data.classes == CLASSES and data.train[0][0].shape == (3, 67, 67)
        assert any("3 of the model's 10 outputs" in note for note in data.notes)
    grey = for_model("alexnet-10class", dataset="image-folder", data=one_folder_per_class, image_size=67, in_channels=1)
    assert grey.train[0][0].shape == (1, 67, 67)


def test_the_command_line_finds_an_image_folder_by_its_layout(one_folder_per_class, tmp_path):
    assert is_image_folder(one_folder_per_class)
    assert parse_data("alexnet", str(one_folder_per_class), "image-classification") == ("image-folder", str(one_folder_per_class))
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte").write_bytes(b"")
    assert not is_image_folder(idx)


@pytest.mark.parametrize("problem,message", [
    ("missing", "does not exist"),
    ("one class", "at least two class folders"),
    ("empty class", "holds no image"),
    ("train without val", "no val/"),
    ("val class unknown to train", "class folders that train/ lacks"),
    ("too few to split", "too few for a stratified"),
])
def test_bad_folders_are_clear_errors(tmp_path, problem, message):
    root = tmp_path / "data"
    if problem == "one class":
        write_image_folder(root, 10, classes=("only",))
    elif problem == "empty class":
        write_image_folder(root, 10)
        (root / "empty").mkdir()
    elif problem == "train without val":
        write_image_folder(root / "train", 3)
    elif problem == "too few to split":
        write_image_folder(root, 4)
    elif problem == "val class unknown to train":
        write_image_folder(root / "train", 3)
        write_image_folder(root / "val", 1, classes=("cat", "bird"))
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        scan_image_folder(root)


def test_a_corrupt_image_names_the_file(one_folder_per_class):
    datasets = image_folder_datasets(scan_image_folder(one_folder_per_class), size=24, channels=3)
    bad = datasets["test"].files[0]
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"cannot read image {bad}"):
        datasets["test"][0]


def test_only_alexnet_reads_image_folders_and_the_class_count_must_fit(one_folder_per_class, tmp_path):
    with pytest.raises(ValueError, match="AlexNet's"):
        for_model("lenet5-modern", dataset="image-folder", data=one_folder_per_class)
    with pytest.raises(ValueError, match="reads the folder given as data="):
        for_model("alexnet-10class", dataset="image-folder")
    many = tmp_path / "many"
    write_image_folder(many, 10, classes=tuple(f"c{i:02d}" for i in range(11)))
    with pytest.raises(ValueError, match="num_classes=11"):
        for_model("alexnet-10class", dataset="image-folder", data=many, image_size=67)


def test_a_crop_larger_than_the_mean_image_is_refused():
    with pytest.raises(ValueError, match="smaller than the 40x40 crop"):
        ImageFolderDataset([], np.zeros(0, dtype=np.int64), 40, torch.zeros(3, 30, 30), augment=False)
