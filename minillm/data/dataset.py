"""A tokenized dataset on disk: train/val token shards plus ``meta.json``.

Directory layout written by ``prepare_dataset``::

    out_dir/
      train_000000.bin, train_000001.bin, ...   token shards (minillm.data.shards format)
      val_000000.bin, ...
      meta.json                                  written last: a folder without it is incomplete

``meta.json`` holds ``format``/``version``, ``vocab_size``, ``dtype``, ``eot_token_id``,
``tokenizer_type`` and ``tokenizer`` (the tokenizer's ``to_dict()``), ``val_fraction``,
``shard_tokens`` and, per split, ``shards`` (file names in order), ``tokens``, ``bytes`` (UTF-8
bytes of the text that produced them, end-of-text tokens excluded), ``documents`` and
``eot_tokens``, and ``manifest``: one ``{"name", "tokens", "sha256"}`` entry per shard (the SHA-256
of the whole shard file, header included, as ``sha256sum`` prints it). ``TokenDataset`` checks
every shard's token count against the manifest and, unless ``verify_checksums=False``, its
SHA-256 (about 1 GB/s: a second per gigabyte of shards). Folders written before the manifest
existed have none and are read as before. Bytes make bits per byte computable, a tokenizer-independent loss:
``bpb = (mean nats per token * scored tokens) / (ln 2 * bytes)``.

Train/val split: the validation set is the *tail* of the cleaned text stream, so it is never
empty, even for a one-document corpus. The split point is at ``(1 - val_fraction)`` of all
characters; the document containing it is cut at the first line break at or after that point
(or the last one before it, or exactly there if it has no line break), its head going to train
and its tail to val. Documents before it are train, documents after it are val. Inside a split,
documents are joined with ``eot_token_id`` when one is given.
"""
from __future__ import annotations

import json
import math
import os
import re
from typing import Sequence

import numpy as np
from tqdm import tqdm

from minillm.data.shards import ConcatenatedTokens, file_sha256, read_shard, read_shard_header, token_dtype, write_shard
from minillm.fileio import atomic_write_text, refuse_to_overwrite

META_FILE = "meta.json"
DATASET_FORMAT = "minillm-token-dataset"
DATASET_VERSION = 1
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 1 << 24
_SHARD_NAME = re.compile(r"^(train|val)_\d{6}\.bin$")


def bits_per_byte(mean_nats_per_token: float, num_tokens: int, num_bytes: int) -> float:
    """Bits per UTF-8 byte: total nats over ``num_tokens`` scored tokens / (ln 2 * ``num_bytes``)."""
    if num_bytes <= 0:
        raise ValueError(f"bits_per_byte: num_bytes must be > 0, got {num_bytes}")
    return mean_nats_per_token * num_tokens / (math.log(2) * num_bytes)


