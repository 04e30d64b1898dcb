"""Token windows, Zaremba-style contiguous batches and labelled snippets."""

import pytest
import torch

from replab_fast.data.sequences import ContiguousBatches, TokenWindows, balanced_snippets

IDS = torch.arange(100)


def test_shifted_windows_predict_the_next_token():
    windows = TokenWindows(IDS, 10, shifted=True)
    assert len(windows) == 9  # (100 - 11) // 10 + 1
    x, y = windows[1]
    assert x.tolist() == list(range(10, 20)) and y.tolist() == list(range(11, 21))
    assert windows[-1][1][-1] < 100


def test_unshifted_windows_are_their_own_target():
    windows = TokenWindows(IDS, 10, shifted=False, stride=5)
    assert len(windows) == 19
    x, y = windows[18]
    assert x.tolist() == list(range(90, 100)) and y is x


def test_a_sequence_longer_than_the_data_is_a_clear_error():
    with pytest.raises(ValueError, match=r"the val split has 100 tokens, fewer than the 101 .* seq_len=100"):
        TokenWindows(IDS, 100, shifted=True, what="the val split")
    assert len(TokenWindows(IDS, 100, shifted=False)) == 1


def test_contiguous_batches_continue_each_row():
    batches = ContiguousBatches(IDS, batch_size=4, seq_len=6)  # rows of 25: 0-24, 25-49, ...
    assert len(batches) == 4  # (25 - 1) // 6
    x0, y0 = batches[0]
    x1, _ = batches[1]
    assert x0.shape == (4, 6) and x0[:, 0].tolist() == [0, 25, 50, 75]
    assert torch.equal(y0, x0 + 1) and torch.equal(x1[:, 0], x0[:, -1] + 1)  # batch 1 goes on where 0 stopped
    with pytest.raises(ValueError, match="4 rows of 25 tokens each, fewer than the 31"):
        ContiguousBatches(IDS, batch_size=4, seq_len=30)


def test_balanced_snippets_have_the_same_count_per_class():
    data = balanced_snippets([torch.arange(40), torch.arange(100, 125)], ("a", "b"), 10)
    assert len(data) == 4 and data.labels.tolist() == [0, 0, 1, 1]  # 2 per class (the smaller class's)
    snippet, label = data[2]
    assert snippet.tolist() == list(range(100, 110)) and int(label) == 1
    with pytest.raises(ValueError, match="class 'b' in val has 5 tokens"):
        balanced_snippets([torch.arange(40), torch.arange(5)], ("a", "b"), 10, what=" in val")


@pytest.mark.parametrize("bad", [torch.arange(10).float(), torch.zeros(2, 5, dtype=torch.long)])
def test_streams_must_be_1d_int64(bad):
    with pytest.raises(ValueError, match="1-d int64"):
        TokenWindows(bad, 2, shifted=True)
