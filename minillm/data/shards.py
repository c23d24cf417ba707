"""Token shards: one binary file per run of token ids, read back as read-only memory maps.

Shard layout (all integers little-endian), a fixed 32-byte header then the tokens::

    offset  size  field
         0     8  magic           b"MINILLM\\0"
         8     4  version         uint32, currently 1
        12     2  dtype code      uint16: 2 = uint16 tokens, 4 = uint32 tokens (the item size)
        14     2  reserved        uint16, 0
        16     8  token count     uint64
        24     8  vocab size      uint64 (every id is < vocab size)
        32   ...  tokens          count * item size bytes, nothing after them

Ids are stored as uint16 when ``vocab_size <= 65536`` (ids 0..65535), else as uint32; a vocab
larger than 2^32 cannot be stored and raises ``ValueError``. ``read_shard`` checks the magic,
the version, the dtype code and that the file size is exactly ``32 + count * item size``, then
returns ``np.memmap(mode="r")``: the OS pages tokens in on demand, so a shard of any size costs
no resident memory until it is read.

``ShardWriter`` writes one shard incrementally (tokens appended in pieces, the header filled in
last) through :func:`minillm.fileio.atomic_open`: until ``close`` the bytes live in a temporary
``NAME.XXXXXXXX.tmp`` file, so an interrupted writer never leaves a file under the shard's name.
``file_sha256`` is the checksum a dataset's manifest records for every shard: the SHA-256 of the
whole file, header included (what ``sha256sum`` prints).
"""
from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass

import numpy as np

from minillm.fileio import atomic_open

SHARD_MAGIC = b"MINILLM\0"
SHARD_VERSION = 1
SHARD_HEADER_BYTES = 32
_HEADER_STRUCT = struct.Struct("<8sIHHQQ")   # magic, version, dtype code, reserved, count, vocab size
_DTYPES = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
assert _HEADER_STRUCT.size == SHARD_HEADER_BYTES


@dataclass(frozen=True)
class ShardHeader:
    version: int
    dtype: np.dtype
    num_tokens: int
    vocab_size: int


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest shard dtype that holds ids 0..vocab_size-1: uint16 up to 65536, else uint32."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if vocab_size <= 1 << 16:
        return _DTYPES[2]
    if vocab_size <= 1 << 32:
        return _DTYPES[4]
    raise ValueError(f"vocab_size {vocab_size} exceeds 2^32 = {1 << 32}, the largest a uint32 shard can hold")


def write_shard(path: str | os.PathLike, ids, vocab_size: int) -> int:
    """Write token ``ids`` (1-D integers in [0, vocab_size)) as one shard, atomically; return the count."""
    dtype = token_dtype(vocab_size)
    ids = _check_ids(ids, vocab_size, path)
    header = _HEADER_STRUCT.pack(SHARD_MAGIC, SHARD_VERSION, dtype.itemsize, 0, ids.size, int(vocab_size))
    data = np.ascontiguousarray(ids, dtype=dtype)
    with atomic_open(path, "wb") as handle:
        handle.write(header)
        if data.size:
            handle.write(memoryview(data).cast("B"))
    return int(ids.size)


def _check_ids(ids, vocab_size: int, path) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"write_shard: ids must be 1-D, got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise TypeError(f"write_shard: ids must be integers, got dtype {ids.dtype}")
    if ids.size:
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"write_shard: token id {bad} is out of range [0, {vocab_size}) for {os.fspath(path)!r}")
    return ids


