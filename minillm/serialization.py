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

Hostile and damaged files are refused in bounded memory, with a ``ValueError`` naming the file:

- the header may be at most ``MAX_HEADER_BYTES`` (16 MiB; the reference caps it at 100 MB). A
  legitimate header is small (~100 bytes per tensor, ~90 more with the checksum, plus the
  metadata: a minillm checkpoint's biggest field, its tokenizer, takes ~25 bytes per merge, so
  ~6 MB for a 256k vocabulary), while Python objects parsed from hostile JSON can take ~30 bytes
  per header byte (measured: a 16 MiB header of 1.9 million tiny metadata strings, ~470 MB; at
  100 MB that would be ~3 GB). The length is checked before anything else is read;
- the header's bracket structure is measured before ``json.loads`` (one object of objects, lists
  only inside tensor entries: 3 levels at most), without recursion and in NumPy chunks, so a
  deeply nested header never recurses (100,000 nested lists: refused in milliseconds); while
  parsing, only one member may be an object other than a tensor entry (``__metadata__``);
- every tensor's bytes are checked against the SHA-256 digest the writer stored (below).

Integrity: the writer stores each tensor's SHA-256 under the metadata key ``minillm.sha256``
(``{"name": "hex digest", ...}`` as a JSON string, so the file stays a plain safetensors file that
any reader loads), and the reader verifies them (in chunks, so a memory-mapped load stays
streaming), so a flipped bit is reported with the tensor's name instead of being loaded. The
checksum catches accidental damage (disk, copy, truncation that keeps the layout), not a deliberate
forgery: whoever edits a file can recompute the digests. Files without the key (written by other
tools, e.g. the reference library or Hugging Face) load without this check. The key is consumed by
the reader: ``load_safetensors`` returns the caller's metadata without it.

bfloat16: NumPy has no bfloat16 dtype, so a BF16 tensor travels as a ``uint16`` array holding the
raw bfloat16 bit patterns (the upper 16 bits of the float32 with the same sign/exponent). To write
one, pass its name in ``bf16_names``; when loading, ``bf16_as="uint16"`` (default) returns those
raw bits and ``bf16_as="float32"`` widens them exactly to float32. ``read_safetensors_header``
tells which tensors are BF16. ``float32_to_bf16_bits`` / ``bf16_bits_to_float32`` convert.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from minillm.amp import formats
from minillm.fileio import atomic_open

HEADER_LENGTH_BYTES = 8
HEADER_ALIGNMENT = 8
METADATA_KEY = "__metadata__"
MAX_HEADER_BYTES = 16 * 2 ** 20      # see the module docstring for why 16 MiB (the reference: 100 MB)
CHECKSUM_KEY = "minillm.sha256"      # metadata key holding {"tensor name": sha256 hex digest}
CHECKSUM_CHUNK_BYTES = 8 * 2 ** 20   # a memory-mapped tensor is hashed this many bytes at a time
MAX_DIMENSIONS = 64                  # NumPy's limit on an array's number of dimensions

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
    """One header entry: dtype name, shape, [begin, end) byte offsets into the data buffer, and the
    SHA-256 hex digest of its bytes when the file carries checksums."""

    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]
    sha256: str | None = None      # the digest the writer stored, None for files without checksums


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
        if key == CHECKSUM_KEY:
            raise ValueError(f"save_safetensors: metadata key {CHECKSUM_KEY!r} is reserved for the tensors' "
                             "checksums, which the writer computes itself (checksum=True)")
    return dict(metadata)


def _little_endian_contiguous(array: np.ndarray) -> np.ndarray:
    """The array as C-contiguous little-endian data (copies only when needed)."""
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array)


def _tensor_sha256(array: np.ndarray) -> str:
    """SHA-256 hex digest of the bytes the writer stores for ``array`` (C order, little-endian)."""
    data = _little_endian_contiguous(array)
    return hashlib.sha256(memoryview(data.reshape(-1)).cast("B") if data.size else b"").hexdigest()


