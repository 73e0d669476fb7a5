import random

import pytest

from hfpipes.batching import pad_sequences, plan_batches, windows


def test_plan_batches_fixed_size_sorts_longest_first_and_keeps_every_index():
    lengths = [random.Random(i).randint(1, 300) for i in range(101)]
    batches = plan_batches(lengths, batch_size=8)
    assert sorted(i for b in batches for i in b) == list(range(101))
    assert all(len(b) <= 8 for b in batches)
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)


def test_plan_batches_budget_bounds_padded_size():
    lengths = [random.Random(i).randint(1, 300) for i in range(200)]
    for batch in plan_batches(lengths, budget=1000, max_batch_size=16):
        longest = max(lengths[i] for i in batch)
        assert len(batch) <= 16
        assert len(batch) == 1 or len(batch) * longest <= 1000


def test_an_item_over_budget_gets_its_own_batch():
    assert plan_batches([5000, 3], budget=100) == [[0], [1]]


def test_plan_batches_needs_a_rule():
    with pytest.raises(ValueError):
        plan_batches([1, 2])


def test_pad_sequences_right_and_left():
    features = [{"ids": [1, 2, 3], "mask": [1, 1, 1]}, {"ids": [4], "mask": [1]}]
    right = pad_sequences(features, {"ids": 0, "mask": 0})
    assert right["ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    left = pad_sequences(features, {"ids": 9, "mask": 0}, padding_side="left", pad_to_multiple_of=4)
    assert left["ids"].tolist() == [[9, 1, 2, 3], [9, 9, 9, 4]]
    assert left["mask"].tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]


def test_windows_are_lazy():
    seen = []

    def items():
        for i in range(10):
            seen.append(i)
            yield i

    stream = windows(items(), 4)
    assert next(stream) == (0, [0, 1, 2, 3])
    assert len(seen) == 4
    assert list(stream) == [(4, [4, 5, 6, 7]), (8, [8, 9])]
