"""Tests for replab_fast.models.lstm (Hochreiter & Schmidhuber 1997, forget gate Gers et al. 2000).

Tolerances: in fp32 our LSTM and torch.nn.LSTM compute the same sums in a possibly different
order, so outputs differ by a few ulps of O(1) values; 1e-5 absolute is ~100 ulps of headroom.
fp64 comparisons use 1e-10.
"""

from __future__ import annotations

import math
from typing import Optional

import pytest
import torch
from torch import nn

from replab_fast import count_parameters, create_model, get_spec, list_models
from replab_fast.models.lstm import (
    LSTM,
    LSTMClassifier,
    LSTMClassifierConfig,
    LSTMLanguageModel,
    LSTMLanguageModelConfig,
    lstm_cell,
)

PRESETS = ["lstm-lm-small", "lstm-lm-medium", "lstm-classifier-small"]
IN, H, B, T = 7, 13, 3, 5  # awkward sizes: nothing a power of two


def _pair(num_layers: int, batch_first: bool, dropout: float = 0.0, dtype=torch.float32) -> tuple[LSTM, nn.LSTM]:
    """Our LSTM (default init) and a torch.nn.LSTM loaded with its state_dict."""
    ours = LSTM(IN, H, num_layers, batch_first=batch_first, dropout=dropout, dtype=dtype)
    ref = nn.LSTM(IN, H, num_layers, batch_first=batch_first, dropout=dropout, dtype=dtype)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _inputs(
    num_layers: int, batch_first: bool, with_state: bool, seed: int, dtype=torch.float32
) -> tuple[torch.Tensor, Optional[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    shape = (B, T, IN) if batch_first else (T, B, IN)
    x = torch.randn(shape, generator=g, dtype=dtype)
    state = None
    if with_state:
        state = (
            torch.randn(num_layers, B, H, generator=g, dtype=dtype),
            torch.randn(num_layers, B, H, generator=g, dtype=dtype),
        )
    return x, state


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


# ----------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_matches_torch_lstm_fp32(num_layers: int, batch_first: bool, with_state: bool) -> None:
    torch.manual_seed(num_layers)
    ours, ref = _pair(num_layers, batch_first)
    x, state = _inputs(num_layers, batch_first, with_state, seed=10 * num_layers + batch_first)
    with torch.no_grad():
        out, (h_n, c_n) = ours(x, state)
        out_ref, (h_ref, c_ref) = ref(x, state)
    assert out.shape == out_ref.shape == ((B, T, H) if batch_first else (T, B, H))
    assert h_n.shape == c_n.shape == (num_layers, B, H)
    assert _max_err(out, out_ref) <= 1e-5
    assert _max_err(h_n, h_ref) <= 1e-5
    assert _max_err(c_n, c_ref) <= 1e-5


@pytest.mark.parametrize("num_layers", [1, 3])
def test_torch_state_dict_loads_into_ours(num_layers: int) -> None:
    torch.manual_seed(7)
    ref = nn.LSTM(IN, H, num_layers)
    ours = LSTM(IN, H, num_layers)
    ours.load_state_dict(ref.state_dict())  # strict: same keys, same shapes
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in ref.state_dict().items()
    ]
    x, state = _inputs(num_layers, False, True, seed=3)
    with torch.no_grad():
        out, (h_n, c_n) = ours(x, state)
        out_ref, (h_ref, c_ref) = ref(x, state)
    assert max(_max_err(out, out_ref), _max_err(h_n, h_ref), _max_err(c_n, c_ref)) <= 1e-5


def test_gate_order_is_i_f_g_o() -> None:
    # One step from h = c = 0 with only one gate block's bias set large picks out that gate.
    lstm = LSTM(2, 3, 1)
    with torch.no_grad():
        for p in lstm.parameters():
            p.zero_()
        # i = f = o = sigmoid(0) = 0.5 except where set; g = tanh(bias_g).
        lstm.bias_ih_l0[6:9] = 1.0  # g block: cell input tanh(1)
        lstm.bias_ih_l0[9:12] = 20.0  # o block: output gate ~ 1
        _, (h, c) = lstm(torch.zeros(1, 1, 2))
    torch.testing.assert_close(c, torch.full((1, 1, 3), 0.5 * math.tanh(1.0)))
    torch.testing.assert_close(h, torch.tanh(c) * torch.sigmoid(torch.tensor(20.0)))


@pytest.mark.parametrize(
    "dtype, tol",
    [(torch.float32, 1e-5), (torch.float64, 1e-10)],
)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_gradients_match_torch(num_layers: int, dtype: torch.dtype, tol: float) -> None:
    torch.manual_seed(11)
    ours, ref = _pair(num_layers, batch_first=True, dtype=dtype)
    x, (h0, c0) = _inputs(num_layers, True, True, seed=5, dtype=dtype)
    leaves = [t.clone().requires_grad_() for t in (x, h0, c0)]
    leaves_ref = [t.clone().requires_grad_() for t in (x, h0, c0)]
    out, (h_n, c_n) = ours(leaves[0], (leaves[1], leaves[2]))
    out_ref, (h_ref, c_ref) = ref(leaves_ref[0], (leaves_ref[1], leaves_ref[2]))
    g = torch.Generator().manual_seed(6)
    weights = [torch.randn(t.shape, generator=g, dtype=dtype) for t in (out, h_n, c_n)]
    sum((w * t).sum() for w, t in zip(weights, (out, h_n, c_n))).backward()
    sum((w * t).sum() for w, t in zip(weights, (out_ref, h_ref, c_ref))).backward()
    for a, b in zip(leaves, leaves_ref):
        assert _max_err(a.grad, b.grad) <= tol
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert _max_err(p.grad, ref_params[name].grad) <= tol, name


def test_gradcheck_float64() -> None:
    torch.manual_seed(0)
    lstm = LSTM(3, 2, 2, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)

    def flat(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out, (h_n, c_n) = lstm(x, (h, c))
        return out, h_n, c_n

    assert torch.autograd.gradcheck(flat, (x, h0, c0))
    params = lstm.layer_parameters(1)
    xt = torch.randn(2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda xt, *w: lstm_cell(xt, h0[1].detach(), c0[1].detach(), *w), (xt, *params)
    )


# ----------------------------------------------------------------------------------- dropout


def test_dropout_between_layers_train_only() -> None:
    torch.manual_seed(0)
    ours, ref = _pair(3, batch_first=False, dropout=0.5)
    x, state = _inputs(3, False, True, seed=2)
    with torch.no_grad():
        ours.eval()
        ref.eval()
        eval_out, _ = ours(x, state)
        assert torch.equal(eval_out, ours(x, state)[0])  # eval: deterministic
        assert _max_err(eval_out, ref(x, state)[0]) <= 1e-5  # and no dropout, like torch
        ours.train()
        ref.train()
        torch.manual_seed(123)
        train_a, (h_a, _) = ours(x, state)
        train_b, _ = ours(x, state)
        assert not torch.allclose(train_a, eval_out)
        assert not torch.allclose(train_a, train_b)
        # The first layer runs before any dropout: its final state is unaffected.
        assert _max_err(h_a[0], ours.eval()(x, state)[1][0][0]) <= 1e-6
        # Same RNG, same mask: torch.nn.LSTM (CPU) draws one bernoulli mask per (T, B, H) layer
        # output in the same order, so the training-mode outputs agree exactly.
        ours.train()
        torch.manual_seed(321)
        ours_train, _ = ours(x, state)
        torch.manual_seed(321)
        ref_train, _ = ref(x, state)
        assert _max_err(ours_train, ref_train) <= 1e-5


def test_no_dropout_after_the_last_layer() -> None:
    torch.manual_seed(0)
    ours = LSTM(IN, H, 1, dropout=0.5)
    x, state = _inputs(1, False, True, seed=4)
    with torch.no_grad():
        train_out, _ = ours.train()(x, state)
        eval_out, _ = ours.eval()(x, state)
    assert torch.equal(train_out, eval_out)


# ----------------------------------------------------------------------------------- init


def test_lstm_init_uniform_one_over_sqrt_h() -> None:
    torch.manual_seed(0)
    hidden = 64
    lstm = LSTM(32, hidden, 2)
    bound = 1 / math.sqrt(hidden)
    values = torch.cat([p.detach().flatten() for p in lstm.parameters()])
    assert values.abs().max().item() <= bound
    assert values.abs().max().item() > 0.99 * bound  # fills the range (n = 50k samples)
    assert values.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)  # uniform's std


@pytest.mark.parametrize("preset, bound", [("lstm-lm-small", 1 / 16), ("lstm-lm-medium", 0.05)])
def test_head_init_range(preset: str, bound: float) -> None:
    torch.manual_seed(0)
    # vocab_size shrunk to keep the medium preset cheap; init_range comes from the preset.
    model = create_model(preset, vocab_size=97)
    assert model.config.init_bound == bound
    for name, p in model.named_parameters():
        assert p.abs().max().item() <= bound, name
        assert p.abs().max().item() > 0.9 * bound, name
        assert p.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.25), name


