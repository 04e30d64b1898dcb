"""The convolutional reference models with the extension's conv2d swapped in (replab_fast/nn/conv.py):
LeNet-5 (classic and modern), AlexNet (at a small image size, so the CPU run stays short) and the
conv autoencoder match their references in outputs and every parameter gradient, in float64
(tolerance 1e-10 x max(1, |ref|): both sides in fp64, summation order differs, through a whole
network), keep their parameters and state_dict keys, train the same, and restore.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import replab_fast
from replab_fast import _extension
from replab_fast.models import lenet
from replab_fast.nn import conv as nn_conv
from replab_fast.swap import swapped_kernels

RTOL = 1e-10
MODELS = {
    "lenet5-classic": {},
    "lenet5-modern": {},
    "alexnet": dict(image_size=67, num_classes=10),  # 67 is the smallest size every pool fits
    "autoencoder-conv": {},
}
# The fused runs accelerate finds in each (conv position, what it fuses), see nn/conv.py.
EXPECTED_FUSED = {
    "lenet5-classic": {"features.c1": ("scaled_tanh", None), "features.c3": ("scaled_tanh", None),
                       "features.c5": ("scaled_tanh", None)},
    "lenet5-modern": {"features.c1": ("relu", ("max", (2, 2), (2, 2))), "features.c3": ("relu", ("max", (2, 2), (2, 2))),
                      "features.c5": ("relu", None)},
    "alexnet": {**{f"features.conv{i}": ("relu", None) for i in range(1, 5)},
                "features.conv5": ("relu", ("max", (3, 3), (2, 2)))},
    "autoencoder-conv": {"encoder.conv1": ("relu", None), "encoder.conv2": ("relu", None)},
}  # fmt: skip


def build(name, seed=0):
    torch.manual_seed(seed)
    model = replab_fast.create_model(name, dtype=torch.float64, **MODELS[name])
    spec = replab_fast.get_spec(name)
    inputs, target = spec.make_batch(model, 3, generator=torch.Generator().manual_seed(seed))
    return model, spec, inputs, target


def loss_and_grads(spec, model, inputs, target):
    for p in model.parameters():
        p.grad = None
    torch.manual_seed(123)  # AlexNet's dropout draws the same masks on both sides
    output = model(*inputs)
    torch.manual_seed(123)
    loss = spec.loss(model, inputs, target)
    loss.backward()
    return output.detach(), loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def assert_close(name, fast, ref):
    scale = max(1.0, ref.abs().max().item())
    err = (fast - ref).abs().max().item()
    assert err <= RTOL * scale, f"{name}: error {err:.3g} (scale {scale:.3g})"


def compare(name, reference, fast, spec, inputs, target):
    out_r, loss_r, grads_r = loss_and_grads(spec, reference, inputs, target)
    out_f, loss_f, grads_f = loss_and_grads(spec, fast, inputs, target)
    assert_close(f"{name} output", out_f, out_r)
    assert_close(f"{name} loss", loss_f, loss_r)
    assert grads_f.keys() == grads_r.keys()
    for key in grads_r:
        assert grads_r[key].abs().max() > 0 or key.endswith("bias"), f"{key}: zero gradient in the reference"
        assert_close(f"{name} grad {key}", grads_f[key], grads_r[key])


@pytest.mark.parametrize("name", list(MODELS))
def test_swapped_model_matches_reference(name):
    reference, spec, inputs, target = build(name)
    fast = copy.deepcopy(reference)
    params = [id(p) for p in fast.parameters()]
    keys = list(fast.state_dict())
    assert replab_fast.accelerate(fast) is fast
    assert [id(p) for p in fast.parameters()] == params
    assert list(fast.state_dict()) == keys
    fused = {path: (m.activation, m.pool) for path, m in fast.named_modules()
             if isinstance(m, (nn_conv.FusedConv2d, nn_conv.FusedPartialConv2d))}  # fmt: skip
    assert fused == EXPECTED_FUSED[name]
    assert not any(type(m) in (nn.Conv2d, lenet.PartialConv2d) for m in fast.modules()), "a conv was left out"
    assert "conv2d_fused" in swapped_kernels(fast)
    compare(name, reference, fast, spec, inputs, target)


@pytest.mark.parametrize("name", ["lenet5-classic", "alexnet", "autoencoder-conv"])
def test_unfused_drop_ins_match_reference(name):
    reference, spec, inputs, target = build(name, seed=1)
    fast = replab_fast.accelerate(copy.deepcopy(reference), conv2d_fused=False)
    convs = [m for m in fast.modules() if type(m) in (nn_conv.Conv2d, nn_conv.PartialConv2d)]
    assert convs and swapped_kernels(fast) == ["conv2d"]
    assert not any(type(m) in (nn.Conv2d, lenet.PartialConv2d) for m in fast.modules())
    compare(name, reference, fast, spec, inputs, target)


def test_lenet_c3_keeps_table_one():
    """The swapped C3 convolves with the reference's dense kernel: absent connections are exact
    zeros and the stored (60, 5, 5) weight's gradient equals the reference's."""
    reference, spec, inputs, target = build("lenet5-classic", seed=2)
    fast = replab_fast.accelerate(copy.deepcopy(reference))
    c3 = fast.features.c3
    assert isinstance(c3, nn_conv.FusedPartialConv2d) and c3.weight.shape == (60, 5, 5)
    dense = c3.dense_weight()
    absent = ~c3.table.t()  # (out, in)
    assert torch.equal(dense[absent], torch.zeros_like(dense[absent]))
    compare("lenet5-classic", reference, fast, spec, inputs, target)


def test_training_follows_the_reference():
    """Five SGD steps of LeNet-5 modern, reference vs swapped, same losses (fp64)."""
    reference, spec, inputs, target = build("lenet5-modern", seed=3)
    fast = replab_fast.accelerate(copy.deepcopy(reference))
    losses = []
    for model in (reference, fast):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        curve = []
        for _ in range(5):
            opt.zero_grad()
            loss = spec.loss(model, inputs, target)
            loss.backward()
            opt.step()
            curve.append(loss.item())
        losses.append(curve)
    assert losses[0][-1] < losses[0][0]
    for a, b in zip(*losses):
        assert abs(a - b) <= RTOL * max(1.0, abs(a))


@pytest.mark.parametrize("name", ["lenet5-classic", "alexnet"])
def test_restore_round_trip(name):
    model, spec, inputs, target = build(name, seed=4)
    originals = dict(model.named_modules())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    replab_fast.accelerate(model)
    spec.loss(model, inputs, target).backward()
    optimizer.step()  # built before the swap: it trains the shared tensors
    model.eval()
    trained = model(*inputs).detach()
    assert replab_fast.restore(model) is model
    assert dict(model.named_modules()).keys() == originals.keys()
    for path, module in model.named_modules():
        assert module is originals[path], path
    torch.testing.assert_close(model(*inputs), trained, rtol=1e-12, atol=1e-12)


def test_reasons_when_the_kernel_cannot_run(monkeypatch):
    convs = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.ReLU())
    model = replab_fast.accelerate(copy.deepcopy(convs))
    assert not model.replab_report.swapped
    assert "padding_mode 'reflect'" in str(model.replab_report)

    half = replab_fast.accelerate(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).half())
    assert not half.replab_report.swapped
    assert "float32 and float64" in str(half.replab_report)

    monkeypatch.setattr(_extension, "unavailable_reason", lambda: "replab_fast._C could not be loaded: not built")
    missing = replab_fast.accelerate(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    assert not missing.replab_report.swapped
    assert "conv2d_fused: replab_fast._C could not be loaded" in str(missing.replab_report)
    assert "conv2d: replab_fast._C could not be loaded" in str(missing.replab_report)


def test_padding_same_and_fused_pool_variants():
    torch.manual_seed(5)
    seq = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding="same"), nn.Tanh(), nn.AvgPool2d(2),
        nn.Conv2d(4, 5, 3, stride=2), nn.MaxPool2d(2, stride=1),  # conv + pool, no activation
        nn.Conv2d(5, 2, 1), nn.MaxPool2d(2, ceil_mode=True),  # ceil_mode: not fused, plain drop-in
    ).double()  # fmt: skip
    x = torch.randn(2, 3, 20, 20, dtype=torch.float64)
    fast = replab_fast.accelerate(copy.deepcopy(seq))
    assert isinstance(fast, nn_conv.ConvSequential)
    assert (fast[0].activation, fast[0].pool) == ("tanh", ("avg", (2, 2), (2, 2)))
    assert (fast[3].activation, fast[3].pool) == (None, ("max", (2, 2), (1, 1)))
    assert type(fast[5]) is nn_conv.Conv2d and type(fast[6]) is nn.MaxPool2d
    torch.testing.assert_close(fast(x), seq(x), rtol=1e-12, atol=1e-12)
