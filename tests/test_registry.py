import pytest
import torch

import replab_fast
from replab_fast.models.registry import count_parameters

FAMILIES = {"autoencoder", "conv-autoencoder", "lenet5", "alexnet", "lstm", "llama"}


def test_every_family_is_registered_with_one_demo_preset():
    specs = [replab_fast.get_spec(n) for n in replab_fast.list_models()]
    assert {s.family for s in specs} == FAMILIES
    for family in FAMILIES:
        assert sum(s.demo for s in specs if s.family == family) == 1, family


def test_create_model_applies_overrides():
    model = replab_fast.create_model("llama-tiny", n_layers=1)
    assert len(model.layers) == 1


def test_create_model_dtype_and_meta_device():
    model = replab_fast.create_model("lenet5-classic", dtype=torch.float64)
    assert {p.dtype for p in model.parameters()} == {torch.float64}
    meta = replab_fast.create_model("llama-7b", device="meta")
    assert all(p.is_meta for p in meta.parameters())
    assert count_parameters(meta) == 6_738_415_616


def test_unknown_model_names_the_known_ones():
    with pytest.raises(KeyError, match="unknown model 'lenet6'.*lenet5-classic"):
        replab_fast.create_model("lenet6")


def test_unknown_override_names_the_fields():
    with pytest.raises(TypeError, match="no field.*n_layerz"):
        replab_fast.create_model("llama-tiny", n_layerz=3)


def test_list_models_by_family():
    assert set(replab_fast.list_models("lenet5")) == {"lenet5-classic", "lenet5-modern"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where there is no CUDA")
def test_cuda_where_there_is_none_is_a_clear_error():
    with pytest.raises(ValueError, match="device 'cuda' was asked for, but .*(without CUDA|sees no GPU)"):
        replab_fast.create_model("lenet5-classic", device="cuda")


@pytest.mark.parametrize("device,match", [("tpu", "'tpu' is not a device"), (3.5, "must be a string")])
def test_a_device_that_is_not_one(device, match):
    with pytest.raises((ValueError, TypeError), match=match):
        replab_fast.create_model("lenet5-classic", device=device)