# ----------------------------------------------------------------------------------- heads


def _lstm_params(input_size: int, hidden: int, layers: int) -> int:
    return sum(4 * hidden * ((input_size if k == 0 else hidden) + hidden) + 8 * hidden for k in range(layers))


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("lstm-lm-small", 256 * 256 + _lstm_params(256, 256, 2) + 256 * 256 + 256),
        ("lstm-lm-medium", 10000 * 650 + _lstm_params(650, 650, 2) + 650 * 10000 + 10000),
        ("lstm-classifier-small", 256 * 128 + _lstm_params(128, 128, 2) + 128 * 4 + 4),
    ],
)
def test_parameter_counts(preset: str, expected: int) -> None:
    model = create_model(preset, device="meta")
    assert count_parameters(model) == expected
    assert {"lstm-lm-small": 1_184_000, "lstm-lm-medium": 19_780_400, "lstm-classifier-small": 297_476}[
        preset
    ] == expected
    assert get_spec(preset).paper_param_count is None


def test_registry() -> None:
    assert sorted(list_models("lstm")) == sorted(PRESETS)
    assert [n for n in PRESETS if get_spec(n).demo] == ["lstm-lm-small"]
    for name in PRESETS:
        assert isinstance(create_model(name, device="meta").lstm, LSTM)


