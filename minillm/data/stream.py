"""Streaming ``minillm prepare``: a corpus of any size in bounded memory, tokenized by worker processes.

Pipeline (``prepare_corpus``)::

    inputs (files, folders, globs; text or JSONL)          documents.iter_documents, one at a time
      -> batches of about BATCH_BYTES of UTF-8             main process
      -> clean, content key, MinHash signature + LSH band keys, token ids      worker processes
      -> in input order: exact / near-duplicate decision   dedup.StreamingDeduplicator (main)
      -> token stream, end-of-text between documents       shards.ShardWriter, shard by shard
      -> the train/val cut, manifest, meta.json written last

Determinism: batches are cut by the main process from the input alone, every worker computes a
pure function of its batch, and the results are consumed in submission order, so the shards and
meta.json are byte-identical for any ``workers`` (a test checks it). With ``workers=1`` everything
runs in this process.

Workers: a ``multiprocessing`` pool of the ``spawn`` context (``forkserver`` where the platform has
it), so no state is inherited by forking. Each worker loads the tokenizer itself from its JSON file
(the path is the only thing it is given about it). Batches travel as one UTF-8 ``bytes`` blob plus
an int64 array of lengths; results come back as ``bytes`` of NumPy arrays, a JSON string and ints.
multiprocessing frames these messages with pickle over the pool's own pipes, which only this
process and the children it started can use, and the payloads are plain bytes/str/int that
this code produced: no object from a file or from elsewhere is ever unpickled, which is what the
project's "no pickle" rule guards against.

Memory: the main process holds at most ``2 * workers + 1`` batches in flight (each about
BATCH_BYTES of text and its token ids), one shard's write buffer (the OS's), and per document a
few integers (56 bytes: lengths, where its token ids lie, where its bytes lie in its file) plus,
with de-duplication, a 16-byte content key and, per kept document, a MinHash signature and its
band-bucket entries (about 1.8 KB at num_perm 128, measured). A single document is held whole, so the bound
is the largest document, not the corpus: split huge text files with ``--doc_separator``.

The train/val rule is the in-memory one (``dataset.split_train_val``): the split point is at
``(1 - val_fraction)`` of the kept characters, known only at the end. The stream is written as
train shards meanwhile; at the end, the one document holding the split point is read again from
its file (by its recorded byte range), cleaned, cut at a line break and its two parts encoded;
the val shards are written from its tail and the rest of the stream, and the train shard holding
the cut is rewritten. So the output equals ``prepare_dataset`` over the same kept documents.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import resource
import tempfile
from array import array
from collections import deque
from dataclasses import fields

import numpy as np

from minillm.data.clean import CleaningReport, clean_document
from minillm.data.dataset import claim_dataset_folder, cut_document, split_target, write_dataset_meta
from minillm.data.dedup import StreamingDeduplicator, content_key
from minillm.data.documents import expand_inputs, iter_documents, read_document_at
from minillm.data.minhash import MinHasher, band_keys
from minillm.data.shards import SHARD_HEADER_BYTES, ShardWriter, read_shard_header, token_dtype
from minillm.fileio import remove_stale_temp_files

BATCH_BYTES = 1 << 20       # text per batch sent to a worker
BATCH_DOCS = 2048           # documents per batch at most
COPY_TOKENS = 1 << 20       # tokens copied per step when the tail is rewritten
_NUM_PERM, _SHINGLE_SIZE = 128, 5
_REPORT_INTS = [f.name for f in fields(CleaningReport) if f.type in ("int", int)]


def default_workers() -> int:
    """The cores this process may run on (``os.sched_getaffinity`` where there is one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------
# the worker side: a pure function of (settings, batch)
# ---------------------------------------------------------------------------------------------
class _BatchProcessor:
    """Cleans, fingerprints and tokenizes batches; one per process."""

    def __init__(self, tokenizer, settings: dict):
        self.tokenizer = tokenizer
        self.min_chars = settings["min_chars"]
        self.dtype = np.dtype(settings["dtype"])
        self.dedup = settings["dedup"]
        self.bands, self.rows = settings["bands"], settings["rows"]
        self.hasher = MinHasher(num_perm=_NUM_PERM, shingle_size=_SHINGLE_SIZE, seed=settings["seed"])

    def __call__(self, blob: bytes, lengths: bytes) -> tuple:
        sizes = np.frombuffer(lengths, dtype=np.int64)
        ends = np.cumsum(sizes)
        report = CleaningReport(min_chars=self.min_chars)
        n = len(sizes)
        flags = np.zeros(n, dtype=np.uint8)        # 0 dropped by cleaning, 1 kept, 2 kept without words
        chars = np.zeros(n, dtype=np.int64)
        num_bytes = np.zeros(n, dtype=np.int64)
        token_counts = np.zeros(n, dtype=np.int64)
        keys = bytearray()
        signatures, token_parts = [], []
        start = 0
        for index, end in enumerate(ends.tolist()):
            text = blob[start:end].decode("utf-8")
            start = end
            report.docs_in += 1
            report.chars_in += len(text)
            cleaned = clean_document(text, report)
            if len(cleaned) < self.min_chars:
                report.dropped_too_short += 1
                if len(report.short_doc_examples) < 3:
                    report.short_doc_examples.append(cleaned[:40])
                continue
            report.docs_out += 1
            report.chars_out += len(cleaned)
            flags[index] = 1
            chars[index] = len(cleaned)
            num_bytes[index] = len(cleaned.encode("utf-8"))
            keys += content_key(cleaned)
            if self.dedup:
                shingles = self.hasher.shingles(cleaned)
                if shingles.size:
                    signatures.append(self.hasher.signature_from_shingles(shingles))
                else:
                    flags[index] = 2
            ids = np.asarray(self.tokenizer.encode_ordinary(cleaned), dtype=np.int64)
            if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= 1 << (8 * self.dtype.itemsize)):
                raise ValueError(f"the tokenizer gave id {int(ids.max())}, outside the shard dtype {self.dtype}")
            token_counts[index] = ids.size
            token_parts.append(ids.astype(self.dtype))
        signature_table = (np.stack(signatures) if signatures
                           else np.zeros((0, _NUM_PERM), dtype=np.uint32))               # (n_sig, num_perm)
        table_keys = band_keys(signature_table, self.bands, self.rows)                   # (n_sig, bands)
        tokens = np.concatenate(token_parts) if token_parts else np.zeros(0, dtype=self.dtype)
        summary = {name: getattr(report, name) for name in _REPORT_INTS}
        summary["short_doc_examples"] = report.short_doc_examples
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return (flags.tobytes(), chars.tobytes(), num_bytes.tobytes(), token_counts.tobytes(), bytes(keys),
                signature_table.tobytes(), table_keys.tobytes(), tokens.tobytes(), json.dumps(summary),
                os.getpid(), usage.ru_maxrss, usage.ru_utime + usage.ru_stime)


