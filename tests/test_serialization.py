"""Tests for minillm.serialization: the safetensors layout, validation, corruption, atomicity."""
import hashlib
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
from tests.peak_memory import peak_allocation

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
    save_safetensors(path, {"a": np.array([1, 2], dtype=np.int16)}, {"k": "v"}, checksum=False)
    header = b'{"__metadata__":{"k":"v"},"a":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}}'
    assert len(header) == 79                                   # padded with one space to 80
    expected = struct.pack("<Q", 80) + header + b" " + b"\x01\x00\x02\x00"
    assert path.read_bytes() == expected


def test_byte_exact_layout_with_the_checksum(tmp_path):
    # The default: each tensor's SHA-256 under the metadata key minillm.sha256 (a JSON string),
    # after the caller's keys; everything else as without it.
    path = tmp_path / "tiny.safetensors"
    save_safetensors(path, {"a": np.array([1, 2], dtype=np.int16)}, {"k": "v"})
    digest = hashlib.sha256(b"\x01\x00\x02\x00").hexdigest()
    header = ('{"__metadata__":{"k":"v","minillm.sha256":"{\\"a\\":\\"%s\\"}"},'
              '"a":{"dtype":"I16","shape":[2],"data_offsets":[0,4]}}' % digest).encode()
    header += b" " * ((-len(header)) % 8)
    assert path.read_bytes() == struct.pack("<Q", len(header)) + header + b"\x01\x00\x02\x00"
    infos, metadata, _ = read_safetensors_header(path)
    assert metadata == {"k": "v"} and infos["a"].sha256 == digest


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
    header, _ = build_safetensors_header({"w": np.zeros(2, np.float32)}, checksum=False)
    assert b"__metadata__" not in header
    assert json.loads(header[8:]) == {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    header, _ = build_safetensors_header({"w": np.zeros(2, np.float32)})      # the checksum only
    assert list(json.loads(header[8:])["__metadata__"]) == ["minillm.sha256"]


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
    ({"w": {"dtype": "F32", "shape": [0] * 65, "data_offsets": [0, 0]}}, b"", "65 dimensions; at most 64"),
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


# ----------------------------------------------------------------------------------------------
# Hostile headers: refused in bounded memory, never a RecursionError (issue 13 §3)
# ----------------------------------------------------------------------------------------------



def _sparse_file(path, header_length: int, prefix: bytes = b"", total: int | None = None) -> str:
    """A file announcing a ``header_length``-byte header, holding ``prefix`` and then a hole up to
    ``total`` bytes (sparse: no disk space, no memory), so the length check passes."""
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", header_length) + prefix)
        handle.truncate(total if total is not None else 8 + header_length)
    return str(path)


def test_a_header_over_the_cap_is_refused_before_it_is_read(tmp_path):
    # The 200 MB nested header: before, reading it cost 433 MB and ended in RecursionError.
    # Now the length alone refuses it: nothing of the header is read.
    nested = b'{"a":' + b"[" * 100_000
    path = _sparse_file(tmp_path / "huge_header.safetensors", 200_000_000, nested)
    error, peak = peak_allocation(lambda: load_safetensors(path))
    assert isinstance(error, ValueError), error
    assert "huge_header.safetensors" in str(error) and "200,000,000 bytes" in str(error)
    assert "16,777,216-byte limit" in str(error)
    assert peak < 1_000_000                                      # a few kB, not the header
    assert ser.MAX_HEADER_BYTES == 16 * 2 ** 20


def test_the_header_cap_is_adjustable_for_trusted_files(tmp_path):
    path = tmp_path / "meta.safetensors"
    save_safetensors(path, {"w": np.zeros(2, np.float32)}, {"note": "x" * 5000})
    with pytest.raises(ValueError, match="more than the 4,096-byte limit"):
        load_safetensors(path, max_header_bytes=4096)
    assert load_safetensors(path, max_header_bytes=8192)[1]["note"] == "x" * 5000
    with pytest.raises(ValueError, match="max_header_bytes"):
        read_safetensors_header(path, max_header_bytes=True)


@pytest.mark.parametrize("header", [
    b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",            # 100k nested lists
    b'{"a":' + b"{" * 50_000 + b"}" * 50_000 + b"}",               # 50k nested objects
    b"[" * 100_000,                                                # no closing bracket at all
    b'{"w":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}}',  # a list inside a list
    b'{"w":{"dtype":"F32","shape":[{}],"data_offsets":[0,8]}}',   # an object inside a list
    b'{"__metadata__":{"k":{"deep":"x"}}}',                      # metadata values are strings
    b'{"w":[1,2]}',                                                # an entry that is a list
])
def test_nesting_beyond_the_schema_is_refused_without_recursion(tmp_path, header):
    header += b" " * ((-len(header)) % 8)
    path = tmp_path / "nested.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    error, peak = peak_allocation(lambda: load_safetensors(path))
    assert type(error) is ValueError, repr(error)                 # not RecursionError
    assert "nested.safetensors" in str(error)
    assert "not shaped like a safetensors header" in str(error) or "must start with" in str(error)
    assert peak < 5 * len(header) + 2_000_000                     # a few copies of the text at most


def test_many_small_objects_stop_at_the_second(tmp_path):
    # {"0":{},"1":{},...}: fits the bracket structure, but Python objects would take ~35 times the
    # text; only __metadata__ may be an object other than a tensor entry, so parsing stops early.
    header = b"{" + b",".join(b'"%x":{}' % i for i in range(100_000)) + b"}"
    header += b" " * ((-len(header)) % 8)
    path = tmp_path / "objects.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    error, peak = peak_allocation(lambda: load_safetensors(path))
    assert type(error) is ValueError and "objects.safetensors" in str(error)
    assert "only __metadata__ may be" in str(error)
    assert peak < 8 * len(header)                                  # the text's copies, not its objects


def test_brackets_inside_strings_and_escapes_do_not_count(tmp_path):
    # Names and metadata may hold any characters: brackets, quotes, backslashes.
    name = 'w[{"\\]'
    path = tmp_path / "odd.safetensors"
    save_safetensors(path, {name: np.arange(3, dtype=np.float32)}, {"k]]}": '[[[{"\\\\'})
    tensors, metadata = load_safetensors(path)
    assert list(tensors) == [name] and metadata == {"k]]}": '[[[{"\\\\'}


def test_loads_json_bounded():
    assert ser.loads_json_bounded('{"a": [1, {"b": "[[[\\"]"}]}', 3) == {"a": [1, {"b": '[[["]'}]}
    with pytest.raises(ValueError, match="deeper than 2 levels"):
        ser.loads_json_bounded('{"a": [1, {"b": 2}]}', 2)
    for text in ("[" * 200_000 + "]" * 200_000, "[" * 200_000, '{"a": ' * 40 + "1" + "}" * 40):
        with pytest.raises(ValueError, match="its brackets nest deeper than 32 levels"):
            ser.loads_json_bounded(text, 32)
    for text in ("]]]]", "[[]", "[1]]"):
        with pytest.raises(ValueError, match="its brackets do not balance"):
            ser.loads_json_bounded(text, 32)
    with pytest.raises(ValueError):                                # mismatched pair: json's error
        ser.loads_json_bounded("[}", 32)
    assert ser.loads_json_bounded(b'["\\\\", "\\"]"]', 2) == ["\\", '"]']    # bytes; escapes
    with pytest.raises(ValueError, match="not terminated"):
        ser.loads_json_bounded('{"a": "open', 4)
    with pytest.raises(ValueError):                                # plain invalid JSON: json's error
        ser.loads_json_bounded("{1: 2}", 4)
    with pytest.raises(ValueError, match="expected a JSON string"):
        ser.loads_json_bounded(5, 4)


# ----------------------------------------------------------------------------------------------
# Checksums: a flipped byte is reported, naming the tensor
# ----------------------------------------------------------------------------------------------

def _checksummed_file(tmp_path) -> tuple[str, dict]:
    tensors = {"big": np.arange(1000, dtype=np.float32), "small": np.array([1, 2, 3], np.int8),
               "empty": np.zeros((0, 2), np.float16), "flag": np.array(True)}
    path = tmp_path / "sum.safetensors"
    save_safetensors(path, tensors, {"k": "v"})
    return str(path), tensors


@pytest.mark.parametrize("mmap", [False, True])
def test_checksums_round_trip_and_stay_out_of_the_metadata(tmp_path, mmap):
    path, tensors = _checksummed_file(tmp_path)
    loaded, metadata = load_safetensors(path, mmap=mmap)
    assert metadata == {"k": "v"}
    for name, value in tensors.items():
        np.testing.assert_array_equal(loaded[name], value)
    infos, _, _ = read_safetensors_header(path)
    assert infos["big"].sha256 == hashlib.sha256(tensors["big"].tobytes()).hexdigest()
    assert infos["empty"].sha256 == hashlib.sha256(b"").hexdigest()


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("tensor", ["big", "small", "flag"])
def test_a_flipped_byte_is_reported_naming_the_file_and_tensor(tmp_path, mmap, tensor):
    path, _ = _checksummed_file(tmp_path)
    infos, _, data_start = read_safetensors_header(path)
    begin, end = infos[tensor].data_offsets
    blob = bytearray(open(path, "rb").read())
    blob[data_start + (begin + end) // 2] ^= 0x04                  # one bit, mid-tensor
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match=f"flipped.safetensors.*tensor '{tensor}' does not match the SHA-256"):
        load_safetensors(bad, mmap=mmap)
    loaded, _ = load_safetensors(bad, mmap=mmap, verify=False)     # asked not to check: loads
    assert loaded[tensor].shape == infos[tensor].shape


def test_the_mmap_check_hashes_in_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(ser, "CHECKSUM_CHUNK_BYTES", 1000)          # 4000-byte tensor: 4 chunks
    path, tensors = _checksummed_file(tmp_path)
    loaded, _ = load_safetensors(path, mmap=True)
    np.testing.assert_array_equal(loaded["big"], tensors["big"])
    blob = bytearray(open(path, "rb").read())
    infos, _, data_start = read_safetensors_header(path)
    blob[data_start + infos["big"].data_offsets[1] - 1] ^= 1      # the last chunk's last byte
    (tmp_path / "last.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="tensor 'big' does not match"):
        load_safetensors(tmp_path / "last.safetensors", mmap=True)


def test_files_without_checksums_load_unchecked(tmp_path):
    # Files from other tools (the reference library, Hugging Face) carry no minillm.sha256: they
    # load as before, without the integrity check.
    path = tmp_path / "plain.safetensors"
    save_safetensors(path, {"w": np.arange(4, dtype=np.float32)}, {"format": "pt"}, checksum=False)
    infos, metadata, data_start = read_safetensors_header(path)
    assert infos["w"].sha256 is None and metadata == {"format": "pt"}
    blob = bytearray(path.read_bytes())
    blob[data_start] ^= 1
    path.write_bytes(bytes(blob))
    assert load_safetensors(path)[0]["w"][0] != 0.0               # nothing to detect it with


@pytest.mark.parametrize("value, words", [
    ("not json", "is not a JSON object of tensor name"),
    ("[" * 10_000, "is not a JSON object of tensor name"),
    ('{"w": {"x": 1}}', "is not a JSON object of tensor name"),
    ('["w"]', "it is a JSON list"),
    ('{"w": "abc"}', "not 64 lowercase hex"),
    ('{"w": "%s", "v": "%s"}' % ("0" * 64, "0" * 64), "1 names that are not tensors"),
    ("{}", "no digest for 1 tensors"),
    ('{"w": "%s", "w": "%s"}' % ("0" * 64, "0" * 64), "duplicate key"),
])
def test_malformed_checksum_metadata_is_refused(tmp_path, value, words):
    path = _raw_file(tmp_path / "sums.safetensors", {"__metadata__": {"minillm.sha256": value}, "w": GOOD_ENTRY},
                     b"\0" * 8)
    with pytest.raises(ValueError, match=words) as info:
        load_safetensors(path)
    assert "sums.safetensors" in str(info.value) and "minillm.sha256" in str(info.value)


def test_the_checksum_key_is_reserved_for_the_writer(tmp_path):
    with pytest.raises(ValueError, match="reserved for the tensors' checksums"):
        save_safetensors(tmp_path / "x.safetensors", {"w": np.zeros(1, np.float32)}, {"minillm.sha256": "{}"})
    with pytest.raises(TypeError, match="checksum must be a bool"):
        save_safetensors(tmp_path / "x.safetensors", {"w": np.zeros(1, np.float32)}, checksum="yes")
    with pytest.raises(TypeError, match="verify must be a bool"):
        load_safetensors(tmp_path / "x.safetensors", verify=1)


def test_safetensors_map_reads_releases_and_reads_again(tmp_path):
    """SafetensorsMap: read-only views of the mapped file, checksums checked on first read, and a
    released tensor reads the same bytes again (release only drops this process's pages)."""
    from minillm.serialization import SafetensorsMap

    rng = np.random.default_rng(0)
    tensors = {"big": rng.standard_normal((300, 1000)).astype(np.float32), "small": np.arange(5, dtype=np.int64),
               "empty": np.zeros((0, 3), np.float16)}
    save_safetensors(tmp_path / "t.safetensors", tensors)
    mapped = SafetensorsMap(tmp_path / "t.safetensors")
    for name, value in tensors.items():
        view = mapped.tensor(name)
        np.testing.assert_array_equal(view, value)
        assert not view.flags.writeable or view.size == 0
        mapped.release(name)
        np.testing.assert_array_equal(mapped.tensor(name), value)
    with pytest.raises(KeyError, match="no tensor 'nope'"):
        mapped.tensor("nope")
    data = bytearray((tmp_path / "t.safetensors").read_bytes())
    data[-50] ^= 1                                                  # a flipped bit near the end of the data
    (tmp_path / "t.safetensors").write_bytes(bytes(data))
    damaged = SafetensorsMap(tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        for name in tensors:
            damaged.tensor(name)
    assert SafetensorsMap(tmp_path / "t.safetensors", verify=False).tensor("small").shape == (5,)
