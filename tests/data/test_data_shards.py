"""Token shard format: layout, dtype choice, corruption, memmaps, concatenation."""
import os
import struct

import numpy as np
import pytest

from minillm.data import ConcatenatedTokens, read_shard, read_shard_header, token_dtype, write_shard


@pytest.mark.parametrize("vocab_size, dtype", [(1, np.uint16), (256, np.uint16), (65536, np.uint16),
                                                (65537, np.uint32), (2 ** 32, np.uint32)])
def test_dtype_choice(vocab_size, dtype):
    assert token_dtype(vocab_size) == np.dtype(dtype)


def test_vocab_too_large_or_invalid():
    with pytest.raises(ValueError, match="exceeds 2\\^32"):
        token_dtype(2 ** 32 + 1)
    with pytest.raises(ValueError, match=">= 1"):
        token_dtype(0)
    with pytest.raises(TypeError, match="int"):
        token_dtype(256.0)


@pytest.mark.parametrize("vocab_size", [300, 70000])
def test_round_trip_is_a_read_only_memmap(tmp_path, vocab_size):
    ids = np.random.default_rng(0).integers(0, vocab_size, size=1001)
    path = tmp_path / "s.bin"
    assert write_shard(path, ids, vocab_size) == 1001
    tokens = read_shard(path, check_ids=True)
    assert isinstance(tokens, np.memmap) and tokens.dtype == token_dtype(vocab_size)
    np.testing.assert_array_equal(tokens, ids)
    with pytest.raises(ValueError):
        tokens[0] = 1
    header = read_shard_header(path)
    assert (header.num_tokens, header.vocab_size, header.version) == (1001, vocab_size, 1)


def test_exact_header_bytes(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, [1, 2, 65535], 65536)
    expected = b"MINILLM\0" + struct.pack("<IHHQQ", 1, 2, 0, 3, 65536) + struct.pack("<3H", 1, 2, 65535)
    assert path.read_bytes() == expected


def test_empty_shard(tmp_path):
    write_shard(tmp_path / "e.bin", np.zeros(0, np.int64), 10)
    assert read_shard(tmp_path / "e.bin").size == 0


@pytest.mark.parametrize("ids, error, words", [
    ([0, 5, 10], ValueError, "token id 10 is out of range \\[0, 10\\)"),
    ([-1, 2], ValueError, "token id -1"),
    ([[1, 2]], ValueError, "1-D"),
    ([1.5, 2.0], TypeError, "integers"),
])
def test_write_validates(tmp_path, ids, error, words):
    with pytest.raises(error, match=words):
        write_shard(tmp_path / "s.bin", ids, 10)
    assert not os.listdir(tmp_path)


def test_corrupt_shards_raise_value_error_naming_the_file(tmp_path):
    good = tmp_path / "good.bin"
    write_shard(good, np.arange(100), 1000)
    blob = good.read_bytes()
    cases = {
        "short.bin": blob[:20],
        "truncated.bin": blob[:-1],
        "trailing.bin": blob + b"\0\0",
        "magic.bin": b"NOTMINI\0" + blob[8:],
        "version.bin": blob[:8] + struct.pack("<I", 99) + blob[12:],
        "dtype.bin": blob[:12] + struct.pack("<H", 3) + blob[14:],
        "vocab.bin": blob[:24] + struct.pack("<Q", 100000) + blob[32:],   # too big for uint16 ids
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="corrupt or truncated") as info:
            read_shard(tmp_path / name)
        assert name in str(info.value), name
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        read_shard(tmp_path / "missing.bin")


def test_check_ids_finds_ids_beyond_the_vocab(tmp_path):
    path = tmp_path / "s.bin"
    write_shard(path, [1, 2, 3], 10)
    blob = bytearray(path.read_bytes())
    blob[32:34] = struct.pack("<H", 50)
    path.write_bytes(bytes(blob))
    read_shard(path)                                   # header is fine
    with pytest.raises(ValueError, match="token id 50"):
        read_shard(path, check_ids=True)


def test_failed_write_keeps_previous_shard(tmp_path, monkeypatch):
    path = tmp_path / "s.bin"
    write_shard(path, [1, 2, 3], 10)
    old = path.read_bytes()
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("simulated crash")))
    with pytest.raises(OSError, match="simulated crash"):
        write_shard(path, [4, 5, 6, 7], 10)
    assert path.read_bytes() == old and os.listdir(tmp_path) == ["s.bin"]


def test_concatenated_tokens_match_numpy_concatenation(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 500, size=n) for n in (7, 1, 0, 13, 5)]
    parts = []
    for i, array in enumerate(arrays):
        write_shard(tmp_path / f"{i}.bin", array, 500)
        parts.append(read_shard(tmp_path / f"{i}.bin"))
    joined = ConcatenatedTokens(parts)
    reference = np.concatenate(arrays)
    assert len(joined) == reference.size == 26 and joined.shape == (26,)
    for _ in range(200):
        start, stop = sorted(rng.integers(-30, 31, size=2))
        np.testing.assert_array_equal(joined[start:stop], reference[start:stop])
    assert [joined[i] for i in range(-26, 26)] == reference[list(range(-26, 26))].tolist()
    np.testing.assert_array_equal(joined.to_numpy(), reference)
    with pytest.raises(IndexError):
        joined[26]
    with pytest.raises(ValueError, match="step"):
        joined[::2]