@pytest.mark.parametrize("preset", ["lstm-lm-small", "lstm-classifier-small"])
def test_output_shapes_and_loss(preset: str) -> None:
    torch.manual_seed(0)
    spec = get_spec(preset)
    model = create_model(preset, seq_len=9)
    (tokens,), target = spec.make_batch(model, 3, generator=torch.Generator().manual_seed(0))
    assert tokens.shape == (3, 9) and tokens.dtype == torch.int64
    logits = model(tokens)
    if isinstance(model, LSTMLanguageModel):
        assert logits.shape == (3, 9, 256)
        assert target.shape == (3, 9)
        expected = nn.functional.cross_entropy(logits.reshape(-1, 256), target.reshape(-1))
    else:
        assert logits.shape == (3, 4)
        assert target.shape == (3,)
        expected = nn.functional.cross_entropy(logits, target)
    assert torch.isfinite(logits).all()
    loss = spec.loss(model, (tokens,), target)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_medium_preset_output_shape_on_meta() -> None:
    model = create_model("lstm-lm-medium", device="meta").eval()
    logits = model(torch.zeros(2, 4, dtype=torch.long, device="meta"))
    assert logits.shape == (2, 4, 10000)


def test_lm_batch_target_is_next_token() -> None:
    spec = get_spec("lstm-lm-small")
    model = create_model("lstm-lm-small", device="meta")
    (tokens,), target = spec.make_batch(model, 2, generator=torch.Generator().manual_seed(0))
    assert tokens.device.type == "meta"
    model = create_model("lstm-lm-small", seq_len=12)
    (tokens,), target = spec.make_batch(model, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tokens[:, 1:], target[:, :-1])


