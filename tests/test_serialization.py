"""Tests for minillm.serialization: the safetensors layout, validation, corruption, atomicity."""
import json
import os
import struct

import numpy as np
import pytest

import minillm.serialization as ser
from minillm.serialization import (
    bf16_bits_to_float32,
    build_safetensors_header,
    float32_to_bf16_bits,
    load_safetensors,
    read_safetensors_header,
    save_safetensors,
)

NUMPY_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
}


def _sample(dtype, shape, rng):
    if dtype == np.bool_:
        return np.asarray(rng.random(shape) < 0.5)
    if np.issubdtype(dtype, np.floating):
        return np.asarray(rng.standard_normal(shape), dtype=dtype)
    info = np.iinfo(dtype)
    return np.asarray(rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True), dtype=dtype)


def _raw_file(path, header: dict, data: bytes, pad=True) -> str:
    """Write a hand-built safetensors file (possibly invalid) for corruption tests."""
    text = json.dumps(header).encode("utf-8")
    if pad:
        text += b" " * ((-len(text)) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return str(path)


@pytest.mark.parametrize("name", sorted(NUMPY_DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (3,), (2, 3, 4), (0, 5)])
@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip_every_dtype(tmp_path, name, shape, mmap):
    rng = np.random.default_rng(0)
    array = _sample(NUMPY_DTYPES[name], shape, rng)
    path = tmp_path / "t.safetensors"
    save_safetensors(path, {"x": array, "other": np.arange(3, dtype=np.float32)}, {"step": "7"})
    tensors, metadata = load_safetensors(path, mmap=mmap)
    assert metadata == {"step": "7"}
    assert tensors["x"].dtype == array.dtype and tensors["x"].shape == array.shape
    np.testing.assert_array_equal(tensors["x"], array)
    infos, _, _ = read_safetensors_header(path)
    assert infos["x"].dtype == name


def test_byte_exact_layout_of_a_tiny_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_safetensors(path, {"a": np.array([1, 2], dtype=np.int16)}, {"k": "v"})
    header = b'{"__metadata__":{"k":"v"},"a":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}}'
    assert len(header) == 79                                   # padded with one space to 80
    expected = struct.pack("<Q", 80) + header + b" " + b"\x01\x00\x02\x00"
    assert path.read_bytes() == expected


def test_tensors_are_ordered_by_dtype_size_then_name_and_aligned(tmp_path):
    tensors = {"b_u8": np.zeros(3, np.uint8), "a_f32": np.zeros(5, np.float32), "z_f64": np.zeros(1, np.float64),
               "c_f16": np.zeros(3, np.float16), "a_f64": np.ones(2, np.float64)}
    header, order = build_safetensors_header(tensors)
    assert order == ["a_f64", "z_f64", "a_f32", "c_f16", "b_u8"]
    assert len(header) % 8 == 0
    path = tmp_path / "o.safetensors"
    save_safetensors(path, tensors)
    infos, _, data_start = read_safetensors_header(path)
    assert data_start % 8 == 0
    for name, info in infos.items():
        assert info.data_offsets[0] % tensors[name].dtype.itemsize == 0


def test_no_metadata_key_when_metadata_is_none():
    header, _ = build_safetensors_header({"w": np.zeros(2, np.float32)})
    assert b"__metadata__" not in header
    assert json.loads(header[8:]) == {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


def test_non_contiguous_and_big_endian_inputs_are_stored_little_endian(tmp_path):
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    big = np.arange(5, dtype=">i4")
    path = tmp_path / "nc.safetensors"
    save_safetensors(path, {"t": base.T, "big": big})
    tensors, _ = load_safetensors(path)
    np.testing.assert_array_equal(tensors["t"], base.T)
    np.testing.assert_array_equal(tensors["big"], big)
    assert tensors["big"].dtype == np.dtype("<i4")
    raw = path.read_bytes()
    assert np.arange(5, dtype="<i4").tobytes() in raw


def test_mmap_arrays_are_read_only_and_regular_arrays_writable(tmp_path):
    path = tmp_path / "m.safetensors"
    save_safetensors(path, {"w": np.ones((2, 2), np.float32)})
    lazy, _ = load_safetensors(path, mmap=True)
    with pytest.raises(ValueError):
        lazy["w"][0, 0] = 5.0
    eager, _ = load_safetensors(path)
    eager["w"][0, 0] = 5.0
    assert load_safetensors(path)[0]["w"][0, 0] == 1.0


def test_bf16_round_trip_and_widening(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 0.0, np.inf], dtype=np.float32)   # all exact in bfloat16
    bits = float32_to_bf16_bits(values)
    path = tmp_path / "bf.safetensors"
    save_safetensors(path, {"w": bits, "u": bits.copy()}, bf16_names=["w"])
    infos, _, _ = read_safetensors_header(path)
    assert infos["w"].dtype == "BF16" and infos["u"].dtype == "U16"
    raw, _ = load_safetensors(path)
    assert raw["w"].dtype == np.uint16
    np.testing.assert_array_equal(raw["w"], bits)
    widened, _ = load_safetensors(path, bf16_as="float32")
    np.testing.assert_array_equal(widened["w"], values)
    assert widened["u"].dtype == np.uint16                 # U16 is never reinterpreted


def test_float32_to_bf16_rounds_to_nearest_even():
    patterns = np.array([0x3F800000, 0x3F808000, 0x3F818000, 0x3F808001, 0x7F800000, 0x7FC00001, 0xFFFFFFFF],
                        dtype=np.uint32)
    bits = float32_to_bf16_bits(patterns.view(np.float32))
    # exact; tie -> even (down); tie -> even (up); above tie -> up; inf; NaN stays NaN; NaN stays NaN
    assert bits[:5].tolist() == [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0x7F80]
    assert np.isnan(bf16_bits_to_float32(bits[5:])).all()


@pytest.mark.parametrize("tensors, metadata, error, words", [
    ({1: np.zeros(1)}, None, TypeError, "names must be str"),
    ({"w": [1.0, 2.0]}, None, TypeError, "numpy.ndarray"),
    ({"w": np.zeros(2, dtype=object)}, None, TypeError, "unsupported dtype"),
    ({"w": np.zeros(2, dtype=np.complex64)}, None, TypeError, "unsupported dtype"),
    ({"__metadata__": np.zeros(1)}, None, ValueError, "reserved"),
    ({"w": np.zeros(1)}, {"step": 3}, TypeError, "str -> str"),
    ({"w": np.zeros(1)}, ["step"], TypeError, "metadata must be a dict"),
])
def test_save_validates_input(tmp_path, tensors, metadata, error, words):
    with pytest.raises(error, match=words):
        save_safetensors(tmp_path / "x.safetensors", tensors, metadata)
    assert not os.listdir(tmp_path)


def test_save_names_gpu_arrays_and_bf16_misuse(tmp_path):
    class FakeCupyArray:
        __cuda_array_interface__ = {}
    with pytest.raises(TypeError, match="move it to the host first with minillm.backend.to_numpy"):
        save_safetensors(tmp_path / "x.safetensors", {"w": FakeCupyArray()})

    class FakeTensor:
        data, grad = np.zeros(2), None
    with pytest.raises(TypeError, match="a Tensor: pass its host array"):
        save_safetensors(tmp_path / "x.safetensors", {"w": FakeTensor()})
    with pytest.raises(TypeError, match="uint16"):
        save_safetensors(tmp_path / "x.safetensors", {"w": np.zeros(2, np.float32)}, bf16_names=["w"])
    with pytest.raises(ValueError, match="not tensor names"):
        save_safetensors(tmp_path / "x.safetensors", {"w": np.zeros(2, np.uint16)}, bf16_names=["v"])


GOOD_ENTRY = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("header, data, words", [
    ({"w": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2, "unknown or unsupported dtype"),
    ({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "need 12"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}, b"\0" * 8, "need 8"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, b"\0" * 16, "gap"),
    ({"w": GOOD_ENTRY, "v": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlaps"),
    ({"w": GOOD_ENTRY}, b"\0" * 12, "data buffer has 12 bytes"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4, "beyond"),
    ({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "non-negative"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "begin <= end"),
    ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "exactly dtype, shape, data_offsets"),
    ({"__metadata__": {"a": 1}, "w": GOOD_ENTRY}, b"\0" * 8, "__metadata__"),
    ([1, 2], b"", "not an object|must start with"),
])
def test_corrupt_headers_raise_value_error_naming_the_file(tmp_path, header, data, words):
    path = _raw_file(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(ValueError, match=words) as info:
        load_safetensors(path)
    assert "bad.safetensors" in str(info.value)


def test_truncated_and_garbled_files(tmp_path):
    path = tmp_path / "good.safetensors"
    save_safetensors(path, {"w": np.arange(6, dtype=np.float32), "b": np.ones(3, np.int64)}, {"k": "v"})
    blob = path.read_bytes()
    cases = {
        "short.safetensors": blob[:5],                                   # no complete length field
        "cut_header.safetensors": blob[:30],                             # header length beyond file
        "cut_data.safetensors": blob[:-1],                               # one data byte missing
        "extra.safetensors": blob + b"\0" * 4,                           # bytes no tensor covers
        "json.safetensors": blob[:8] + b"{" + b"x" * (len(blob) - 9),    # not JSON
        "utf8.safetensors": blob[:9] + b"\xff" + blob[10:],              # header not UTF-8
        "huge.safetensors": struct.pack("<Q", 2 ** 63) + blob[8:],       # absurd header length
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match="corrupt or truncated") as info:
            load_safetensors(tmp_path / name)
        assert name in str(info.value), name


def test_duplicate_keys_are_rejected(tmp_path):
    text = b'{"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}'
    text += b" " * ((-len(text)) % 8)
    path = tmp_path / "dup.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\x01")
    with pytest.raises(ValueError, match="duplicate key"):
        load_safetensors(path)


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_safetensors(tmp_path / "nope.safetensors")
    save_safetensors(tmp_path / "ok.safetensors", {"w": np.zeros(1, np.float32)})
    with pytest.raises(ValueError, match="bf16_as"):
        load_safetensors(tmp_path / "ok.safetensors", bf16_as="bfloat16")


def test_empty_tensor_dict_round_trips(tmp_path):
    path = tmp_path / "empty.safetensors"
    save_safetensors(path, {}, {"note": "nothing"})
    for mmap in (False, True):
        assert load_safetensors(path, mmap=mmap) == ({}, {"note": "nothing"})


def _assert_failed_write_keeps_old_file(tmp_path, old_bytes):
    path = tmp_path / "ckpt.safetensors"
    assert path.read_bytes() == old_bytes
    assert sorted(os.listdir(tmp_path)) == ["ckpt.safetensors"]     # no temporary file left behind


def test_failed_rename_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    save_safetensors(path, {"w": np.arange(4, dtype=np.float32)}, {"step": "1"})
    old = path.read_bytes()

    def failing_replace(src, dst):
        raise OSError("simulated crash before rename")
    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="simulated crash"):
        save_safetensors(path, {"w": np.zeros(1000, dtype=np.float32)}, {"step": "2"})
    _assert_failed_write_keeps_old_file(tmp_path, old)


def test_failure_midway_through_the_data_leaves_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    save_safetensors(path, {"a": np.arange(4, dtype=np.float32)})
    old = path.read_bytes()
    real_write = ser._write_tensor_bytes
    calls = []

    def write_then_fail(handle, array):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure while writing the second tensor")
        real_write(handle, array)
    monkeypatch.setattr(ser, "_write_tensor_bytes", write_then_fail)
    with pytest.raises(RuntimeError, match="second tensor"):
        save_safetensors(path, {"a": np.ones(64, np.float32), "b": np.ones(64, np.float32)})
    assert len(calls) == 2
    _assert_failed_write_keeps_old_file(tmp_path, old)
