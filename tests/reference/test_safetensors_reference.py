"""Parity with the reference ``safetensors`` package (optional: skipped when it is not installed)."""
import json
import struct

import numpy as np
import pytest

from minillm.serialization import load_safetensors, save_safetensors

st_numpy = pytest.importorskip("safetensors.numpy", reason="the optional `safetensors` package is not installed")


def _tensors():
    rng = np.random.default_rng(0)
    return {
        "wte.weight": rng.standard_normal((7, 5)).astype(np.float32),
        "ln.bias": rng.standard_normal(5).astype(np.float16),
        "step": np.array(12, dtype=np.int64),
        "mask": rng.random((3, 4)) < 0.5,
        "ids": rng.integers(0, 60000, size=9).astype(np.uint16),
        "bytes": rng.integers(0, 255, size=3).astype(np.uint8),
        "small": rng.integers(-100, 100, size=4).astype(np.int8),
        "i32": rng.integers(-5, 5, size=(2, 2)).astype(np.int32),
        "f64": rng.standard_normal(3),
        "u32": rng.integers(0, 2 ** 32, size=3).astype(np.uint32),
        "u64": rng.integers(0, 2 ** 62, size=2).astype(np.uint64),
        "i16": rng.integers(-300, 300, size=5).astype(np.int16),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def test_reference_reads_our_files(tmp_path):
    tensors = _tensors()
    path = str(tmp_path / "ours.safetensors")
    save_safetensors(path, tensors, {"format": "np", "step": "12"})
    theirs = st_numpy.load_file(path)
    assert set(theirs) == set(tensors)
    for name, value in tensors.items():
        assert theirs[name].dtype == value.dtype and theirs[name].shape == value.shape
        np.testing.assert_array_equal(theirs[name], value)


def test_we_read_reference_files(tmp_path):
    tensors = _tensors()
    path = str(tmp_path / "theirs.safetensors")
    st_numpy.save_file(tensors, path, metadata={"format": "np"})
    ours, metadata = load_safetensors(path)
    assert metadata == {"format": "np"}
    for name, value in tensors.items():
        np.testing.assert_array_equal(ours[name], value)
        assert ours[name].dtype == value.dtype


@pytest.mark.parametrize("metadata", [None, {"note": "héllo ✓"}])
def test_bytes_are_identical_to_the_reference_writer(tmp_path, metadata):
    tensors = _tensors()
    path = tmp_path / "ours.safetensors"
    save_safetensors(path, tensors, metadata, checksum=False)
    assert path.read_bytes() == st_numpy.save(tensors, metadata=metadata)


def test_the_checksum_is_plain_metadata_to_the_reference(tmp_path):
    # With checksums (the default) the file is what the reference writes when given the same
    # metadata key, and the reference reads it (tensors and the key) like any other file.
    tensors = _tensors()
    path = tmp_path / "ours.safetensors"
    save_safetensors(path, tensors)
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    metadata = json.loads(path.read_bytes()[8:8 + n])["__metadata__"]
    assert list(metadata) == ["minillm.sha256"]
    assert path.read_bytes() == st_numpy.save(tensors, metadata=metadata)
    theirs = st_numpy.load_file(str(path))
    for name, value in tensors.items():
        np.testing.assert_array_equal(theirs[name], value)


def test_same_header_and_data_with_several_metadata_keys(tmp_path):
    # The reference keeps metadata in a Rust HashMap, whose key order varies from run to run,
    # so with 2+ keys only the parsed header (not its bytes) can be compared.
    tensors, metadata = _tensors(), {"format": "np", "step": "3", "note": "x"}
    path = tmp_path / "ours.safetensors"
    save_safetensors(path, tensors, metadata, checksum=False)
    ours, theirs = path.read_bytes(), st_numpy.save(tensors, metadata=metadata)
    n_ours, n_theirs = struct.unpack("<Q", ours[:8])[0], struct.unpack("<Q", theirs[:8])[0]
    assert n_ours == n_theirs
    assert json.loads(ours[8:8 + n_ours]) == json.loads(theirs[8:8 + n_theirs])
    assert ours[8 + n_ours:] == theirs[8 + n_theirs:]


def test_reference_reads_our_bfloat16(tmp_path):
    # safetensors.numpy has no bfloat16 (NumPy lacks the dtype), so check with the raw deserializer.
    import safetensors

    from minillm.serialization import float32_to_bf16_bits

    bits = float32_to_bf16_bits(np.array([1.0, -2.0, 0.15625, 3.0e38], dtype=np.float32))
    path = tmp_path / "ours.safetensors"
    save_safetensors(path, {"w": bits, "f": np.ones(2, np.float32)}, bf16_names=["w"])
    entries = dict(safetensors.deserialize(path.read_bytes()))
    assert entries["w"]["dtype"] == "BF16" and entries["w"]["shape"] == [4]
    assert bytes(entries["w"]["data"]) == bits.tobytes()