def test_lm_is_causal_and_state_carries_over() -> None:
    torch.manual_seed(0)
    model = create_model("lstm-lm-small", hidden_size=32, embed_dim=24, num_layers=2).eval()
    tokens = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(1))
    changed = tokens.clone()
    changed[:, 6] = (changed[:, 6] + 1) % 256
    with torch.no_grad():
        full, full_state = model.forward_with_state(tokens)
        other = model(changed)
        # Logits before position 6 do not see the change; position 6 on do.
        assert torch.equal(full[:, :6], other[:, :6])
        assert not torch.allclose(full[:, 6:], other[:, 6:])
        # Running in two chunks, carrying (h, c), equals one run (truncated BPTT in inference).
        first, state = model.forward_with_state(tokens[:, :4])
        second, end_state = model.forward_with_state(tokens[:, 4:], state)
    assert _max_err(torch.cat([first, second], dim=1), full) <= 1e-5
    assert _max_err(end_state[0], full_state[0]) <= 1e-6 and _max_err(end_state[1], full_state[1]) <= 1e-6


def test_classifier_reads_the_last_hidden_state() -> None:
    torch.manual_seed(0)
    model = create_model("lstm-classifier-small", hidden_size=16, embed_dim=8).eval()
    tokens = torch.randint(0, 256, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        top_outputs, _ = model.lstm(model.embedding(tokens))  # (B, T, H)
        expected = model.head(top_outputs[:, -1])
        torch.testing.assert_close(model(tokens), expected, rtol=0, atol=0)


def test_swap_in_torch_lstm_keeps_state_dict_and_outputs() -> None:
    # The swappable piece: replacing model.lstm with any module of the same parameters works.
    torch.manual_seed(0)
    model = create_model("lstm-lm-small", hidden_size=24, embed_dim=16).eval()
    tokens = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(3))
    keys = list(model.state_dict())
    with torch.no_grad():
        before = model(tokens)
        ours = model.lstm
        model.lstm = nn.LSTM(16, 24, 2, batch_first=True)
        model.lstm.load_state_dict(ours.state_dict())
        after = model(tokens)
    assert list(model.state_dict()) == keys
    assert _max_err(before, after) <= 1e-5


# ----------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "shape, batch_first, match",
    [
        ((T, IN), False, r"\(T, B, input_size\), got 2-d"),
        ((1, T, B, IN), False, r"\(T, B, input_size\), got 4-d"),
        ((B, T, IN + 1), True, r"input_size=7 .*\(B, T, input_size\), got \(3, 5, 8\)"),
        ((0, B, IN), False, "length >= 1"),
    ],
)
def test_lstm_bad_input(shape: tuple[int, ...], batch_first: bool, match: str) -> None:
    lstm = LSTM(IN, H, 2, batch_first=batch_first)
    with pytest.raises(ValueError, match=match):
        lstm(torch.randn(shape))


@pytest.mark.parametrize(
    "h_shape, c_shape, match",
    [
        ((1, B, H), (2, B, H), r"h_0 of shape \(num_layers, B, H\) = \(2, 3, 13\), got \(1, 3, 13\)"),
        ((2, B + 1, H), (2, B, H), r"h_0 .* got \(2, 4, 13\)"),
        ((2, B, H), (2, B, H + 1), r"c_0 .* got \(2, 3, 14\)"),
        ((B, H), (2, B, H), r"h_0 .* got \(3, 13\)"),
    ],
)
def test_lstm_bad_state(h_shape, c_shape, match: str) -> None:
    lstm = LSTM(IN, H, 2)
    x = torch.randn(T, B, IN)
    with pytest.raises(ValueError, match=match):
        lstm(x, (torch.randn(h_shape), torch.randn(c_shape)))


def test_lstm_state_must_be_a_pair() -> None:
    lstm = LSTM(IN, H, 2)
    with pytest.raises(ValueError, match=r"hx as a pair \(h_0, c_0\)"):
        lstm(torch.randn(T, B, IN), torch.randn(2, B, H))