_PROCESSOR: _BatchProcessor | None = None
_INIT_ERROR = ""


def _worker_init(tokenizer_path: str, settings_json: str) -> None:
    # An exception escaping a Pool initializer makes the pool restart the worker forever (a hang);
    # kept here instead, it comes back to the main process with the first batch.
    global _PROCESSOR, _INIT_ERROR
    try:
        from minillm.tokenizer import load_tokenizer  # noqa: PLC0415  (in the worker process)

        _PROCESSOR = _BatchProcessor(load_tokenizer(tokenizer_path), json.loads(settings_json))
    except Exception as error:  # noqa: BLE001  (reported by _worker_run)
        _INIT_ERROR = f"{type(error).__name__}: {error}"


def _worker_run(blob: bytes, lengths: bytes) -> tuple:
    if _PROCESSOR is None:
        raise ValueError(f"prepare: a worker process could not load the tokenizer: {_INIT_ERROR}")
    return _PROCESSOR(blob, lengths)


def _pool_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


# ---------------------------------------------------------------------------------------------
# the main side
# ---------------------------------------------------------------------------------------------
class _TokenStream:
    """All kept documents' token ids, end to end, written as ``train_NNNNNN.bin`` shards of
    ``shard_tokens`` each as they come."""

    def __init__(self, out_dir: str, vocab_size: int, shard_tokens: int, prefix: str = "train"):
        self.out_dir, self.vocab_size, self.shard_tokens, self.prefix = out_dir, vocab_size, shard_tokens, prefix
        self.manifest: list[dict] = []
        self.total = 0
        self._writer: ShardWriter | None = None

    def _name(self, index: int) -> str:
        return f"{self.prefix}_{index:06d}.bin"

    def append(self, ids: np.ndarray) -> None:
        while ids.size:
            if self._writer is None:
                self._writer = ShardWriter(os.path.join(self.out_dir, self._name(len(self.manifest))), self.vocab_size)
            take = min(self.shard_tokens - self._writer.count, ids.size)
            self._writer.append(ids[:take])
            self.total += take
            ids = ids[take:]
            if self._writer.count == self.shard_tokens:
                self._finish()

    def _finish(self) -> None:
        count, digest = self._writer.close()
        self.manifest.append({"name": self._name(len(self.manifest)), "tokens": count, "sha256": digest})
        self._writer = None

    def close(self) -> list[dict]:
        if self._writer is not None:
            self._finish()
        return self.manifest

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.abort()
            self._writer = None


