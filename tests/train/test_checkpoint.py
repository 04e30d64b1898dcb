"""Checkpoints (replab_fast/train/checkpoint.py): round trip, atomic replacement, damage, refusal."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

import replab_fast
from replab_fast.train import checkpoint as ckpt


def model_and_state(seed=0):
    torch.manual_seed(seed)
    model = replab_fast.create_model("lenet5-modern")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 32, 32)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "step": 7, "rng": torch.get_rng_state()}
    meta = {"model": "lenet5-modern", "config": {"variant": "modern"}, "step": 7}
    return model, opt, state, meta


def test_round_trip_keeps_weights_optimizer_and_meta(tmp_path):
    model, opt, state, meta = model_and_state()
    folder = ckpt.save(tmp_path / "checkpoint", model, state, meta)
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "model.safetensors", "state.pt"]
    assert sorted(load_file(folder / "model.safetensors")) == sorted(model.state_dict())  # the model's own keys
    fresh, fresh_opt, _, _ = model_and_state(seed=1)
    ckpt.load_weights(folder, fresh)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    loaded = ckpt.load_state(folder)
    fresh_opt.load_state_dict(loaded["optimizer"])
    assert loaded["step"] == 7 and torch.equal(loaded["rng"], state["rng"])
    assert ckpt.load_meta(folder) == meta


def test_saving_again_replaces_atomically_and_leaves_no_temporary(tmp_path):
    model, _, state, meta = model_and_state()
    folder = tmp_path / "checkpoint"
    ckpt.save(folder, model, state, meta)
    ckpt.save(folder, model, {**state, "step": 8}, {**meta, "step": 8})
    assert ckpt.load_state(folder)["step"] == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_write_interrupted_midway_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    model, _, state, meta = model_and_state()
    folder = tmp_path / "checkpoint"
    ckpt.save(folder, model, state, meta)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(folder, model, {**state, "step": 99}, {**meta, "step": 99})
    assert ckpt.load_state(folder)["step"] == 7 and ckpt.load_meta(folder)["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # the temporary folder is gone


def test_a_crash_between_the_renames_is_recovered(tmp_path, monkeypatch):
    model, _, state, meta = model_and_state()
    folder = tmp_path / "checkpoint"
    ckpt.save(folder, model, state, meta)
    real_rename = os.rename
    calls = []

    def rename(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new checkpoint into place: the machine dies here
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(folder, model, {**state, "step": 8}, {**meta, "step": 8})
    monkeypatch.setattr(ckpt.os, "rename", real_rename)
    assert not folder.exists()
    assert ckpt.find(folder) is not None and ckpt.load_state(folder)["step"] == 7  # the old one, set aside


@pytest.mark.parametrize("damage", ["truncate weights", "garbage state", "garbage meta"])
def test_a_damaged_checkpoint_is_a_clear_error(tmp_path, damage):
    model, _, state, meta = model_and_state()
    folder = ckpt.save(tmp_path / "checkpoint", model, state, meta)
    if damage == "truncate weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
        with pytest.raises(ckpt.CheckpointError, match="model.safetensors is damaged or incomplete"):
            ckpt.load_weights(folder, model)
    elif damage == "garbage state":
        (folder / "state.pt").write_bytes(b"not a pickle")
        with pytest.raises(ckpt.CheckpointError, match="state.pt is damaged or incomplete"):
            ckpt.load_state(folder)
    else:
        (folder / "meta.json").write_text("{")
        with pytest.raises(ckpt.CheckpointError, match="meta.json is damaged"):
            ckpt.load_meta(folder)


def test_weights_of_another_model_and_a_missing_checkpoint(tmp_path):
    model, _, state, meta = model_and_state()
    folder = ckpt.save(tmp_path / "checkpoint", model, state, meta)
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model"):
        ckpt.load_weights(folder, replab_fast.create_model("lenet5-classic"))
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint at .*nowhere.*replab-fast train"):
        ckpt.load_meta(tmp_path / "nowhere")


def test_resuming_another_run_names_the_difference():
    meta = {"model": "llama-tiny", "config": {"dim": 64, "n_layers": 2}}
    ckpt.check_same_run(meta, {"model": "llama-tiny", "config": {"dim": 64, "n_layers": 2}})
    with pytest.raises(ckpt.CheckpointError, match="another model \\('llama-tiny' in the checkpoint, 'lenet5-classic' now\\)"):
        ckpt.check_same_run(meta, {"model": "lenet5-classic", "config": {}})
    with pytest.raises(ckpt.CheckpointError, match="n_layers: 2 in the checkpoint, 4 now"):
        ckpt.check_same_run(meta, {"model": "llama-tiny", "config": {"dim": 64, "n_layers": 4}})
    assert json.dumps(meta)  # meta is plain JSON
