"""BatchStream (replab_fast/train/sampler.py): seeded epochs, ranks, and a position that only
consumed batches move (loader workers draw ahead)."""

import itertools

import pytest

from replab_fast.train.sampler import BatchStream


def take(stream, n):
    return list(itertools.islice(iter(stream), n))


def test_every_epoch_visits_each_example_once_in_a_seeded_order():
    stream = BatchStream(10, 3, seed=4)
    epoch0, epoch1 = take(stream, 6)[:3], take(stream, 6)[3:]
    assert len({i for b in epoch0 for i in b}) == 9  # 3 full batches; the tenth example waits
    assert epoch0 != epoch1 and take(BatchStream(10, 3, seed=4), 3) == epoch0


def test_drawing_ahead_does_not_move_the_saved_position():
    stream = BatchStream(10, 3, seed=0)
    drawn = take(stream, 5)  # a prefetching loader
    assert stream.state_dict()["epoch"] == 0 and stream.state_dict()["batch"] == 0
    for _ in range(4):
        stream.consumed()
    resumed = BatchStream(10, 3, seed=0)
    resumed.load_state_dict(stream.state_dict())
    assert (resumed.epoch, resumed.batch) == (1, 1)  # 3 batches per epoch
    assert take(resumed, 1)[0] == drawn[4]


def test_ranks_share_each_global_batch_and_keyed_batches_carry_the_epoch():
    whole = take(BatchStream(16, 4, seed=1), 2)
    parts = [take(BatchStream(16, 4, seed=1, rank=r, world_size=2), 2) for r in range(2)]
    assert [sorted(a + b) for a, b in zip(*parts)] == [sorted(b) for b in whole]
    keyed = take(BatchStream(8, 4, seed=1, keyed=True), 3)
    assert [e for batch in keyed for _, e in batch] == [0] * 8 + [1] * 4
    assert [[i for i, _ in b] for b in keyed[:2]] == take(BatchStream(8, 4, seed=1), 2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_examples=3, batch_size=4), "larger than the data"),
    (dict(n_examples=8, batch_size=3, world_size=2), "split evenly"),
    (dict(n_examples=8, batch_size=0), ">= 1"),
])
def test_bad_streams_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchStream(seed=0, **kwargs)


def test_a_saved_position_for_other_data_is_refused():
    state = BatchStream(10, 2, seed=0).state_dict()
    with pytest.raises(ValueError, match="n_examples=10"):
        BatchStream(12, 2, seed=0).load_state_dict(state)
