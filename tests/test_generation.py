"""The sampling rules (replab_fast/generation.py): greedy, top-k, temperature, top-p, seeds."""

import pytest
import torch

from replab_fast.generation import Sampling, decode, sample


def logits_of(probs):
    return torch.tensor(probs, dtype=torch.float64).log()[None]  # (1, V)


def draws(logits, sampling, n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.cat([sample(logits, sampling, g) for _ in range(n)])


def test_temperature_zero_is_argmax_whatever_top_k_and_top_p():
    logits = torch.randn(5, 11, generator=torch.Generator().manual_seed(1))
    for sampling in (Sampling(), Sampling(0.0, top_k=3), Sampling(0.0, top_p=0.2)):
        assert torch.equal(sample(logits, sampling), logits.argmax(-1))


def test_top_k_keeps_only_the_k_most_likely():
    logits = logits_of([0.05, 0.4, 0.3, 0.2, 0.05])
    seen = set(draws(logits, Sampling(1.0, top_k=2)).tolist())
    assert seen == {1, 2}


def test_top_p_keeps_the_smallest_set_reaching_p():
    logits = logits_of([0.05, 0.4, 0.3, 0.2, 0.05])
    assert set(draws(logits, Sampling(1.0, top_p=0.65)).tolist()) == {1, 2}  # 0.4 + 0.3 >= 0.65
    assert set(draws(logits, Sampling(1.0, top_p=0.7)).tolist()) == {1, 2}  # exactly reached at 0.7
    assert set(draws(logits, Sampling(1.0, top_p=0.71)).tolist()) == {1, 2, 3}
    assert set(draws(logits, Sampling(1.0, top_p=0.1)).tolist()) == {1}  # always the most likely one
    assert set(draws(logits, Sampling(1.0, top_p=1.0)).tolist()) == {0, 1, 2, 3, 4}


def test_the_kept_tokens_keep_their_relative_probabilities():
    logits = logits_of([0.05, 0.4, 0.3, 0.2, 0.05])
    counts = torch.bincount(draws(logits, Sampling(1.0, top_p=0.65), n=20000), minlength=5).double()
    share = counts[1] / (counts[1] + counts[2])
    assert abs(share - 0.4 / 0.7) < 0.02  # 4/7 within sampling noise (sd ~0.0035)


def test_temperature_sharpens_and_flattens():
    logits = logits_of([0.6, 0.3, 0.1])
    cold = torch.bincount(draws(logits, Sampling(0.25)), minlength=3)[0] / 4000
    hot = torch.bincount(draws(logits, Sampling(4.0)), minlength=3)[0] / 4000
    assert cold > 0.9 and hot < 0.45


def test_the_same_seed_draws_the_same_tokens():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(2))
    a, b = draws(logits, Sampling(1.0, top_k=20, top_p=0.9), n=50), draws(logits, Sampling(1.0, top_k=20, top_p=0.9), n=50)
    assert torch.equal(a, b)
    assert not torch.equal(a, draws(logits, Sampling(1.0, top_k=20, top_p=0.9), n=50, seed=1))


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"), (dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.01), "top_p"), (dict(top_p=True), "top_p"),
])
def test_bad_options_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sampling(**kwargs)


def test_decode_calls_the_step_between_tokens_and_stops_at_eos():
    calls = []

    def step(tokens, i):
        calls.append((tokens.tolist(), i))
        return logits_of([0.1, 0.2, 0.7]).expand(2, 3).clone() if i == 0 else logits_of([0.9, 0.05, 0.05]).expand(2, 3).clone()

    first = logits_of([0.1, 0.8, 0.1]).expand(2, 3).clone()
    out = list(decode(first, step, 10, eos_id=0))
    assert [t.tolist() for t in out] == [[1, 1], [2, 2], [0, 0]]
    assert [i for _, i in calls] == [0, 1]  # no step after the last token
    assert list(decode(first, step, 0)) == []
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(decode(first, step, -1))