@pytest.mark.parametrize(
    "tokens, match",
    [
        (torch.tensor([[1, 2, 256]]), r"token ids must be in \[0, 256\), got values in \[1, 256\]"),
        (torch.tensor([[-1, 2, 3]]), r"token ids must be in \[0, 256\), got values in \[-1, 3\]"),
        (torch.tensor([1, 2, 3]), r"tokens of shape \(B, T\), got 1-d"),
        (torch.zeros(1, 2, 3, dtype=torch.long), r"tokens of shape \(B, T\), got 3-d"),
        (torch.tensor([[1.0, 2.0]]), "integer token ids"),
        (torch.zeros(2, 0, dtype=torch.long), "at least one token"),
    ],
)
@pytest.mark.parametrize("preset", ["lstm-lm-small", "lstm-classifier-small"])
def test_heads_bad_tokens(preset: str, tokens: torch.Tensor, match: str) -> None:
    model = create_model(preset, hidden_size=8, embed_dim=8, num_layers=1)
    with pytest.raises(ValueError, match=match):
        model(tokens)


@pytest.mark.parametrize(
    "cls, overrides, match",
    [
        (LSTMLanguageModelConfig, {"hidden_size": 0}, "hidden_size"),
        (LSTMLanguageModelConfig, {"dropout": 1.0}, "dropout"),
        (LSTMLanguageModelConfig, {"init_range": -0.1}, "init_range"),
        (LSTMClassifierConfig, {"num_classes": 0}, "num_classes"),
    ],
)
def test_bad_config(cls, overrides: dict, match: str) -> None:
    preset = next(iter(cls.PRESETS))
    with pytest.raises(ValueError, match=match):
        cls.from_name(preset, **overrides)


def test_model_classes() -> None:
    assert get_spec("lstm-classifier-small").model_cls is LSTMClassifier
    assert get_spec("lstm-lm-small").model_cls is LSTMLanguageModel


# ---- generation -------------------------------------------------------------------------------


def _lm(seed: int = 0) -> LSTMLanguageModel:
    torch.manual_seed(seed)
    return create_model("lstm-lm-small", num_layers=2, hidden_size=32, embed_dim=16).eval()


def test_greedy_generation_carries_the_state_as_a_full_forward_would() -> None:
    """Each new token is the argmax of a full forward over everything so far: the carried (h, c)
    equals re-reading the whole sequence."""
    model = _lm()
    prompt = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(3))
    out = model.generate(prompt, 6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], prompt)
    with torch.no_grad():
        for t in range(5, 11):
            assert torch.equal(model(out[:, :t])[:, -1].argmax(-1), out[:, t]), t


def test_sampled_generation_is_reproducible_with_every_option() -> None:
    model = _lm(1)
    prompt = torch.randint(0, 256, (3, 4), generator=torch.Generator().manual_seed(4))
    kwargs = dict(temperature=0.9, top_k=40, top_p=0.9)
    a = model.generate(prompt, 12, generator=torch.Generator().manual_seed(7), **kwargs)
    b = model.generate(prompt, 12, generator=torch.Generator().manual_seed(7), **kwargs)
    assert torch.equal(a, b)
    assert not torch.equal(a, model.generate(prompt, 12, generator=torch.Generator().manual_seed(8), **kwargs))
    assert torch.equal(model.generate(prompt, 12, temperature=1.3, top_k=1), model.generate(prompt, 12))


def test_generation_stops_at_eos_and_rejects_bad_options() -> None:
    model = _lm(2)
    prompt = torch.randint(0, 256, (1, 4), generator=torch.Generator().manual_seed(5))
    greedy = model.generate(prompt, 6)
    eos = int(greedy[0, 5])
    first = int((greedy[0, 4:] == eos).nonzero()[0])  # where the greedy run first draws it
    out = model.generate(prompt, 6, eos_id=eos)
    assert torch.equal(out, greedy[:, : 4 + first + 1])  # stopped right after drawing eos
    with pytest.raises(ValueError, match="top_p"):
        model.generate(prompt, 2, temperature=1.0, top_p=2.0)
    with pytest.raises(ValueError, match="token ids must be in"):
        model.generate(torch.tensor([[300]]), 2)