def _read_stream(out_dir: str, manifest: list[dict], shard_tokens: int, start: int, stop: int):
    """Yield the stream's tokens [start, stop) in arrays of at most COPY_TOKENS, read with plain file
    reads (a memory map would count the pages it touched as this process's resident memory)."""
    while start < stop:
        shard = start // shard_tokens
        path = os.path.join(out_dir, manifest[shard]["name"])
        header = read_shard_header(path)
        offset = start - shard * shard_tokens
        end = min(stop - shard * shard_tokens, header.num_tokens, offset + COPY_TOKENS)
        yield np.fromfile(path, dtype=header.dtype, count=end - offset,
                          offset=SHARD_HEADER_BYTES + offset * header.dtype.itemsize)
        start += end - offset


def _merge_cleaning(total: CleaningReport, summary: dict) -> None:
    for name in _REPORT_INTS:
        if name != "min_chars":
            setattr(total, name, getattr(total, name) + summary[name])
    room = 3 - len(total.short_doc_examples)
    total.short_doc_examples.extend(summary["short_doc_examples"][:max(room, 0)])


def _batches(documents):
    """Group (text, file, offset, length) documents into (blob, lengths bytes, locations) batches of
    BATCH_BYTES of text or BATCH_DOCS documents (read when called, so a test may shrink them)."""
    limit_bytes, limit_docs = BATCH_BYTES, BATCH_DOCS
    parts: list[bytes] = []
    locations: list[tuple[int, int, int]] = []
    size = 0
    for text, file_index, offset, length in documents:
        data = text.encode("utf-8")
        parts.append(data)
        locations.append((file_index, offset, length))
        size += len(data)
        if size >= limit_bytes or len(parts) >= limit_docs:
            yield b"".join(parts), np.array([len(p) for p in parts], dtype=np.int64).tobytes(), locations
            parts, locations, size = [], [], 0
    if parts:
        yield b"".join(parts), np.array([len(p) for p in parts], dtype=np.int64).tobytes(), locations


def prepare_corpus(inputs, tokenizer, out_dir: str | os.PathLike, *, tokenizer_path: str | None = None,
                   text_field: str = "text", doc_separator: str | None = None, val_fraction: float = 0.1,
                   min_chars: int = 32, dedup: bool = True, dedup_threshold: float = 0.8, seed: int = 0,
                   shard_tokens: int = 1 << 24, eot_token_id: int | None = None, workers: int = 1,
                   overwrite: bool = False, log=print) -> dict:
    """Stream ``inputs`` into a token dataset in ``out_dir`` (see the module docstring); return a dict
    with ``meta`` (what meta.json holds), ``cleaning`` (CleaningReport), ``dedup`` (DedupReport or
    None), ``files``, ``worker_peak_rss_mb`` (each worker's peak resident memory) and
    ``worker_cpu_seconds`` (the worker processes' CPU time, 0 with one worker).

    ``tokenizer`` encodes in this process (the val cut; everything when ``workers == 1``);
    ``tokenizer_path`` is its saved JSON, which each worker loads (needed for ``workers > 1``:
    without it a tokenizer with ``save`` is saved to a temporary file first). A script that calls
    this with ``workers > 1`` needs the ``if __name__ == "__main__":`` guard, as any script that
    starts processes with ``spawn``/``forkserver``: the workers import the main module.
    """
    if type(workers) is not int or workers < 1:
        raise ValueError(f"prepare: workers must be an int >= 1, got {workers!r}")
    if type(min_chars) is not int or min_chars < 1:
        raise ValueError(f"prepare: min_chars must be an int >= 1, got {min_chars!r}")
    if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"prepare: val_fraction must be a float in (0, 1), got {val_fraction!r}")
    if type(shard_tokens) is not int or shard_tokens < 1:
        raise ValueError(f"prepare: shard_tokens must be an int >= 1, got {shard_tokens!r}")
    vocab_size = tokenizer.vocab_size
    dtype = token_dtype(vocab_size)
    if eot_token_id is not None and (type(eot_token_id) is not int or not 0 <= eot_token_id < vocab_size):
        raise ValueError(f"prepare: eot_token_id must be an int in [0, {vocab_size}), got {eot_token_id!r}")
    files = expand_inputs(inputs)
    deduplicator = StreamingDeduplicator(threshold=dedup_threshold, seed=seed) if dedup else None
    settings = {"min_chars": min_chars, "dtype": dtype.str, "dedup": dedup, "seed": seed,
                "bands": deduplicator.bands if dedup else 1, "rows": deduplicator.rows if dedup else 1}

    out_dir = claim_dataset_folder(out_dir, "prepare", overwrite, "pass --overwrite or choose another folder")
    remove_stale_temp_files(out_dir)
    tokenizer_config = tokenizer.to_dict()

    with tempfile.TemporaryDirectory(prefix="minillm-prepare-") as scratch:
        if workers > 1 and tokenizer_path is None:
            if hasattr(tokenizer, "save"):
                tokenizer_path = os.path.join(scratch, "tokenizer.json")
                tokenizer.save(tokenizer_path)
            else:
                log(f"workers: 1 (the tokenizer {type(tokenizer).__name__} cannot be saved for worker processes)")
                workers = 1
        stream = _TokenStream(out_dir, vocab_size, shard_tokens)
        try:
            result = _run(files, tokenizer, tokenizer_path, settings, text_field, doc_separator, deduplicator,
                          stream, eot_token_id, workers)
        except BaseException:
            stream.abort()
            raise
    cleaning, records, worker_peaks, worker_cpu_seconds = result
    manifest = stream.close()
    if not len(records["chars"]):
        raise ValueError(f"--input: every document was dropped by cleaning (min_chars={min_chars}) or as a "
                         "duplicate; expected documents of at least min_chars characters")
    splits = _split_and_finish(out_dir, files, tokenizer, text_field, records, stream, manifest, val_fraction,
                               shard_tokens, vocab_size, eot_token_id)
    meta = write_dataset_meta(out_dir, tokenizer, tokenizer_config, vocab_size, dtype, eot_token_id, val_fraction,
                              shard_tokens, splits)
    return {"meta": meta, "cleaning": cleaning, "dedup": deduplicator.report if dedup else None, "files": files,
            "workers": workers, "worker_peak_rss_mb": sorted(kib / 1024 for kib in worker_peaks.values()),
            "worker_cpu_seconds": worker_cpu_seconds}


