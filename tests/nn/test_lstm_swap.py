"""The LSTM drop-in (replab_fast/nn/lstm.py) in the LSTM language model and classifier.

The swapped model (``replab_fast.accelerate``: the ``LSTM`` of each head becomes ``replab_fast.nn.LSTM``,
every layer one ``replab_fast.ops.lstm``) must compute the reference model's function with the
same weights: outputs and every parameter gradient, a given or zero initial state, batch_first
or not, and dropout between layers in training mode drawing the same masks from the same seed.

Tolerances.
- float64 (the kernels then compute in fp64): outputs and every gradient within 1e-10 x scale
  (scale = max(1, max |reference|)): the two sides differ only in summation order.
- float32: the parity rule (``replab_fast.parity``) against the float64 model: error at most
  twice the float32 reference model's own, plus 1e-5 x scale.
- A 5-step SGD run from one seed, dropout on, float64: losses within 1e-10 relative, step by step.
The CPU runs the kernels through Triton's interpreter: small models (H = 24, T = 10).
"""

import copy

import pytest
import torch

import replab_fast
from replab_fast import nn as fast_nn
from replab_fast import parity
from replab_fast.models import lstm as reference
from support import DEVICES

FLOAT64_REL = 1e-10


def lm(dtype=torch.float64, dropout=0.0, seed=0, num_layers=2):
    torch.manual_seed(seed)
    config = reference.LSTMLanguageModelConfig(vocab_size=32, embed_dim=16, hidden_size=24, num_layers=num_layers,
                                               dropout=dropout, seq_len=10, init_range=0.3)  # fmt: skip
    return reference.LSTMLanguageModel(config, dtype=dtype)


