"""accelerate / restore on the real models, with probe drop-ins standing in for fast kernels.

A probe is a subclass of the reference class that counts its calls and computes the same thing,
so every test can tell whether the swap happened and that nothing else changed.
"""

import contextlib
import copy
from unittest import mock

import pytest
import torch
from torch import nn

import replab_fast
from replab_fast.models.lenet import ScaledTanh
from replab_fast.models.llama import RMSNorm
from replab_fast.models.lstm import LSTM
from replab_fast import swap
from replab_fast.drop_in import adopt_tensors
from replab_fast.swap import register_drop_in

# (registry name, reference class a probe replaces)
CASES = [
    ("llama-tiny", RMSNorm),
    ("lenet5-classic", ScaledTanh),
    ("autoencoder-conv", nn.Conv2d),
    ("lstm-lm-small", LSTM),
]


def make_probe_class(reference_cls):
    def forward(self, *args, **kwargs):
        type(self).calls += 1
        return reference_cls.forward(self, *args, **kwargs)

    return type(f"Probe{reference_cls.__name__}", (reference_cls,), {"forward": forward, "calls": 0})


def build_probe(probe_cls):
    def build(reference: nn.Module) -> nn.Module:
        fast = copy.deepcopy(reference)
        fast.__class__ = probe_cls
        return adopt_tensors(fast, reference)

    return build


@contextlib.contextmanager
def probe_registered(reference_cls, kernel="probe", check=None, build=None):
    """The probe is the only drop-in registered inside the block (the real kernels step aside)."""
    swap.registered_kernels()  # import the real drop-ins first, so none registers inside the block
    probe_cls = make_probe_class(reference_cls)
    with mock.patch.dict(swap._DROP_INS, clear=True):
        register_drop_in(reference_cls, kernel=kernel, build=build or build_probe(probe_cls), check=check)
        yield probe_cls


def model_and_batch(name, seed=0):
    torch.manual_seed(seed)
    model = replab_fast.create_model(name).eval()
    inputs, target = replab_fast.get_spec(name).make_batch(model, 2, generator=torch.Generator().manual_seed(seed))
    return model, inputs, target