def build_safetensors_header(
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
    bf16_names: Iterable[str] = (),
    *,
    checksum: bool = True,
) -> tuple[bytes, list[str]]:
    """Return (the 8-byte length + padded JSON header, tensor names in data order).

    ``checksum``: add the tensors' SHA-256 digests under the metadata key ``minillm.sha256``
    (after the caller's keys). Exposed so that tests and tools can inspect the exact header bytes
    without writing a file.
    """
    bf16_set = set(bf16_names)
    dtype_names = _validate_tensors(tensors, bf16_set)
    meta = _validate_metadata(metadata)
    if not isinstance(checksum, bool):
        raise TypeError(f"save_safetensors: checksum must be a bool, got {checksum!r}")
    order = sorted(dtype_names, key=lambda n: (-_DTYPE_RANK[dtype_names[n]], n))
    if checksum:
        digests = {name: _tensor_sha256(tensors[name]) for name in order}
        meta = {**(meta or {}), CHECKSUM_KEY: json.dumps(digests, separators=(",", ":"), ensure_ascii=False)}
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
    checksum: bool = True,
) -> None:
    """Write ``tensors`` (name -> host numpy array) and optional str->str ``metadata`` to ``path``.

    The file is written atomically: a temporary file beside ``path`` is filled, fsynced and renamed
    over it, so an error at any point leaves any previous file at ``path`` byte-for-byte intact.
    ``bf16_names``: names of uint16 arrays that hold raw bfloat16 bits, stored with dtype BF16.
    ``checksum``: store each tensor's SHA-256 in the metadata (key ``minillm.sha256``), which the
    reader verifies; False writes exactly what the reference library writes for the same input.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"save_safetensors: path must be str or os.PathLike, got {type(path).__name__}")
    header, order = build_safetensors_header(tensors, metadata, bf16_names, checksum=checksum)
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
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


# JSON read without recursion risk. json.loads's C parser recurses once per nesting level: 100,000
# nested lists raise RecursionError (after costing memory and time). So the brackets that lie
# outside strings are measured first, without recursion and in bounded memory (NumPy over 256 KiB
# chunks of the bytes; regular-expression substitutions would build one Python string per match),
# and json.loads only sees text whose depth is known to be small.
_SCAN_CHUNK_BYTES = 2 ** 18
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def _json_brackets(data: bytes) -> bytes:
    """The brackets ``[]{}`` of UTF-8 JSON ``data`` that lie outside strings, in order.

    Escapes first: removing ``\\`` pairs and then ``\"`` left to right leaves every remaining quote
    a real string delimiter (UTF-8 multi-byte characters never contain ASCII bytes), so the quotes
    seen so far, counted modulo 2, say whether a byte is inside a string. Raises ValueError for an
    unterminated string. Text that is not JSON may give any brackets; json.loads rejects it later.
    """
    data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    pieces, inside = [], False
    for start in range(0, len(data), _SCAN_CHUNK_BYTES):
        chunk = np.frombuffer(data, np.uint8, count=min(_SCAN_CHUNK_BYTES, len(data) - start), offset=start)
        in_string = np.logical_xor.accumulate(chunk == ord('"'))     # True from an opening quote on
        if inside:
            np.logical_not(in_string, out=in_string)
        inside = bool(in_string[-1])
        brackets = (chunk == ord("[")) | (chunk == ord("]")) | (chunk == ord("{")) | (chunk == ord("}"))
        pieces.append(chunk[brackets & ~in_string].tobytes())
    if inside:
        raise ValueError("a string is not terminated")
    return b"".join(pieces)


def _bracket_problem(brackets: bytes, max_depth: int, header: bool = False) -> str | None:
    """Why ``brackets`` (from :func:`_json_brackets`) are not a balanced nesting at most
    ``max_depth`` deep, or None. ``header``: also the safetensors schema's shape, objects at levels
    1 and 2 only and lists at level 3 only (inside a tensor entry). Whether each ``]``/``}``
    matches its opener is left to json.loads, which meets no deeper nesting than measured here."""
    depth = 0
    for start in range(0, len(brackets), _SCAN_CHUNK_BYTES):
        chunk = np.frombuffer(brackets, np.uint8, count=min(_SCAN_CHUNK_BYTES, len(brackets) - start), offset=start)
        opens = (chunk == ord("[")) | (chunk == ord("{"))
        levels = np.cumsum(opens.view(np.int8) * np.int8(2) - np.int8(1), dtype=np.int32)
        levels += depth                                  # the level after each bracket
        if levels.max() > max_depth:
            return f"its brackets nest deeper than {max_depth} levels"
        if levels.min() < 0:
            return "its brackets do not balance"
        if header:
            if (levels[chunk == ord("{")] > 2).any():
                return "an object lies inside a tensor entry or a list"
            if (levels[chunk == ord("[")] != 3).any():
                return "a list lies outside a tensor entry"
        depth = int(levels[-1])
    return "its brackets do not balance" if depth else None


class JSONTooDeepError(ValueError):
    """What :func:`loads_json_bounded` raises for text nested deeper than it allows."""


def loads_json_bounded(text: str | bytes, max_depth: int, object_pairs_hook=None):
    """``json.loads(text)``, refusing text whose brackets nest deeper than ``max_depth`` levels.

    The depth is measured first, without recursion and in memory bounded by a few copies of the
    text (see :func:`_json_brackets`), so hostile input such as 100,000 nested lists costs one pass
    over it, never a RecursionError. Every failure is a ``ValueError`` (``json.JSONDecodeError`` is
    one) saying what is wrong; text nested too deeply raises the subclass ``JSONTooDeepError``.
    """
    if isinstance(text, str):
        data = text.encode("utf-8", "surrogatepass")
    elif isinstance(text, bytes):
        data = text
    else:
        raise ValueError(f"expected a JSON string, got {type(text).__name__}")
    problem = _bracket_problem(_json_brackets(data), max_depth)
    del data
    if problem:
        raise (JSONTooDeepError if "deeper" in problem else ValueError)(problem)
    try:
        return json.loads(text, object_pairs_hook=object_pairs_hook)
    except RecursionError:        # cannot happen after the check above; never let one escape
        raise JSONTooDeepError(f"it nests deeper than {max_depth} levels") from None


def _header_object_hook():
    """An ``object_pairs_hook`` for the header that refuses, while parsing, objects the schema
    cannot hold: the inner objects (completed before the outer one) must be tensor entries, except
    one (``__metadata__``). A hostile header of many small objects (``{"a":{},"b":{},...}``: Python
    objects ~35 times the size of the text) then stops at its second object, not at the end."""
    others = 0

    def hook(pairs: list[tuple[str, object]]) -> dict[str, object]:
        nonlocal others
        result = _reject_duplicate_keys(pairs)
        if not any(isinstance(value, dict) for value in result.values()):          # an inner object
            if set(result) != {"dtype", "shape", "data_offsets"}:
                others += 1
                if others > 1:
                    raise ValueError("more than one member is an object other than a tensor entry "
                                     "(dtype, shape, data_offsets); only __metadata__ may be")
        return result

    return hook


def _parse_entry(name: str, entry: object, fail, sha256: str | None = None) -> TensorInfo:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        fail(f"tensor {name!r}: entry must be an object with exactly dtype, shape, data_offsets; got {entry!r:.200}")
    dtype = entry["dtype"]
    if dtype not in DTYPE_TO_NUMPY:
        fail(f"tensor {name!r}: unknown or unsupported dtype {dtype!r:.40}; supported: {sorted(DTYPE_TO_NUMPY)}")
    shape = entry["shape"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        fail(f"tensor {name!r}: shape must be a list of non-negative integers, got {shape!r:.200}")
    if len(shape) > MAX_DIMENSIONS:
        fail(f"tensor {name!r}: shape has {len(shape)} dimensions; at most {MAX_DIMENSIONS} are supported (NumPy's limit)")
    offsets = entry["data_offsets"]
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(type(o) is int and o >= 0 for o in offsets) or offsets[0] > offsets[1]):
        fail(f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r:.200}")
    expected = math.prod(shape) * DTYPE_TO_NUMPY[dtype].itemsize
    if offsets[1] - offsets[0] != expected:
        fail(f"tensor {name!r}: data_offsets {offsets} span {offsets[1] - offsets[0]} bytes but dtype {dtype} "
             f"and shape {shape!r:.200} need {expected}")
    return TensorInfo(dtype=dtype, shape=tuple(shape), data_offsets=(offsets[0], offsets[1]), sha256=sha256)


def _parse_checksums(text: str, tensor_names, fail) -> dict[str, str]:
    """The ``minillm.sha256`` metadata value -> {tensor name: hex digest}, checked."""
    expected = "a JSON object of tensor name -> 64-digit lowercase hex SHA-256 for every tensor"
    try:
        digests = loads_json_bounded(text, 1, object_pairs_hook=_reject_duplicate_keys)
    except ValueError as error:
        fail(f"metadata {CHECKSUM_KEY!r} is not {expected}: {error}")
    if not isinstance(digests, dict):
        fail(f"metadata {CHECKSUM_KEY!r} is not {expected}: it is a JSON {type(digests).__name__}")
    for name, digest in digests.items():
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            fail(f"metadata {CHECKSUM_KEY!r}: the digest of {name!r} is {digest!r:.80}, not 64 lowercase hex digits")
    names = set(tensor_names)
    unknown, lacking = sorted(set(digests) - names), sorted(names - set(digests))
    if unknown:
        fail(f"metadata {CHECKSUM_KEY!r} has digests for {len(unknown)} names that are not tensors, e.g. {unknown[0]!r:.80}")
    if lacking:
        fail(f"metadata {CHECKSUM_KEY!r} has no digest for {len(lacking)} tensors, e.g. {lacking[0]!r:.80}")
    return digests


def read_safetensors_header(
    path: str | os.PathLike, *, max_header_bytes: int = MAX_HEADER_BYTES,
) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Read and fully validate the header of ``path``.

    Returns (name -> TensorInfo, metadata, data_start) where ``data_start = 8 + N`` is the file
    offset of the data buffer. Raises ``ValueError`` naming the file for any inconsistency.
    ``max_header_bytes``: the largest header accepted (default ``MAX_HEADER_BYTES``, 16 MiB; see the
    module docstring); raise it only for files you trust. The checksums (``minillm.sha256``), when
    present, are checked for form here and returned in each ``TensorInfo.sha256``, not in the metadata.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_safetensors: no such file: {path!r}")
    if isinstance(max_header_bytes, bool) or not isinstance(max_header_bytes, int) or max_header_bytes < 2:
        raise ValueError(f"load_safetensors: max_header_bytes must be an int >= 2, got {max_header_bytes!r}")
    file_size = os.path.getsize(path)

    def fail(message: str):
        raise ValueError(f"safetensors file {path!r} is corrupt or truncated: {message}")

    if file_size < HEADER_LENGTH_BYTES:
        fail(f"file has {file_size} bytes, fewer than the {HEADER_LENGTH_BYTES}-byte header length")
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(HEADER_LENGTH_BYTES))
        if header_len > file_size - HEADER_LENGTH_BYTES:
            fail(f"header length {header_len} exceeds the {file_size - HEADER_LENGTH_BYTES} bytes after the length field")
        if header_len > max_header_bytes:      # refused before a byte of it is read
            raise ValueError(f"safetensors file {path!r}: its header is {header_len:,} bytes, more than the "
                             f"{max_header_bytes:,}-byte limit (minillm.serialization.MAX_HEADER_BYTES); a "
                             "header that big is hostile or broken (pass max_header_bytes= for a file you trust)")
        raw = handle.read(header_len)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"header is not valid UTF-8 (byte {exc.start} of the header)")
    if not text.startswith("{"):
        fail(f"header must start with '{{', starts with {text[:20]!r}")
    # The schema is flat: one object of objects (tensor entries, __metadata__), lists of numbers
    # only inside those. Check that shape on the brackets before json.loads builds anything.
    try:
        brackets = _json_brackets(raw)
    except ValueError as exc:
        fail(f"header is not valid JSON: {exc}")
    del raw
    problem = _bracket_problem(brackets, 3, header=True)
    if problem:
        fail("header is not shaped like a safetensors header (one JSON object of objects, lists of numbers "
             f"only inside those: 3 levels at most): {problem}; its brackets begin {brackets[:24].decode()!r}")
    del brackets
    try:
        header = json.loads(text, object_pairs_hook=_header_object_hook())
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError and our hook's errors
        fail(f"header is not valid JSON: {exc}")
    del text
    if not isinstance(header, dict):
        fail("header JSON is not an object")

    metadata = header.pop(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        fail(f"{METADATA_KEY} must be an object of str -> str, got {metadata!r:.200}")
    digests: dict[str, str] = {}
    if CHECKSUM_KEY in metadata:
        digests = _parse_checksums(metadata.pop(CHECKSUM_KEY), header, fail)
    infos = {name: _parse_entry(name, entry, fail, digests.get(name)) for name, entry in header.items()}

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


def _verify_sha256(path: str, name: str, expected: str, data: np.ndarray) -> None:
    """Hash ``data`` (1-D uint8: a tensor's bytes, in memory or memory-mapped) in chunks and compare."""
    digest = hashlib.sha256()
    for start in range(0, data.size, CHECKSUM_CHUNK_BYTES):
        digest.update(data[start:start + CHECKSUM_CHUNK_BYTES])
    actual = digest.hexdigest()
    if actual != expected:
        raise ValueError(f"safetensors file {path!r} is corrupt: tensor {name!r} does not match the SHA-256 "
                         f"checksum written with it (stored {expected[:12]}..., its bytes now give {actual[:12]}...): "
                         "the file was damaged after it was written (disk, copy or transfer)")


def _read_tensors(path: str, infos: dict[str, TensorInfo], data_start: int, *, mmap: bool, bf16_as: str,
                  verify: bool) -> dict[str, np.ndarray]:
    """The tensors of a file whose header ``read_safetensors_header`` returned (see load_safetensors)."""
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
                raw = np.zeros(0, dtype=np.uint8)
            else:
                raw = whole[data_start + begin:data_start + end]
                array = raw.view(dtype).reshape(info.shape)
            if verify and info.sha256 is not None:
                _verify_sha256(path, name, info.sha256, raw)
            tensors[name] = array
    else:
        with open(path, "rb") as handle:
            for name, info in infos.items():
                array = np.empty(info.shape, dtype=DTYPE_TO_NUMPY[info.dtype])
                raw = array.reshape(-1).view(np.uint8)
                begin, end = info.data_offsets
                handle.seek(data_start + begin)
                if end > begin and handle.readinto(memoryview(raw)) != end - begin:
                    raise ValueError(f"safetensors file {path!r}: short read for tensor {name!r}")
                if verify and info.sha256 is not None:
                    _verify_sha256(path, name, info.sha256, raw)
                tensors[name] = array
    if bf16_as == "float32":
        for name, info in infos.items():
            if info.dtype == "BF16":
                tensors[name] = bf16_bits_to_float32(np.asarray(tensors[name]))
    return tensors


def load_safetensors(
    path: str | os.PathLike,
    *,
    mmap: bool = False,
    bf16_as: str = "uint16",
    verify: bool = True,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Load a safetensors file; return (name -> numpy array, metadata).

    ``mmap=False``: each tensor is read into its own writable, aligned array.
    ``mmap=True``: tensors are read-only views of one ``np.memmap`` of the file, paged in lazily
    by the OS (nothing is read until used), handy for large checkpoints.
    ``bf16_as``: "uint16" returns BF16 tensors as raw uint16 bits; "float32" widens them (a copy).
    ``verify``: check each tensor against the SHA-256 the writer stored (files without checksums,
    e.g. from other tools, load unchecked). It reads every byte once, in chunks of
    ``CHECKSUM_CHUNK_BYTES`` (with ``mmap=True`` that pages the file through, without holding it);
    ``verify=False`` skips it (a lazy map of a file you trust).
    ``max_header_bytes``: see :func:`read_safetensors_header`.
    Arrays come back in native (little-endian) byte order with the header's dtype and shape; the
    metadata without the ``minillm.sha256`` checksums. Anything wrong is a ``ValueError`` naming
    the file (and the tensor, for a checksum mismatch).
    """
    if bf16_as not in ("uint16", "float32"):
        raise ValueError(f"load_safetensors: bf16_as must be 'uint16' or 'float32', got {bf16_as!r}")
    if not isinstance(mmap, bool):
        raise TypeError(f"load_safetensors: mmap must be a bool, got {mmap!r}")
    if not isinstance(verify, bool):
        raise TypeError(f"load_safetensors: verify must be a bool, got {verify!r}")
    infos, metadata, data_start = read_safetensors_header(path, max_header_bytes=max_header_bytes)
    return _read_tensors(os.fspath(path), infos, data_start, mmap=mmap, bf16_as=bf16_as, verify=verify), metadata


class SafetensorsMap:
    """One safetensors file, memory-mapped and read tensor by tensor, for loads that convert each
    tensor into its destination as they go (``GPT.from_pretrained``).

    The header is read and fully validated when the map is opened (:func:`read_safetensors_header`:
    the structural checks always apply). :meth:`tensor` returns a read-only view of one tensor's
    bytes in the mapped file (BF16 as raw ``uint16`` bits), checked against its stored SHA-256 the
    first time when the file carries checksums and ``verify`` is on (files from other tools carry
    none and load with the structural checks only). :meth:`release` tells the kernel this process no
    longer needs that tensor's pages, so the mapped file never sits in the process's resident
    memory beside the converted copy: a load that converts and releases tensor by tensor holds
    about one copy of the weights plus the tensor in flight.
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = True, max_header_bytes: int = MAX_HEADER_BYTES):
        import mmap as _mmap  # noqa: PLC0415  (only this reader maps files)

        if not isinstance(verify, bool):
            raise TypeError(f"SafetensorsMap: verify must be a bool, got {verify!r}")
        self.path = os.fspath(path)
        self.infos, self.metadata, self.data_start = read_safetensors_header(self.path, max_header_bytes=max_header_bytes)
        self.verify = verify
        self._verified: set[str] = set()
        self._map = None
        if os.path.getsize(self.path) > self.data_start:
            with open(self.path, "rb") as handle:
                self._map = _mmap.mmap(handle.fileno(), 0, access=_mmap.ACCESS_READ)
        self._page = _mmap.PAGESIZE
        self._dontneed = getattr(_mmap, "MADV_DONTNEED", None)

    def tensor(self, name: str) -> np.ndarray:
        """The tensor ``name`` as a read-only array viewing the mapped file (its header dtype;
        BF16 as uint16 bits)."""
        info = self.infos.get(name)
        if info is None:
            raise KeyError(f"safetensors file {self.path!r} has no tensor {name!r}")
        dtype = DTYPE_TO_NUMPY[info.dtype]
        begin, end = info.data_offsets
        if begin == end:
            return np.zeros(info.shape, dtype=dtype)
        raw = np.frombuffer(self._map, dtype=np.uint8, count=end - begin, offset=self.data_start + begin)
        if self.verify and info.sha256 is not None and name not in self._verified:
            _verify_sha256(self.path, name, info.sha256, raw)
            self._verified.add(name)
        return raw.view(dtype).reshape(info.shape)

    def release(self, name: str) -> None:
        """Drop the pages of tensor ``name`` from this process's memory (best effort: the data stays
        in the file and the page cache; a later :meth:`tensor` maps it in again)."""
        info = self.infos.get(name)
        if info is None or self._map is None or self._dontneed is None:
            return
        begin, end = (self.data_start + offset for offset in info.data_offsets)
        start = begin - begin % self._page
        if end > start:
            try:
                self._map.madvise(self._dontneed, start, end - start)
            except (OSError, ValueError):      # advice only: a kernel that refuses it costs memory, not correctness
                pass