def _run(files, tokenizer, tokenizer_path, settings, text_field, doc_separator, deduplicator, stream,
         eot_token_id, workers):
    """The pass over the corpus: returns (CleaningReport, per-kept-document records, worker peaks)."""
    cleaning = CleaningReport(min_chars=settings["min_chars"])
    records = {name: array("q") for name in ("chars", "bytes", "token_start", "token_count", "file", "offset",
                                             "length")}
    worker_peaks: dict[int, int] = {}
    worker_cpu: dict[int, float] = {}           # CPU seconds each process had used at its last batch
    dtype = np.dtype(settings["dtype"])
    eot = np.array([eot_token_id], dtype=dtype) if eot_token_id is not None else np.zeros(0, dtype=dtype)
    num_perm, bands = _NUM_PERM, settings["bands"]

    def consume(result: tuple, locations: list) -> None:
        (flags, chars, num_bytes, token_counts, keys, signatures, table_keys, tokens, summary, pid,
         peak_kib, cpu_seconds) = result
        worker_peaks[pid] = max(worker_peaks.get(pid, 0), peak_kib)
        worker_cpu[pid] = max(worker_cpu.get(pid, 0.0), cpu_seconds)
        _merge_cleaning(cleaning, json.loads(summary))
        flags = np.frombuffer(flags, dtype=np.uint8)
        chars = np.frombuffer(chars, dtype=np.int64)
        num_bytes = np.frombuffer(num_bytes, dtype=np.int64)
        token_counts = np.frombuffer(token_counts, dtype=np.int64)
        signatures = np.frombuffer(signatures, dtype=np.uint32).reshape(-1, num_perm)
        table_keys = np.frombuffer(table_keys, dtype=np.uint64).reshape(-1, bands)
        tokens = np.frombuffer(tokens, dtype=dtype)
        pieces = []
        position = stream.total                    # where the next piece starts in the stream
        token_offset = key_index = signature_index = 0
        for index in np.flatnonzero(flags).tolist():
            count = int(token_counts[index])
            ids = tokens[token_offset:token_offset + count]
            token_offset += count
            key = keys[16 * key_index:16 * key_index + 16]
            key_index += 1
            signature = band = None
            if flags[index] == 1 and deduplicator is not None:
                signature, band = signatures[signature_index], table_keys[signature_index]
                signature_index += 1
            if deduplicator is not None and deduplicator.offer(key, int(chars[index]), signature, band) >= 0:
                continue
            if len(records["chars"]) and eot.size:
                pieces.append(eot)
                position += 1
            pieces.append(ids)
            file_index, offset, length = locations[index]
            for name, value in (("chars", int(chars[index])), ("bytes", int(num_bytes[index])),
                                ("token_start", position), ("token_count", count), ("file", file_index),
                                ("offset", offset), ("length", length)):
                records[name].append(value)
            position += count
        if pieces:
            stream.append(np.concatenate(pieces))

    batches = _batches(iter_documents(files, doc_separator=doc_separator, text_field=text_field))
    if workers == 1:
        processor = _BatchProcessor(tokenizer, settings)
        for blob, lengths, locations in batches:
            consume(processor(blob, lengths), locations)
        return cleaning, records, worker_peaks, 0.0

    context = _pool_context()
    with context.Pool(workers, initializer=_worker_init, initargs=(tokenizer_path, json.dumps(settings))) as pool:
        in_flight: deque = deque()
        for blob, lengths, locations in batches:
            in_flight.append((pool.apply_async(_worker_run, (blob, lengths)), locations))
            if len(in_flight) > 2 * workers:       # bounded: never read far ahead of the workers
                pending, where = in_flight.popleft()
                consume(pending.get(), where)
        while in_flight:
            pending, where = in_flight.popleft()
            consume(pending.get(), where)
    return cleaning, records, worker_peaks, sum(worker_cpu.values())