def first_output(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name,reference_cls", CASES)
def test_accelerate_swaps_every_instance_and_keeps_the_tensors(name, reference_cls):
    model, inputs, _ = model_and_batch(name)
    expected = first_output(model(*inputs))
    params_before = [id(p) for p in model.parameters()]
    keys_before = list(model.state_dict())
    paths = [p for p, m in model.named_modules() if type(m) is reference_cls]
    assert paths, f"{name} has no {reference_cls.__name__}"

    with probe_registered(reference_cls) as probe_cls:
        assert replab_fast.accelerate(model) is model
        swapped = [p for p, m in model.named_modules() if type(m) is probe_cls]
        assert swapped == paths
        assert [id(p) for p in model.parameters()] == params_before
        assert list(model.state_dict()) == keys_before
        assert [e.path for e in model.replab_report.swapped] == paths
        assert model.replab_report.kernels() == ["probe"]
        torch.testing.assert_close(first_output(model(*inputs)), expected, rtol=0, atol=0)
        assert probe_cls.calls >= len(paths)


@pytest.mark.parametrize("name,reference_cls", CASES)
def test_restore_brings_back_the_reference_with_trained_weights(name, reference_cls):
    model, inputs, target = model_and_batch(name)
    spec = replab_fast.get_spec(name)
    originals = {p: m for p, m in model.named_modules() if type(m) is reference_cls}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    with probe_registered(reference_cls) as probe_cls:
        replab_fast.accelerate(model)
        spec.loss(model, inputs, target).backward()
        optimizer.step()  # the optimizer was built before the swap: same tensors, so it trains them
        trained = first_output(model(*inputs)).detach()
        assert replab_fast.restore(model) is model

    assert not any(type(m) is probe_cls for m in model.modules())
    for path, module in originals.items():
        assert model.get_submodule(path) is module
    assert not hasattr(model, "replab_report")
    torch.testing.assert_close(first_output(model(*inputs)), trained, rtol=0, atol=0)


def test_to_while_accelerated_carries_over_to_restore():
    model, inputs, _ = model_and_batch("llama-tiny")
    with probe_registered(RMSNorm):
        replab_fast.accelerate(model)
        model.to(torch.float64)
        replab_fast.restore(model)
    dtypes = {p.dtype for p in model.parameters()} | {b.dtype for b in model.buffers() if b.is_floating_point()}
    assert dtypes == {torch.float64}
    assert model(*inputs).dtype in (torch.float32, torch.float64)


def test_a_failed_check_keeps_the_reference_and_says_why():
    model, _, _ = model_and_batch("llama-tiny")
    with probe_registered(RMSNorm, check=lambda m: "needs a CUDA device"):
        replab_fast.accelerate(model)
    assert not model.replab_report.swapped
    reasons = {e.reason for e in model.replab_report.skipped}
    assert reasons == {"probe: needs a CUDA device"}
    assert all(type(m) is RMSNorm for m in model.modules() if isinstance(m, RMSNorm))


def test_kernels_can_be_turned_off_by_name():
    model, _, _ = model_and_batch("llama-tiny")
    with probe_registered(RMSNorm, kernel="rms_norm_probe"):
        replab_fast.accelerate(model, rms_norm_probe=False)
        assert not model.replab_report.swapped
        assert "rms_norm_probe disabled by the caller" in str(model.replab_report)


def test_unknown_kernel_name_is_a_clear_error():
    model, _, _ = model_and_batch("llama-tiny")
    with probe_registered(RMSNorm, kernel="rms_norm_probe"):
        with pytest.raises(ValueError, match="unknown kernel.*no_such_kernel.*registered kernels: .*rms_norm_probe"):
            replab_fast.accelerate(model, no_such_kernel=True)


def test_a_drop_in_that_copies_the_parameters_is_refused():
    model, _, _ = model_and_batch("llama-tiny")
    with probe_registered(RMSNorm, build=copy.deepcopy):
        with pytest.raises(RuntimeError, match="does not reuse the reference parameter 'weight'.*adopt_tensors"):
            replab_fast.accelerate(model)


def test_accelerate_twice_then_restore_once():
    model, inputs, _ = model_and_batch("llama-tiny")
    norms = {p: m for p, m in model.named_modules() if type(m) is RMSNorm}
    with probe_registered(RMSNorm):
        replab_fast.accelerate(model)
        swapped, report = list(model.modules()), model.replab_report
        with pytest.warns(UserWarning, match="already accelerated \\(probe\\); nothing changed"):
            replab_fast.accelerate(model)
        assert list(model.modules()) == swapped and model.replab_report is report
        replab_fast.restore(model)
    assert {p: m for p, m in model.named_modules() if type(m) is RMSNorm} == norms


@pytest.mark.parametrize("model", ["llama-tiny", torch.zeros(3), None, nn.Linear], ids=["name", "tensor", "none", "class"])
def test_accelerate_needs_a_module(model):
    with pytest.raises(TypeError, match="accelerate expects an nn.Module"):
        replab_fast.accelerate(model)
    with pytest.raises(TypeError, match="restore expects an nn.Module"):
        replab_fast.restore(model)


def test_a_model_name_gets_a_hint_to_build_it():
    with pytest.raises(TypeError, match=r"replab_fast.create_model\('llama-tiny'\)"):
        replab_fast.accelerate("llama-tiny")


@pytest.mark.parametrize("flags", [dict(rope="no"), dict(rope=0), dict(rope=None), dict(interpret="yes"), dict(interpret=1)])
def test_flags_must_be_booleans(flags):
    model, _, _ = model_and_batch("llama-tiny")
    name = next(iter(flags))
    with pytest.raises(TypeError, match=f"{name} must be True or False"):
        replab_fast.accelerate(model, **flags)
    assert "_replab_swaps" not in model.__dict__


def test_an_interpreted_drop_in_is_swapped_off_cuda_only_with_interpret():
    model, inputs, _ = model_and_batch("llama-tiny")
    swap.registered_kernels()
    probe_cls = make_probe_class(RMSNorm)
    with mock.patch.dict(swap._DROP_INS, clear=True):
        register_drop_in(RMSNorm, kernel="probe", build=build_probe(probe_cls), interpreted_on_cpu=True)
        replab_fast.accelerate(model)
        assert not model.replab_report.swapped
        assert all("pass interpret=True to check parity" in e.reason for e in model.replab_report.skipped)
        replab_fast.accelerate(model, interpret=True)
        assert model.replab_report.kernels() == ["probe"] and not model.replab_report.skipped
        replab_fast.restore(model)


def test_a_reference_module_as_the_model_itself():
    lstm = LSTM(8, 16, num_layers=2)
    with probe_registered(LSTM) as probe_cls:
        fast = replab_fast.accelerate(lstm)
        assert type(fast) is probe_cls and fast.weight_hh_l1 is lstm.weight_hh_l1
        assert replab_fast.restore(fast) is lstm


def test_accelerated_state_dict_loads_into_a_fresh_reference():
    model, inputs, _ = model_and_batch("lenet5-classic", seed=1)
    with probe_registered(ScaledTanh):
        replab_fast.accelerate(model)
        state = model.state_dict()
        expected = model(*inputs)
    fresh, _, _ = model_and_batch("lenet5-classic", seed=2)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(*inputs), expected, rtol=0, atol=0)


