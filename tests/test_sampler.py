import pytest

from rlfoundry.training.sampler import EpochSampler, length_blocks


def test_length_blocks_keep_every_index_once_in_sorted_blocks_short_long_alternating():
    lengths = [7, 3, 9, 1, 5, 8, 2, 6, 4, 10, 0, 11]
    indices = [4, 0, 11, 2, 9, 1, 7, 3, 10, 6, 8, 5]
    out = length_blocks(indices, lengths, 3)
    assert sorted(out) == sorted(indices)
    blocks = [[lengths[i] for i in out[k:k + 3]] for k in range(0, 12, 3)]
    assert blocks == [[0, 1, 2], [9, 10, 11], [3, 4, 5], [6, 7, 8]]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_length_blocks_give_the_same_micro_batches_for_any_number_of_ranks(world_size):
    lengths = list(range(100, 0, -3))[:16]
    order = length_blocks(list(range(16)), lengths, 2)
    single = [order[k:k + 2] for k in range(0, 16, 2)]
    share = 16 // world_size
    per_rank = [order[r * share:(r + 1) * share] for r in range(world_size)]
    split = [part[k:k + 2] for part in per_rank for k in range(0, share, 2)]
    assert split == single
    # each rank's share mixes short and long blocks (balanced work)
    if world_size == 2:
        sums = [sum(lengths[i] for i in part) for part in per_rank]
        assert abs(sums[0] - sums[1]) <= max(lengths)


def test_length_blocks_without_micro_batches_keep_the_order():
    assert length_blocks([3, 1, 2], [5, 1, 9, 0], None) == [3, 1, 2]
    assert length_blocks([3, 1, 2], [5, 1, 9, 0], 3) == [3, 1, 2]


def test_epoch_sampler_visits_every_example_once_per_epoch():
    s = EpochSampler(10, 4, seed=0)
    seen = [i for _ in range(5) for i in s.next_batch()]  # 20 = two epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