def split_train_val(docs: Sequence[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Split documents into (train docs, val docs) at the text tail (rule in the module docstring)."""
    total = sum(len(doc) for doc in docs)
    if total < 2:
        raise ValueError(f"split_train_val: the corpus has {total} characters; need at least 2 to split")
    target = split_target(total, val_fraction)
    consumed = 0
    for index, doc in enumerate(docs):
        if consumed + len(doc) <= target:
            consumed += len(doc)
            continue
        head, tail = cut_document(doc, target - consumed)
        train = list(docs[:index]) + ([head] if head else [])
        val = [tail] + list(docs[index + 1:])
        return train, val
    raise AssertionError("unreachable: target < total")


def split_target(total_chars: int, val_fraction: float) -> int:
    """Characters of the train split: ``(1 - val_fraction) * total``, rounded, kept in [1, total - 1]."""
    return min(max(round((1.0 - val_fraction) * total_chars), 1), total_chars - 1)


def cut_document(doc: str, cut: int) -> tuple[str, str]:
    """(head, tail) of the document holding the split point, ``0 <= cut < len(doc)`` characters in:
    moved to the first line break at or after ``cut`` (when text follows it), else the last one
    before it; the tail is never empty."""
    if cut > 0:
        after = doc.find("\n", cut)
        before = doc.rfind("\n", 0, cut)
        if after != -1 and doc[after + 1:].strip():
            cut = after + 1
        elif before > 0:
            cut = before + 1
    return doc[:cut], doc[cut:]


def _check_tokenizer(tokenizer) -> None:
    for attribute in ("encode_ordinary", "vocab_size", "special_tokens", "to_dict"):
        if not hasattr(tokenizer, attribute):
            raise TypeError(f"prepare_dataset: tokenizer {type(tokenizer).__name__} has no {attribute!r}; expected "
                            f".encode_ordinary(str) -> list[int], .vocab_size, .special_tokens, .to_dict()")


class _SplitWriter:
    """Accumulates one split's tokens and writes full shards of ``shard_tokens`` as it goes."""

    def __init__(self, out_dir: str, split: str, vocab_size: int, shard_tokens: int):
        self.out_dir, self.split, self.vocab_size, self.shard_tokens = out_dir, split, vocab_size, shard_tokens
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.shards: list[str] = []
        self.manifest: list[dict] = []
        self.tokens = 0

    def append(self, ids: np.ndarray) -> None:
        self.pending.append(ids)
        self.pending_tokens += ids.size
        while self.pending_tokens >= self.shard_tokens:
            stream = np.concatenate(self.pending)
            self._write(stream[:self.shard_tokens])
            self.pending, self.pending_tokens = [stream[self.shard_tokens:]], stream.size - self.shard_tokens

    def _write(self, ids: np.ndarray) -> None:
        name = f"{self.split}_{len(self.shards):06d}.bin"
        path = os.path.join(self.out_dir, name)
        count = write_shard(path, ids, self.vocab_size)
        self.tokens += count
        self.shards.append(name)
        self.manifest.append({"name": name, "tokens": count, "sha256": file_sha256(path)})

    def close(self) -> None:
        if self.pending_tokens:
            self._write(np.concatenate(self.pending))
        self.pending, self.pending_tokens = [], 0


def claim_dataset_folder(out_dir, caller: str, overwrite: bool, how_to_overwrite: str) -> str:
    """Make ``out_dir`` ready for a new dataset and return it as a str: created if missing; refused
    (``refuse_to_overwrite``, naming ``caller``) when it already holds a dataset's ``meta.json`` or
    shards, unless ``overwrite``; an old ``meta.json`` removed first, so that a write cut short
    leaves no ``meta.json`` describing shards that are not there."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    existing = [name for name in os.listdir(out_dir) if name == META_FILE or _SHARD_NAME.match(name)]
    refuse_to_overwrite(f"{caller}: {out_dir!r}", "a dataset", sorted(existing), overwrite, how_to_overwrite)
    if os.path.exists(os.path.join(out_dir, META_FILE)):
        os.remove(os.path.join(out_dir, META_FILE))
    return out_dir


def prepare_dataset(docs: Sequence[str], tokenizer, out_dir: str | os.PathLike, val_fraction: float = 0.1,
                    shard_tokens: int = DEFAULT_SHARD_TOKENS, eot_token_id: int | None = None,
                    overwrite: bool = False, progress: bool = False) -> dict:
    """Tokenize ``docs`` with ``tokenizer.encode_ordinary``, split, write shards + meta.json; return the meta.

    ``overwrite=False`` refuses a folder that already holds a dataset; with ``overwrite=True`` the
    old meta.json is removed first (so a crash midway never pairs old meta with new shards) and
    stale ``train_*.bin``/``val_*.bin`` files are deleted after the new meta.json is written.
    """
    if isinstance(docs, str) or not isinstance(docs, Sequence):
        raise TypeError(f"prepare_dataset: docs must be a list of str, got {type(docs).__name__}")
    for index, doc in enumerate(docs):
        if not isinstance(doc, str):
            raise TypeError(f"prepare_dataset: document {index} must be str, got {type(doc).__name__}")
    if not docs:
        raise ValueError("prepare_dataset: docs is empty; expected at least one document")
    _check_tokenizer(tokenizer)
    vocab_size = tokenizer.vocab_size
    dtype = token_dtype(vocab_size)
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"prepare_dataset: val_fraction must be a float in (0, 1), got {val_fraction!r}")
    if type(shard_tokens) is not int or shard_tokens < 1:
        raise ValueError(f"prepare_dataset: shard_tokens must be an int >= 1, got {shard_tokens!r}")
    if eot_token_id is not None:
        if type(eot_token_id) is not int or not 0 <= eot_token_id < vocab_size:
            raise ValueError(f"prepare_dataset: eot_token_id must be an int in [0, {vocab_size}), got {eot_token_id!r}")
        if eot_token_id not in dict(tokenizer.special_tokens).values():
            raise ValueError(f"prepare_dataset: eot_token_id {eot_token_id} is not one of the tokenizer's special "
                             f"tokens {dict(tokenizer.special_tokens)}")
    out_dir = claim_dataset_folder(out_dir, "prepare_dataset", overwrite,
                                   "pass overwrite=True (CLI: --overwrite) or choose another folder")
    try:
        tokenizer_config = tokenizer.to_dict()
        json.dumps(tokenizer_config)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"prepare_dataset: tokenizer.to_dict() must return JSON-serialisable data: {exc}") from None

    splits = dict(zip(SPLITS, split_train_val(docs, val_fraction)))
    meta_splits = {}
    for split, split_docs in splits.items():
        writer = _SplitWriter(out_dir, split, vocab_size, shard_tokens)
        eot = np.array([eot_token_id], dtype=np.int64) if eot_token_id is not None else None
        num_bytes = 0
        iterator = split_docs
        if progress:
            iterator = tqdm(split_docs, desc=f"tokenize {split}", unit="doc")
        for index, doc in enumerate(iterator):
            if eot is not None and index > 0:
                writer.append(eot)
            writer.append(np.asarray(tokenizer.encode_ordinary(doc), dtype=np.int64))
            num_bytes += len(doc.encode("utf-8"))
        writer.close()
        if writer.tokens == 0:
            raise ValueError(f"prepare_dataset: the {split} split produced no tokens")
        meta_splits[split] = {"shards": writer.shards, "tokens": writer.tokens, "bytes": num_bytes,
                              "documents": len(split_docs),
                              "eot_tokens": max(len(split_docs) - 1, 0) if eot is not None else 0,
                              "manifest": writer.manifest}

    return write_dataset_meta(out_dir, tokenizer, tokenizer_config, vocab_size, dtype, eot_token_id, val_fraction,
                              shard_tokens, meta_splits)


def write_dataset_meta(out_dir: str, tokenizer, tokenizer_config, vocab_size: int, dtype, eot_token_id,
                       val_fraction: float, shard_tokens: int, splits: dict) -> dict:
    """Write ``meta.json`` last (its presence marks a complete dataset) and remove shard files of
    an earlier prepare that this one did not write; returns the metadata."""
    meta = {
        "format": DATASET_FORMAT, "version": DATASET_VERSION,
        "vocab_size": int(vocab_size), "dtype": dtype.name, "eot_token_id": eot_token_id,
        "tokenizer_type": type(tokenizer).__name__, "tokenizer": tokenizer_config,
        "val_fraction": float(val_fraction), "shard_tokens": shard_tokens, "splits": splits,
    }
    atomic_write_text(os.path.join(out_dir, META_FILE), json.dumps(meta, indent=2) + "\n")
    written = {name for split in splits.values() for name in split["shards"]}
    for name in os.listdir(out_dir):
        if _SHARD_NAME.match(name) and name not in written:
            os.remove(os.path.join(out_dir, name))
    return meta


def _check_manifest_entry(shard_path: str, num_tokens: int, entry: dict, verify_checksum: bool) -> None:
    if entry.get("tokens") != num_tokens:
        raise ValueError(f"TokenDataset: shard {shard_path!r} holds {num_tokens} tokens, the manifest says "
                         f"{entry.get('tokens')!r}; the shard or meta.json is corrupt")
    if verify_checksum and "sha256" in entry:
        actual = file_sha256(shard_path)
        if actual != entry["sha256"]:
            raise ValueError(f"TokenDataset: shard {shard_path!r} has SHA-256 {actual}, the manifest says "
                             f"{entry['sha256']!r}: the file changed or is corrupt; prepare the dataset again")


class TokenDataset:
    """Read side of a prepared dataset folder: per-split token sequences backed by memmaps.

    ``tokens(split)`` returns the single shard's memmap when the split has one shard, else a
    ``ConcatenatedTokens`` over all of them; both support ``len()`` and contiguous slicing, which
    is all the batch loaders need. Every shard is checked against meta.json when opened: its
    header, its token count and, where the manifest records one and ``verify_checksums`` is on,
    its SHA-256.
    """

    def __init__(self, directory: str | os.PathLike, verify_checksums: bool = True):
        self.directory = os.fspath(directory)
        meta_path = os.path.join(self.directory, META_FILE)
        if not os.path.isfile(meta_path):
            raise FileNotFoundError(f"TokenDataset: {meta_path!r} not found; create the dataset with "
                                    f"`minillm prepare --output {self.directory}`")
        try:
            with open(meta_path, encoding="utf-8") as handle:
                meta = json.load(handle)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"TokenDataset: {meta_path!r} is not valid UTF-8 JSON: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != DATASET_FORMAT:
            raise ValueError(f"TokenDataset: {meta_path!r} is not a {DATASET_FORMAT} meta file")
        if meta.get("version") != DATASET_VERSION:
            raise ValueError(f"TokenDataset: {meta_path!r} has version {meta.get('version')!r}, "
                             f"this code reads version {DATASET_VERSION}")
        missing = [key for key in ("vocab_size", "splits", "tokenizer") if key not in meta]
        if missing or not isinstance(meta.get("vocab_size"), int) or not isinstance(meta.get("splits"), dict):
            raise ValueError(f"TokenDataset: {meta_path!r} lacks keys {missing} or has a non-int vocab_size / "
                             f"non-object splits")
        self.meta = meta
        self.vocab_size = meta["vocab_size"]
        self.eot_token_id = meta.get("eot_token_id")
        self._tokens = {}
        for split in SPLITS:
            info = meta.get("splits", {}).get(split)
            if not isinstance(info, dict) or not isinstance(info.get("shards"), list):
                raise ValueError(f"TokenDataset: {meta_path!r} lacks a valid entry for split {split!r}")
            manifest = info.get("manifest")
            if manifest is not None and (not isinstance(manifest, list) or [
                    entry.get("name") if isinstance(entry, dict) else None for entry in manifest] != info["shards"]):
                raise ValueError(f"TokenDataset: {meta_path!r}: the {split!r} manifest does not list the same shards "
                                 f"as 'shards' ({info['shards'][:4]}...); the file is corrupt")
            parts = []
            for index, name in enumerate(info["shards"]):
                shard_path = os.path.join(self.directory, name)
                header = read_shard_header(shard_path)
                if header.vocab_size != self.vocab_size:
                    raise ValueError(f"TokenDataset: shard {shard_path!r} has vocab size {header.vocab_size}, "
                                     f"meta.json says {self.vocab_size}")
                if manifest is not None:
                    _check_manifest_entry(shard_path, header.num_tokens, manifest[index], verify_checksums)
                parts.append(read_shard(shard_path))
            total = sum(part.size for part in parts)
            if total != info.get("tokens"):
                raise ValueError(f"TokenDataset: split {split!r} shards hold {total} tokens, meta.json says "
                                 f"{info.get('tokens')!r}")
            self._tokens[split] = parts[0] if len(parts) == 1 else ConcatenatedTokens(parts)

    def _check_split(self, split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"TokenDataset: split must be one of {SPLITS}, got {split!r}")
        return split

    def tokens(self, split: str):
        """The split's token sequence (memmap or ConcatenatedTokens), read-only."""
        return self._tokens[self._check_split(split)]

    def num_tokens(self, split: str) -> int:
        return int(self.meta["splits"][self._check_split(split)]["tokens"])

    def num_bytes(self, split: str) -> int:
        return int(self.meta["splits"][self._check_split(split)]["bytes"])

    @property
    def tokenizer_config(self) -> dict:
        return self.meta["tokenizer"]

    def bits_per_byte(self, split: str, mean_nats_per_token: float) -> float:
        """bpb for a mean loss over the whole split (all tokens but the first are scored)."""
        return bits_per_byte(mean_nats_per_token, self.num_tokens(split) - 1, self.num_bytes(split))

    def __repr__(self) -> str:
        return (f"TokenDataset({self.directory!r}, vocab_size={self.vocab_size}, "
                f"train={self.num_tokens('train'):,} tokens, val={self.num_tokens('val'):,} tokens)")

