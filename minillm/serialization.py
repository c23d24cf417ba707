"""The safetensors file layout, read and written from scratch (no pickle, no third-party code).

File layout (all integers little-endian)::

    bytes [0, 8)          N: unsigned 64-bit length of the header
    bytes [8, 8 + N)      the header: UTF-8 JSON, padded with spaces (0x20) so that 8 + N is a
                          multiple of 8 (then every tensor below starts 8-byte aligned as long as
                          the tensors are ordered by decreasing item size, which the writer does)
    bytes [8 + N, end)    the data buffer: each tensor's raw C-contiguous little-endian bytes

The header is one JSON object::

    {"__metadata__": {"str": "str", ...},                       (optional)
     "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}

``data_offsets`` are byte offsets into the data buffer (not the file); ``end - begin`` must equal
``prod(shape) * itemsize``, and the tensors must tile the buffer exactly: no gaps, no overlaps,
nothing left over. The reader checks all of this and raises a ``ValueError`` naming the file and
the fault, so a truncated or corrupt checkpoint never loads as garbage.

The writer produces the same bytes as the reference ``safetensors`` library: tensors ordered by
decreasing dtype rank then by name, the header serialised compactly with ``__metadata__`` first
(byte-identical with at most one metadata key: the reference keeps metadata in a hash map whose
key order varies between runs; ours keeps the caller's dict order, so our output is deterministic).

bfloat16: NumPy has no bfloat16 dtype, so a BF16 tensor travels as a ``uint16`` array holding the
raw bfloat16 bit patterns (the upper 16 bits of the float32 with the same sign/exponent). To write
one, pass its name in ``bf16_names``; when loading, ``bf16_as="uint16"`` (default) returns those
raw bits and ``bf16_as="float32"`` widens them exactly to float32. ``read_safetensors_header``
tells which tensors are BF16. ``float32_to_bf16_bits`` / ``bf16_bits_to_float32`` convert.
"""
from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from minillm.amp import formats
from minillm.fileio import atomic_open

HEADER_LENGTH_BYTES = 8
HEADER_ALIGNMENT = 8
METADATA_KEY = "__metadata__"

# safetensors dtype name -> little-endian NumPy dtype of the stored bytes.
DTYPE_TO_NUMPY: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # raw bfloat16 bits, see the module docstring
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}

# NumPy dtype kind+itemsize -> safetensors name (uint16 maps to U16 unless named in bf16_names).
_NUMPY_TO_DTYPE: dict[tuple[str, int], str] = {
    ("f", 8): "F64", ("f", 4): "F32", ("f", 2): "F16",
    ("i", 8): "I64", ("i", 4): "I32", ("i", 2): "I16", ("i", 1): "I8",
    ("u", 8): "U64", ("u", 4): "U32", ("u", 2): "U16", ("u", 1): "U8",
    ("b", 1): "BOOL",
}

# The reference implementation sorts tensors by its Dtype enum (declared roughly by size) in
# decreasing order, then by name. Reproducing that order makes our files byte-identical to
# theirs and keeps every tensor aligned to its item size.
_DTYPE_RANK = {
    "BOOL": 0, "U8": 1, "I8": 2, "I16": 5, "U16": 6, "F16": 7, "BF16": 8,
    "I32": 9, "U32": 10, "F32": 11, "F64": 12, "I64": 13, "U64": 14,
}


@dataclass(frozen=True)
class TensorInfo:
    """One header entry: dtype name, shape, and [begin, end) byte offsets into the data buffer."""

    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]


# ----------------------------------------------------------------------------------------------
# bfloat16 bit conversions
# ----------------------------------------------------------------------------------------------

def float32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (round to nearest, ties to even); return the uint16 bits.

    bfloat16 keeps the top 16 bits of a float32. Rounding adds ``0x7FFF + lsb`` to the 32-bit
    pattern before truncating, where ``lsb`` is bit 16 (the last kept mantissa bit): this rounds
    to nearest with ties going to the even pattern. NaNs are kept NaN (quiet bit forced on),
    because rounding could otherwise carry a NaN mantissa into infinity.
    """
    if not isinstance(values, np.ndarray):
        raise TypeError(f"float32_to_bf16_bits: values must be a numpy array, got {type(values).__name__}")
    return formats.float32_to_bf16_bits(values)   # the one implementation (mixed precision uses it too)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bit patterns (uint16) to float32 exactly: float32 bits = bf16 bits << 16."""
    if not isinstance(bits, np.ndarray) or bits.dtype != np.uint16:
        raise TypeError(
            f"bf16_bits_to_float32: bits must be a numpy uint16 array, got "
            f"{type(bits).__name__} with dtype {getattr(bits, 'dtype', None)}"
        )
    return formats.bf16_bits_to_float32(bits)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------