def classifier(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    config = reference.LSTMClassifierConfig(vocab_size=32, embed_dim=16, hidden_size=20, num_layers=2, seq_len=9,
                                            num_classes=3, init_range=0.3)  # fmt: skip
    return reference.LSTMClassifier(config, dtype=dtype)


def tokens(B=3, T=10, seed=1):
    return torch.randint(0, 32, (B, T), generator=torch.Generator().manual_seed(seed))


def close(name, fast, ref, rel=FLOAT64_REL):
    scale = max(1.0, ref.abs().max().item())
    err = (fast.double() - ref.double()).abs().max().item()
    assert err <= rel * scale, f"{name}: error {err:.3g} > {rel:g} x {scale:.3g}"


def output_and_grads(model, inputs, seed=7):
    """The output and every parameter gradient of one forward and backward (a fixed random dy)."""
    model.zero_grad(set_to_none=True)
    out = model(*inputs)
    dy = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(out)
    out.backward(dy)
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    return out.detach(), grads


# --------------------------------------------------------------------------------------------
# What is swapped
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lstm-lm-small", "lstm-lm-medium", "lstm-classifier-small"])
def test_accelerate_swaps_the_lstm_of_every_preset(name):
    model = replab_fast.create_model(name)
    params, keys = [id(p) for p in model.parameters()], list(model.state_dict())
    assert replab_fast.accelerate(model, interpret=True) is model
    assert [(e.path, e.kernels) for e in model.replab_report.swapped] == [("lstm", ("lstm",))]
    assert type(model.lstm) is fast_nn.LSTM and "kernel=replab_fast.ops.lstm" in repr(model.lstm)
    assert [id(p) for p in model.parameters()] == params and list(model.state_dict()) == keys
    assert replab_fast.restore(model) is model and type(model.lstm) is reference.LSTM


def test_on_a_cpu_a_plain_accelerate_keeps_the_reference():
    model = lm()
    replab_fast.accelerate(model)
    assert type(model.lstm) is reference.LSTM
    (entry,) = model.replab_report.skipped
    assert entry.path == "lstm" and "pass interpret=True" in entry.reason


def test_parameters_of_mixed_dtypes_are_refused_with_the_reason():
    model = lm()
    model.lstm.bias_hh_l1.data = model.lstm.bias_hh_l1.data.float()
    replab_fast.accelerate(model, interpret=True)
    assert not model.replab_report.swapped
    assert "lstm: the LSTM kernels take parameters of one dtype, got float32, float64" in str(model.replab_report)


def test_accelerated_state_dict_loads_into_torch_nn_lstm():
    model = replab_fast.accelerate(lm(), interpret=True)
    x = torch.randn(2, 10, 16, dtype=torch.float64)  # (B, T, embed): the head's LSTM is batch_first
    state = model.lstm.state_dict()
    torch_lstm = torch.nn.LSTM(16, 24, 2, batch_first=True, dtype=torch.float64)
    torch_lstm.load_state_dict(state)
    out, (h_n, c_n) = model.lstm(x)
    expected, (h_exp, c_exp) = torch_lstm(x)
    for name, a, b in (("output", out, expected), ("h_n", h_n, h_exp), ("c_n", c_n, c_exp)):
        close(name, a, b)


def test_meta_model_is_not_swapped():
    with torch.device("meta"):
        model = replab_fast.create_model("lstm-lm-medium")
    replab_fast.accelerate(model, interpret=True)
    assert not model.replab_report.swapped and "is on meta" in str(model.replab_report)


# --------------------------------------------------------------------------------------------
# Parity: outputs and every gradient, initial state, layouts, dropout, training
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("make", [lm, classifier], ids=["lm", "classifier"])
def test_swapped_model_matches_reference_in_float64(make, device):
    ref = make().to(device)
    fast = replab_fast.accelerate(copy.deepcopy(ref), interpret=True)
    assert type(fast.lstm) is fast_nn.LSTM
    toks = tokens(T=ref.config.seq_len).to(device)
    ref_out, ref_grads = output_and_grads(ref, (toks,))
    fast_out, fast_grads = output_and_grads(fast, (toks,))
    close("output", fast_out, ref_out)
    assert fast_grads.keys() == ref_grads.keys()
    for name, g in ref_grads.items():
        assert g.abs().max() > 0, f"{name} got no gradient"
        close(f"grad {name}", fast_grads[name], g)


@pytest.mark.parametrize("make", [lm, classifier], ids=["lm", "classifier"])
def test_swapped_model_follows_the_parity_rule_in_float32(make):
    exact = make(torch.float64)
    ref = make(torch.float32)
    fast = replab_fast.accelerate(copy.deepcopy(ref), interpret=True)
    toks = tokens(T=exact.config.seq_len)
    runs = {name: output_and_grads(model, (toks,)) for name, model in (("exact", exact), ("ref", ref), ("fast", fast))}
    results = [parity.check("output", runs["fast"][0], runs["ref"][0], runs["exact"][0])]
    fast_grads, ref_grads = runs["fast"][1], runs["ref"][1]
    results += [parity.check(f"grad {n}", fast_grads[n], ref_grads[n], g) for n, g in runs["exact"][1].items()]
    failed = [str(r) for r in results if not r.passed]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
def test_drop_in_with_a_given_state_and_dropout_between_layers(batch_first):
    """Three layers, a given (h_0, c_0), dropout 0.3 between the layers in training mode: the same
    seed draws the same masks, so output, h_n, c_n and the gradients of the input, of the initial
    state and of every parameter match the reference."""
    torch.manual_seed(2)
    ref = reference.LSTM(5, 12, 3, batch_first=batch_first, dropout=0.3, dtype=torch.float64).train()
    fast = fast_nn.LSTM.from_reference(copy.deepcopy(ref))
    g = torch.Generator().manual_seed(3)
    x = torch.randn((2, 6, 5) if batch_first else (6, 2, 5), generator=g, dtype=torch.float64)
    h0, c0 = torch.randn(2, 3, 2, 12, generator=g, dtype=torch.float64)
    results = {}
    for which, module in (("reference", ref), ("fast", fast)):
        leaves = [t.clone().requires_grad_() for t in (x, h0, c0)]
        torch.manual_seed(4)
        out, (h_n, c_n) = module(leaves[0], (leaves[1], leaves[2]))
        (out.sin().sum() + h_n.square().sum() + c_n.sum()).backward()
        grads = [t.grad for t in leaves] + [p.grad for p in module.parameters()]
        results[which] = [out, h_n, c_n] + grads
    assert out.shape == x.shape[:2] + (12,)
    names = ["output", "h_n", "c_n", "grad x", "grad h_0", "grad c_0"]
    names += [f"grad {n}" for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, results["fast"], results["reference"]):
        close(name, a, b)
    with torch.no_grad():  # the masks mattered: without them the reference computes something else
        assert not torch.allclose(ref.eval()(x, (h0, c0))[0], results["reference"][0])


def test_short_training_run_with_dropout_follows_the_reference():
    """5 SGD steps of the LM with dropout 0.2 (embedding, between the layers, before the head), one
    seed per step: the same masks, the same losses."""
    spec = replab_fast.get_spec("lstm-lm-small")
    losses = {}
    for which in ("reference", "fast"):
        model = lm(dropout=0.2, seed=5).train()
        if which == "fast":
            replab_fast.accelerate(model, interpret=True)
            assert type(model.lstm) is fast_nn.LSTM
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        toks = tokens(B=2, T=11, seed=6)
        curve = []
        for step in range(5):
            torch.manual_seed(100 + step)
            optimizer.zero_grad(set_to_none=True)
            loss = spec.loss(model, (toks[:, :-1],), toks[:, 1:])
            loss.backward()
            optimizer.step()
            curve.append(loss.item())
        losses[which] = curve
    assert losses["fast"][-1] < losses["fast"][0]  # it trains
    for step, (a, b) in enumerate(zip(losses["fast"], losses["reference"])):
        assert abs(a - b) <= FLOAT64_REL * abs(b), f"step {step}: {a} vs {b}"