def test_report_of_a_model_with_nothing_to_swap():
    model, _, _ = model_and_batch("autoencoder-deep")
    replab_fast.accelerate(model)
    assert "no submodule" in str(model.replab_report)


# --------------------------------------------------------------------------------------------
# Drop-ins carrying several kernels (the LLaMA Attention: "rope" and "attention")
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def multi_probe_registered(reference_cls, kernels=("probe_a", "probe_b"), check=None):
    """A probe drop-in carrying several kernels; its build records the kernels it was given."""
    swap.registered_kernels()
    probe_cls = make_probe_class(reference_cls)
    built_with = []

    def build(reference, used):
        built_with.append(used)
        return build_probe(probe_cls)(reference)

    with mock.patch.dict(swap._DROP_INS, clear=True):
        register_drop_in(reference_cls, kernel=kernels, build=build, check=check)
        yield probe_cls, built_with


def test_a_multi_kernel_drop_in_gets_the_enabled_subset():
    n_norms = 5  # llama-tiny: 2 x (attention_norm, ffn_norm) + the final norm
    for flags, used in [(dict(), ("probe_a", "probe_b")), (dict(probe_a=False), ("probe_b",)),
                        (dict(probe_b=False), ("probe_a",))]:  # fmt: skip
        model, inputs, _ = model_and_batch("llama-tiny")
        with multi_probe_registered(RMSNorm) as (probe_cls, built_with):
            assert swap.registered_kernels() == ["probe_a", "probe_b"]
            replab_fast.accelerate(model, **flags)
            assert built_with == [used] * n_norms
            report = model.replab_report
            assert [e.kernels for e in report.swapped] == [used] * n_norms
            assert report.kernels() == sorted(used) and swap.swapped_kernels(model) == sorted(used)
            assert all(e.kernel == "+".join(used) for e in report.swapped)
            for kernel in flags:
                assert all(e.reason == f"{kernel} disabled by the caller" for e in report.swapped)
                assert f"swapped ({used[0]}); left out: {kernel} disabled by the caller" in str(report)
            replab_fast.restore(model)


def test_a_multi_kernel_drop_in_checks_each_kernel():
    model, _, _ = model_and_batch("llama-tiny")
    checks = {"probe_a": lambda m: None, "probe_b": lambda m: f"dim {m.dim} unsupported"}
    with multi_probe_registered(RMSNorm, check=checks) as (probe_cls, built_with):
        replab_fast.accelerate(model)
        assert set(built_with) == {("probe_a",)}
        assert all(e.reason == "probe_b: dim 64 unsupported" for e in model.replab_report.swapped)
        replab_fast.restore(model)
        replab_fast.accelerate(model, probe_a=False)  # nothing usable left: kept, with both reasons
        assert not model.replab_report.swapped
        assert {e.reason for e in model.replab_report.skipped} == {
            "probe_a disabled by the caller; probe_b: dim 64 unsupported"
        }


def test_a_single_check_applies_to_every_kernel_and_bad_registrations_are_refused():
    model, _, _ = model_and_batch("llama-tiny")
    with multi_probe_registered(RMSNorm, check=lambda m: "needs a CUDA device"):
        replab_fast.accelerate(model)
        assert {e.reason for e in model.replab_report.skipped} == {
            "probe_a: needs a CUDA device; probe_b: needs a CUDA device"
        }
    build = build_probe(make_probe_class(RMSNorm))
    with pytest.raises(ValueError, match="checks for kernels the drop-in does not carry: probe_c"):
        register_drop_in(RMSNorm, kernel=("probe_a",), build=build, check={"probe_c": lambda m: None})
    with pytest.raises(ValueError, match="distinct names"):
        register_drop_in(RMSNorm, kernel=("probe_a", "probe_a"), build=build)


def test_a_drop_in_that_does_not_apply_is_not_reported():
    model, _, _ = model_and_batch("llama-tiny")
    swap.registered_kernels()
    with mock.patch.dict(swap._DROP_INS, clear=True):
        register_drop_in(RMSNorm, kernel="probe", build=build_probe(make_probe_class(RMSNorm)),
                         applies=lambda m: m is model.norm)  # fmt: skip
        replab_fast.accelerate(model)
    assert [e.path for e in model.replab_report.entries] == ["norm"]
    replab_fast.restore(model)