class ShardWriter:
    """One shard written in pieces: ``append(ids)`` any number of times, then ``close()``.

    The tokens go straight to a temporary file next to ``path`` (memory: one piece at a time);
    ``close`` writes the header with the final count, fsyncs and renames the file onto ``path``
    (see :func:`minillm.fileio.atomic_open`), and returns ``(token count, sha256 hex of the file)``.
    ``abort`` (or an exception inside a ``with`` block) removes the temporary file. The bytes are
    exactly those ``write_shard`` writes for the concatenated ids.
    """

    def __init__(self, path: str | os.PathLike, vocab_size: int):
        self.path = os.fspath(path)
        self.vocab_size = int(vocab_size)
        self.dtype = token_dtype(vocab_size)
        self.count = 0
        self._context = atomic_open(self.path, "w+b")
        self._handle = self._context.__enter__()
        self._handle.write(b"\0" * SHARD_HEADER_BYTES)            # the header is filled in by close()

    def append(self, ids) -> None:
        ids = _check_ids(ids, self.vocab_size, self.path)
        if ids.size:
            self._handle.write(memoryview(np.ascontiguousarray(ids, dtype=self.dtype)).cast("B"))
            self.count += int(ids.size)

    def close(self) -> tuple[int, str]:
        handle = self._handle
        handle.seek(0)
        handle.write(_HEADER_STRUCT.pack(SHARD_MAGIC, SHARD_VERSION, self.dtype.itemsize, 0, self.count,
                                         self.vocab_size))
        handle.flush()
        handle.seek(0)
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 22), b""):   # the page cache serves this re-read
            digest.update(block)
        self._context.__exit__(None, None, None)               # fsync + rename onto self.path
        return self.count, digest.hexdigest()

    def abort(self) -> None:
        error = RuntimeError("shard writing aborted")
        try:
            self._context.__exit__(RuntimeError, error, None)  # removes the temporary file
        except RuntimeError:
            pass

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a whole file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with open(os.fspath(path), "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def read_shard_header(path: str | os.PathLike) -> ShardHeader:
    """Read and check a shard's header and size; ``ValueError`` naming the file when corrupt."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"token shard not found: {path!r}")
    file_size = os.path.getsize(path)

    def fail(message: str):
        raise ValueError(f"token shard {path!r} is corrupt or truncated: {message}")

    if file_size < SHARD_HEADER_BYTES:
        fail(f"{file_size} bytes, shorter than the {SHARD_HEADER_BYTES}-byte header")
    with open(path, "rb") as handle:
        magic, version, code, reserved, count, vocab_size = _HEADER_STRUCT.unpack(handle.read(SHARD_HEADER_BYTES))
    if magic != SHARD_MAGIC:
        fail(f"magic {magic!r} is not {SHARD_MAGIC!r} (not a minillm token shard)")
    if version != SHARD_VERSION:
        fail(f"format version {version} is not supported (this code reads version {SHARD_VERSION})")
    if code not in _DTYPES:
        fail(f"dtype code {code} is not 2 (uint16) or 4 (uint32)")
    if not 1 <= vocab_size <= 1 << 32 or token_dtype(vocab_size).itemsize > code:
        fail(f"vocab size {vocab_size} does not fit dtype code {code}")
    expected = SHARD_HEADER_BYTES + count * code
    if file_size != expected:
        fail(f"header says {count} tokens of {code} bytes = {expected} bytes in all, the file has {file_size}")
    return ShardHeader(version=version, dtype=_DTYPES[code], num_tokens=count, vocab_size=vocab_size)


def read_shard(path: str | os.PathLike, check_ids: bool = False) -> np.ndarray:
    """Return the shard's tokens as a read-only 1-D memory map (uint16 or uint32).

    ``check_ids=True`` also scans every id (in 16 M-token chunks) and raises if one is
    ``>= vocab size``; off by default because it reads the whole file.
    """
    header = read_shard_header(path)
    if header.num_tokens == 0:
        empty = np.zeros(0, dtype=header.dtype)
        empty.flags.writeable = False
        return empty
    tokens = np.memmap(os.fspath(path), dtype=header.dtype, mode="r", offset=SHARD_HEADER_BYTES,
                       shape=(header.num_tokens,))
    if check_ids:
        chunk = 1 << 24
        for start in range(0, header.num_tokens, chunk):
            high = int(tokens[start:start + chunk].max())
            if high >= header.vocab_size:
                raise ValueError(f"token shard {os.fspath(path)!r} is corrupt: token id {high} near position "
                                 f"{start} is >= vocab size {header.vocab_size}")
    return tokens


class ConcatenatedTokens:
    """Several 1-D token arrays (shard memmaps) seen as one sequence, without copying them.

    Supports ``len()``, integer indexing and contiguous slices (step 1): a slice that crosses
    shard boundaries is gathered into a new array; one inside a shard is a view of the memmap.
    ``to_numpy()`` materialises everything (a copy, use only for small splits).
    """

    def __init__(self, parts: list[np.ndarray]):
        if not isinstance(parts, list) or not all(isinstance(p, np.ndarray) and p.ndim == 1 for p in parts):
            raise TypeError("ConcatenatedTokens: parts must be a list of 1-D numpy arrays")
        self.parts = [p for p in parts if p.size]
        self.dtype = self.parts[0].dtype if self.parts else np.dtype("<u2")
        self.ends = np.cumsum([p.size for p in self.parts], dtype=np.int64)   # (n_parts,)
        self.ndim = 1

    def __len__(self) -> int:
        return int(self.ends[-1]) if self.parts else 0

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, (int, np.integer)):
            index = int(key) + n if key < 0 else int(key)
            if not 0 <= index < n:
                raise IndexError(f"token index {key} out of range for {n} tokens")
            part = int(np.searchsorted(self.ends, index, side="right"))
            start_of_part = int(self.ends[part - 1]) if part else 0
            return self.parts[part][index - start_of_part]
        if not isinstance(key, slice):
            raise TypeError(f"ConcatenatedTokens indices must be int or slice, got {type(key).__name__}")
        start, stop, step = key.indices(n)
        if step != 1:
            raise ValueError(f"ConcatenatedTokens supports only step-1 slices, got step {step}")
        if stop <= start:
            return np.zeros(0, dtype=self.dtype)
        first = int(np.searchsorted(self.ends, start, side="right"))
        last = int(np.searchsorted(self.ends, stop - 1, side="right"))
        pieces = []
        for part in range(first, last + 1):
            part_start = int(self.ends[part - 1]) if part else 0
            pieces.append(self.parts[part][max(start, part_start) - part_start:min(stop, int(self.ends[part])) - part_start])
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)

    def to_numpy(self) -> np.ndarray:
        return self[0:len(self)]