def _validate_tensors(tensors: Mapping[str, np.ndarray], bf16_names: set[str]) -> dict[str, str]:
    """Check names and values; return name -> safetensors dtype name."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"save_safetensors: tensors must be a dict of str -> numpy array, got {type(tensors).__name__}")
    dtype_names: dict[str, str] = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"save_safetensors: tensor names must be str, got {name!r} ({type(name).__name__})")
        if name == METADATA_KEY:
            raise ValueError(f"save_safetensors: tensor name {METADATA_KEY!r} is reserved for the metadata")
        if not isinstance(value, np.ndarray):
            hint = ""
            if hasattr(value, "__cuda_array_interface__") or type(value).__module__.startswith(("cupy", "minillm._strict")):
                hint = " (a GPU array: move it to the host first with minillm.backend.to_numpy(array))"
            elif hasattr(value, "data") and hasattr(value, "grad"):
                hint = " (a Tensor: pass its host array, minillm.backend.to_numpy(tensor.data))"
            raise TypeError(
                f"save_safetensors: tensor {name!r} must be a numpy.ndarray, got {type(value).__module__}."
                f"{type(value).__name__}{hint}"
            )
        key = (value.dtype.kind, value.dtype.itemsize)
        if key not in _NUMPY_TO_DTYPE:
            raise TypeError(
                f"save_safetensors: tensor {name!r} has unsupported dtype {value.dtype}; expected one of "
                f"float64/32/16, int64/32/16/8, uint64/32/16/8, bool (bfloat16 as uint16 bits + bf16_names)"
            )
        dtype_name = _NUMPY_TO_DTYPE[key]
        if name in bf16_names:
            if dtype_name != "U16":
                raise TypeError(
                    f"save_safetensors: tensor {name!r} is listed in bf16_names, so it must be a uint16 array "
                    f"of raw bfloat16 bits, got dtype {value.dtype}"
                )
            dtype_name = "BF16"
        dtype_names[name] = dtype_name
    unknown = bf16_names - set(dtype_names)
    if unknown:
        raise ValueError(f"save_safetensors: bf16_names {sorted(unknown)} are not tensor names")
    return dtype_names


def _validate_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"save_safetensors: metadata must be a dict of str -> str or None, got {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"save_safetensors: metadata entries must be str -> str, got {key!r}: {value!r} "
                f"({type(key).__name__} -> {type(value).__name__}); serialise other values (e.g. json.dumps) first"
            )
    return dict(metadata)


def _little_endian_contiguous(array: np.ndarray) -> np.ndarray:
    """The array as C-contiguous little-endian data (copies only when needed)."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def build_safetensors_header(
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    bf16_names: Iterable[str] = (),
) -> tuple[bytes, list[str]]:
    """Return (the 8-byte length + padded JSON header, tensor names in data order).

    Exposed so that tests and tools can inspect the exact header bytes without writing a file.
    """
    bf16_set = set(bf16_names)
    dtype_names = _validate_tensors(tensors, bf16_set)
    meta = _validate_metadata(metadata)
    order = sorted(dtype_names, key=lambda n: (-_DTYPE_RANK[dtype_names[n]], n))
    header: dict[str, object] = {}
    if meta is not None:
        header[METADATA_KEY] = meta
    offset = 0
    for name in order:
        value = tensors[name]
        nbytes = value.size * value.dtype.itemsize
        header[name] = {"dtype": dtype_names[name], "shape": [int(d) for d in value.shape],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    # Pad so that the data buffer starts at a multiple of 8 (8-byte length + header).
    text += b" " * ((-len(text)) % HEADER_ALIGNMENT)
    return struct.pack("<Q", len(text)) + text, order


def _write_tensor_bytes(handle, array: np.ndarray) -> None:
    """Write one tensor's raw bytes (a separate function so a failing write can be simulated)."""
    data = _little_endian_contiguous(array)
    if data.size:
        handle.write(memoryview(data.reshape(-1)).cast("B"))


def save_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    *,
    bf16_names: Iterable[str] = (),
) -> None:
    """Write ``tensors`` (name -> host numpy array) and optional str->str ``metadata`` to ``path``.

    The file is written atomically: a temporary file beside ``path`` is filled, fsynced and renamed
    over it, so an error at any point leaves any previous file at ``path`` byte-for-byte intact.
    ``bf16_names``: names of uint16 arrays that hold raw bfloat16 bits, stored with dtype BF16.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"save_safetensors: path must be str or os.PathLike, got {type(path).__name__}")
    header, order = build_safetensors_header(tensors, metadata, bf16_names)
    with atomic_open(path, "wb") as handle:
        handle.write(header)
        for name in order:
            _write_tensor_bytes(handle, tensors[name])


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------

def _reject_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r} in the JSON header")
        result[key] = value
    return result


def _parse_entry(name: str, entry: object, fail) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        fail(f"tensor {name!r}: entry must be an object with exactly dtype, shape, data_offsets; got {entry!r}")
    dtype = entry["dtype"]
    if dtype not in DTYPE_TO_NUMPY:
        fail(f"tensor {name!r}: unknown or unsupported dtype {dtype!r}; supported: {sorted(DTYPE_TO_NUMPY)}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        fail(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r}")
    offsets = entry["data_offsets"]
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
        fail(f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
    expected = math.prod(shape) * DTYPE_TO_NUMPY[dtype].itemsize
    if offsets[1] - offsets[0] != expected:
        fail(f"tensor {name!r}: data_offsets {offsets} span {offsets[1] - offsets[0]} bytes but dtype {dtype} "
             f"and shape {shape} need {expected}")
    return TensorInfo(dtype=dtype, shape=tuple(shape), data_offsets=(offsets[0], offsets[1]))


def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Read and fully validate the header of ``path``.

    Returns (name -> TensorInfo, metadata, data_start) where ``data_start = 8 + N`` is the file
    offset of the data buffer. Raises ``ValueError`` naming the file for any inconsistency.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_safetensors: no such file: {path!r}")
    file_size = os.path.getsize(path)

    def fail(message: str):
        raise ValueError(f"safetensors file {path!r} is corrupt or truncated: {message}")

    if file_size < HEADER_LENGTH_BYTES:
        fail(f"file has {file_size} bytes, fewer than the {HEADER_LENGTH_BYTES}-byte header length")
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(HEADER_LENGTH_BYTES))
        if header_len > file_size - HEADER_LENGTH_BYTES:
            fail(f"header length {header_len} exceeds the {file_size - HEADER_LENGTH_BYTES} bytes after the length field")
        raw = handle.read(header_len)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"header is not valid UTF-8 (byte {exc.start} of the header)")
    if not text.startswith("{"):
        fail(f"header must start with '{{', starts with {text[:20]!r}")
    try:
        header = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except ValueError as exc:  # json.JSONDecodeError and our duplicate-key error
        fail(f"header is not valid JSON: {exc}")
    if not isinstance(header, dict):
        fail("header JSON is not an object")

    metadata = header.pop(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        fail(f"{METADATA_KEY} must be an object of str -> str, got {metadata!r}")
    infos = {name: _parse_entry(name, entry, fail) for name, entry in header.items()}

    # The tensors must tile the data buffer exactly: sorted by offsets, each begins where the
    # previous ended, the first at 0 and the last at the end of the file.
    data_start = HEADER_LENGTH_BYTES + header_len
    buffer_size = file_size - data_start
    cursor = 0
    for name, info in sorted(infos.items(), key=lambda item: item[1].data_offsets):
        begin, end = info.data_offsets
        if begin != cursor:
            relation = "overlaps the previous tensor" if begin < cursor else "leaves a gap before it"
            fail(f"tensor {name!r}: data_offsets {list(info.data_offsets)} {relation} (expected begin {cursor})")
        if end > buffer_size:
            fail(f"tensor {name!r}: data_offsets end {end} is beyond the {buffer_size}-byte data buffer")
        cursor = end
    if cursor != buffer_size:
        fail(f"tensors cover {cursor} bytes but the data buffer has {buffer_size} bytes")
    return infos, metadata, data_start


def load_safetensors(
    path: str | os.PathLike,
    *,
    mmap: bool = False,
    bf16_as: str = "uint16",
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load a safetensors file; return (name -> numpy array, metadata).

    ``mmap=False``: each tensor is read into its own writable, aligned array.
    ``mmap=True``: tensors are read-only views of one ``np.memmap`` of the file, paged in lazily
    by the OS (nothing is read until used), handy for large checkpoints.
    ``bf16_as``: "uint16" returns BF16 tensors as raw uint16 bits; "float32" widens them (a copy).
    Arrays come back in native (little-endian) byte order with the header's dtype and shape.
    """
    if bf16_as not in ("uint16", "float32"):
        raise ValueError(f"load_safetensors: bf16_as must be 'uint16' or 'float32', got {bf16_as!r}")
    if not isinstance(mmap, bool):
        raise TypeError(f"load_safetensors: mmap must be a bool, got {mmap!r}")
    infos, metadata, data_start = read_safetensors_header(path)
    tensors: dict[str, np.ndarray] = {}
    if mmap:
        # np.memmap cannot map an empty region; a file whose tensors are all empty needs no map.
        whole = np.memmap(path, dtype=np.uint8, mode="r") if os.path.getsize(path) > data_start else None
        for name, info in infos.items():
            dtype = DTYPE_TO_NUMPY[info.dtype]
            begin, end = info.data_offsets
            if begin == end:
                array = np.zeros(info.shape, dtype=dtype)
                array.flags.writeable = False
            else:
                array = whole[data_start + begin:data_start + end].view(dtype).reshape(info.shape)
            tensors[name] = array
    else:
        with open(path, "rb") as handle:
            for name, info in infos.items():
                array = np.empty(info.shape, dtype=DTYPE_TO_NUMPY[info.dtype])
                begin, end = info.data_offsets
                handle.seek(data_start + begin)
                if end > begin and handle.readinto(memoryview(array.reshape(-1)).cast("B")) != end - begin:
                    raise ValueError(f"safetensors file {os.fspath(path)!r}: short read for tensor {name!r}")
                tensors[name] = array
    if bf16_as == "float32":
        for name, info in infos.items():
            if info.dtype == "BF16":
                tensors[name] = bf16_bits_to_float32(np.asarray(tensors[name]))
    return tensors, metadata
