"""Batch loaders: random windows with resumable state, sequential evaluation windows."""
import json

import numpy as np
import pytest

from minillm.data import ConcatenatedTokens, RandomWindowLoader, read_shard, sequential_windows, write_shard


def test_random_batches_shapes_targets_and_offsets():
    tokens = np.arange(1000, dtype=np.uint16)
    loader = RandomWindowLoader(tokens, batch_size=4, block_size=16, seed=0)
    x, y = loader.next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)                      # tokens are positions: y is x shifted
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])
    rng = np.random.Generator(np.random.PCG64(0))
    np.testing.assert_array_equal(x[:, 0], rng.integers(0, 1000 - 16, size=4))


def test_every_start_including_the_last_is_reachable():
    tokens = np.arange(12)
    loader = RandomWindowLoader(tokens, batch_size=64, block_size=8, seed=1)
    starts = set()
    for _ in range(10):
        x, _ = loader.next_batch()
        starts.update(x[:, 0].tolist())
    assert starts == set(range(0, 12 - 8))                       # 0..3: the window 3..11 is the last


def test_state_dict_resume_gives_identical_batches():
    tokens = np.random.default_rng(0).integers(0, 50000, size=5000)
    loader = RandomWindowLoader(tokens, batch_size=3, block_size=32, seed=42)
    for _ in range(5):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))           # survives a JSON round trip
    expected = [loader.next_batch() for _ in range(4)]
    resumed = RandomWindowLoader(tokens, batch_size=3, block_size=32, seed=0)
    resumed.load_state_dict(state)
    assert resumed.batches_served == 5 and resumed.seed == 42
    for (x, y), (rx, ry) in zip(expected, (resumed.next_batch() for _ in range(4))):
        np.testing.assert_array_equal(x, rx)
        np.testing.assert_array_equal(y, ry)
    assert loader.state_dict() == resumed.state_dict()


def test_load_state_dict_rejects_a_mismatched_loader():
    tokens = np.arange(100)
    state = RandomWindowLoader(tokens, 2, 8).state_dict()
    with pytest.raises(ValueError, match="block_size=8"):
        RandomWindowLoader(tokens, 2, 9).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks keys"):
        RandomWindowLoader(tokens, 2, 8).load_state_dict({"bit_generator": {}})
    bad = dict(state, bit_generator={"bit_generator": "MT19937"})
    with pytest.raises(ValueError, match="PCG64"):
        RandomWindowLoader(tokens, 2, 8).load_state_dict(bad)


def test_concatenated_shards_give_the_same_batches(tmp_path):
    tokens = np.random.default_rng(3).integers(0, 1000, size=700)
    for i, (start, stop) in enumerate([(0, 250), (250, 260), (260, 700)]):
        write_shard(tmp_path / f"{i}.bin", tokens[start:stop], 1000)
    joined = ConcatenatedTokens([read_shard(tmp_path / f"{i}.bin") for i in range(3)])
    a = RandomWindowLoader(tokens, 5, 64, seed=9)
    b = RandomWindowLoader(joined, 5, 64, seed=9)
    for _ in range(5):
        for left, right in zip(a.next_batch(), b.next_batch()):
            np.testing.assert_array_equal(left, right)


@pytest.mark.parametrize("kwargs, words", [
    ({"batch_size": 0}, "batch_size"),
    ({"block_size": -1}, "block_size"),
    ({"seed": -3}, "seed"),
    ({"block_size": 10}, "10 tokens, fewer than one window of block_size \\+ 1 = 11"),
])
def test_random_loader_validation(kwargs, words):
    args = dict(batch_size=2, block_size=4, seed=0)
    args.update(kwargs)
    with pytest.raises(ValueError, match=words):
        RandomWindowLoader(np.arange(10), **args)


def test_random_loader_rejects_non_arrays():
    with pytest.raises(TypeError, match="1-D numpy integer array"):
        RandomWindowLoader(list(range(100)), 2, 4)
    with pytest.raises(ValueError, match="1-D integer"):
        RandomWindowLoader(np.zeros((10, 10), np.int64), 2, 4)


@pytest.mark.parametrize("n, block_size, stride, batch_size", [
    (100, 16, None, 4), (101, 16, None, 3), (17, 16, None, 1), (5, 16, None, 2),
    (100, 16, 8, 5), (257, 32, 1, 64), (1000, 64, 48, 7), (2, 4, 2, 1),
])
def test_sequential_windows_score_every_position_once(n, block_size, stride, batch_size):
    tokens = np.arange(n, dtype=np.uint32)
    counts = np.zeros(n, dtype=np.int64)
    batches = list(sequential_windows(tokens, block_size, batch_size, stride))
    for x, y, mask in batches:
        length = min(block_size, n - 1)
        assert x.shape == y.shape == mask.shape and x.shape[1] == length and 1 <= x.shape[0] <= batch_size
        assert x.dtype == y.dtype == np.int64 and mask.dtype == bool
        np.testing.assert_array_equal(y, x + 1)
        np.add.at(counts, y[mask], 1)                    # y values are the target positions
    assert counts[0] == 0 and (counts[1:] == 1).all()
    first_x, _, first_mask = batches[0]
    assert first_mask[0].all() and first_x[0, 0] == 0   # the first window scores everything


def test_sequential_windows_with_stride_give_more_context():
    tokens = np.arange(40)
    windows = [(x[i], m[i]) for x, _, m in sequential_windows(tokens, 8, 100, stride=4) for i in range(len(x))]
    starts = [int(x[0]) for x, _ in windows]
    assert starts == [0, 4, 8, 12, 16, 20, 24, 28, 31]  # last window aligned to the end
    assert [int(m.sum()) for _, m in windows] == [8, 4, 4, 4, 4, 4, 4, 4, 3]
    assert windows[1][1].tolist() == [False] * 4 + [True] * 4


def test_sequential_windows_validation():
    with pytest.raises(ValueError, match="stride=9 > block_size=8"):
        list(sequential_windows(np.arange(50), 8, 2, stride=9))
    with pytest.raises(ValueError, match="at least 2 tokens"):
        list(sequential_windows(np.arange(1), 8, 2))
    with pytest.raises(ValueError, match="stride"):
        list(sequential_windows(np.arange(50), 8, 2, stride=0))