def _split_and_finish(out_dir, files, tokenizer, text_field, records, stream, manifest, val_fraction,
                      shard_tokens, vocab_size, eot_token_id) -> dict:
    """Cut the stream into train and val (module docstring); write the val shards and the rewritten
    train tail; return meta.json's ``splits``."""
    chars = np.frombuffer(records["chars"], dtype=np.int64)
    num_bytes = np.frombuffer(records["bytes"], dtype=np.int64)
    total = int(chars.sum())
    if total < 2:
        raise ValueError(f"prepare: the kept documents hold {total} characters; need at least 2 to split")
    target = split_target(total, val_fraction)
    ends = np.cumsum(chars)
    k = int(np.searchsorted(ends, target, side="right"))          # first document with ends > target
    consumed = int(ends[k] - chars[k])
    file_index, offset, length = records["file"][k], records["offset"][k], records["length"][k]
    doc = clean_document(read_document_at(files[file_index], offset, length, text_field))
    if len(doc) != chars[k]:
        raise ValueError(f"prepare: {files[file_index]!r} changed while it was being prepared (the document at byte "
                         f"{offset} has {len(doc)} characters now, {int(chars[k])} before); run prepare again")
    head, tail = cut_document(doc, target - consumed)
    dtype = token_dtype(vocab_size)
    head_ids = np.asarray(tokenizer.encode_ordinary(head) if head else [], dtype=np.int64).astype(dtype)
    tail_ids = np.asarray(tokenizer.encode_ordinary(tail), dtype=np.int64).astype(dtype)
    start, count = records["token_start"][k], records["token_count"][k]
    train_stop = start if head or eot_token_id is None or k == 0 else start - 1
    n = len(chars)

    val = _TokenStream(out_dir, vocab_size, shard_tokens, prefix="val")
    try:
        val.append(tail_ids)
        for piece in _read_stream(out_dir, manifest, shard_tokens, start + count, stream.total):
            val.append(piece)
    except BaseException:
        val.abort()
        raise
    val_manifest = val.close()

    first = train_stop // shard_tokens          # train shards before this one stay as written
    train = _TokenStream(out_dir, vocab_size, shard_tokens)
    train.manifest = manifest[:first]
    train.total = first * shard_tokens
    try:
        for piece in _read_stream(out_dir, manifest, shard_tokens, first * shard_tokens, train_stop):
            train.append(piece)
        train.append(head_ids)
    except BaseException:
        train.abort()
        raise
    train_manifest = train.close()
    if not train.total:
        raise ValueError("prepare: the train split produced no tokens")
    train_docs = k + (1 if head else 0)
    val_docs = n - k
    eot_on = eot_token_id is not None
    return {
        "train": {"shards": [m["name"] for m in train_manifest], "tokens": train.total,
                  "bytes": int(num_bytes[:k].sum()) + len(head.encode("utf-8")), "documents": train_docs,
                  "eot_tokens": max(train_docs - 1, 0) if eot_on else 0, "manifest": train_manifest},
        "val": {"shards": [m["name"] for m in val_manifest], "tokens": val.total,
                "bytes": len(tail.encode("utf-8")) + int(num_bytes[k + 1:].sum()), "documents": val_docs,
                "eot_tokens": max(val_docs - 1, 0) if eot_on else 0, "manifest": val_manifest},
    }


__all__ = ["prepare_corpus", "default_workers"]
