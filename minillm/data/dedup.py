"""De-duplication: exact duplicates by content hash, near duplicates by MinHash + LSH.

Pipeline (documents are streamed once, in order; document ids are their input positions):

1. Exact duplicates. The content key is ``blake2b(" ".join(text.split()), digest_size=16)``:
   the text with every whitespace run collapsed to one space (case kept). A document whose key
   was seen before is joined to the first document with that key and skips MinHash entirely.
2. Near duplicates. Every other document with at least one word gets a MinHash signature over
   its word shingles (``minillm.data.minhash``) and is added to an ``LSHIndex``; after the
   stream, LSH buckets propose candidate pairs, which are accepted when the estimated Jaccard
   similarity (fraction of equal signature entries) is at least ``threshold``.
3. Clusters: accepted pairs are merged with union-find (transitively: if A~B and B~C, all three
   form one cluster). Each cluster keeps its first document (lowest input position) and drops
   the rest; output order is input order.

Deterministic for a given ``seed`` (it seeds the shingle hash key and the densification orders of
the MinHash signatures); no all-pairs comparisons.

Streaming (``StreamingDeduplicator``, used by ``minillm prepare``): documents are decided as they
arrive, never revisited. A document is kept iff its content key is new and it has no near
duplicate (estimated Jaccard >= threshold among the kept documents that share an LSH band with
it) among the documents kept *before* it. Memory: a content key per document and a signature per
kept document, never their text. This equals the clustering above whenever near-duplicate
relations are cliques (copies of one original, each near every other). It differs on chains:
with A ~ B and B ~ C but A !~ C, clustering joins all three and keeps A; streaming drops B (a
copy of A) and keeps C, since C is near no kept document. ``find_duplicates_streaming`` runs it
in one process over a list.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from minillm.data.minhash import LSHIndex, MinHasher, StreamingLSH, band_keys, optimal_bands


class UnionFind:
    """Disjoint sets over 0..n-1 that grow on demand; the root of a set is its smallest member.

    ``union`` always hangs the larger root under the smaller one, so ``find(i)`` is the first
    document of i's cluster; ``find`` halves paths as it walks (iterative, no recursion).
    """

    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, i: int, j: int) -> int:
        root_i, root_j = self.find(i), self.find(j)
        if root_i == root_j:
            return root_i
        low, high = min(root_i, root_j), max(root_i, root_j)
        self.parent[high] = low
        return low


def content_key(text: str) -> bytes:
    """16-byte blake2b digest of ``text`` with whitespace runs collapsed to single spaces."""
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8"), digest_size=16).digest()


@dataclass
class DedupReport:
    """What ``find_duplicates`` did; characters are Unicode code points."""

    docs_in: int = 0
    docs_out: int = 0
    exact_duplicates: int = 0       # dropped as exact copies of an earlier document
    near_duplicates: int = 0        # dropped as near copies (cluster members that are not exact copies)
    duplicate_clusters: int = 0     # clusters with 2+ documents
    docs_without_words: int = 0     # no shingles: only exact matching applies
    candidate_comparisons: int = 0  # signature comparisons made while verifying LSH buckets
    verified_pairs: int = 0         # candidate pairs with estimated Jaccard >= threshold
    chars_in: int = 0
    chars_out: int = 0
    threshold: float = 0.0
    num_perm: int = 0
    shingle_size: int = 0
    bands: int = 0
    rows: int = 0
    seconds: float = 0.0
    streamed: bool = False          # made by StreamingDeduplicator: seconds are the index's alone

    def __str__(self) -> str:
        megabytes_per_second = self.chars_in / 1e6 / self.seconds if self.seconds > 0 else float("inf")
        rows = [
            ("documents in", self.docs_in, ""),
            ("documents out", self.docs_out, ""),
            ("exact duplicates", self.exact_duplicates, " dropped"),
            ("near duplicates", self.near_duplicates, f" dropped (estimated Jaccard >= {self.threshold:g})"),
            ("duplicate clusters", self.duplicate_clusters, ""),
            ("docs without words", self.docs_without_words, ""),
            ("characters in", self.chars_in, ""),
            ("characters out", self.chars_out, ""),
            ("comparisons", self.candidate_comparisons, f" ({self.verified_pairs:,} pairs verified)"),
        ]
        lines = ["dedup report"] + [f"  {label:<22}{value:>14,}{suffix}" for label, value, suffix in rows]
        if self.bands:
            lines.append(f"  {'MinHash / LSH':<22}num_perm={self.num_perm}, shingles of {self.shingle_size} words, "
                         f"{self.bands} bands x {self.rows} rows (S-curve midpoint ~ "
                         f"{(1 / self.bands) ** (1 / self.rows):.3f})")
        if self.streamed:
            lines.append(f"  {'time':<22}{self.seconds:>14.2f} s in the streaming index (MinHash signatures are "
                         "computed beside cleaning and tokenizing)")
        else:
            lines.append(f"  {'time':<22}{self.seconds:>14.2f} s ({megabytes_per_second:.2f} M chars/s)")
        return "\n".join(lines)


@dataclass
class DedupResult:
    """``keep[i]``: whether document i survives; ``cluster[i]``: id of the first document of its cluster."""

    keep: np.ndarray      # (n,) bool
    cluster: np.ndarray   # (n,) int64
    report: DedupReport


def _validate(threshold: float, num_perm: int, shingle_size: int, seed: int) -> None:
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0.0 < threshold < 1.0:
        raise ValueError(f"dedup: threshold must be a float in (0, 1), got {threshold!r}")
    for name, value in (("num_perm", num_perm), ("shingle_size", shingle_size)):
        if type(value) is not int or value < 1:
            raise ValueError(f"dedup: {name} must be an int >= 1, got {value!r}")
    if type(seed) is not int or seed < 0:
        raise ValueError(f"dedup: seed must be an int >= 0, got {seed!r}")


def find_duplicates(docs: Iterable[str], threshold: float = 0.8, num_perm: int = 128,
                    shingle_size: int = 5, seed: int = 0, bands: int | None = None,
                    rows: int | None = None) -> DedupResult:
    """Find exact and near duplicates in a stream of documents (texts are not kept in memory).

    ``bands``/``rows`` override the LSH banding chosen by ``optimal_bands(threshold, num_perm)``.
    """
    if isinstance(docs, str):
        raise TypeError("find_duplicates: docs must be an iterable of str documents, got a single str")
    _validate(threshold, num_perm, shingle_size, seed)
    started = time.perf_counter()
    hasher = MinHasher(num_perm=num_perm, shingle_size=shingle_size, seed=seed)
    index = LSHIndex(num_perm, threshold, bands, rows)
    report = DedupReport(threshold=float(threshold), num_perm=num_perm, shingle_size=shingle_size,
                         bands=index.bands, rows=index.rows)
    clusters = UnionFind()
    first_with_key: dict[bytes, int] = {}
    lengths: list[int] = []
    is_exact_copy: list[bool] = []

    for doc_id, text in enumerate(docs):
        if not isinstance(text, str):
            raise TypeError(f"find_duplicates: document {doc_id} must be str, got {type(text).__name__}")
        clusters.add()
        lengths.append(len(text))
        key = content_key(text)
        original = first_with_key.setdefault(key, doc_id)
        is_exact_copy.append(original != doc_id)
        if original != doc_id:
            clusters.union(original, doc_id)
            continue
        shingles = hasher.shingles(text)
        if shingles.size == 0:
            report.docs_without_words += 1
            continue
        index.add(doc_id, hasher.signature_from_shingles(shingles))

    pairs = index.near_duplicate_pairs()
    for first, second in sorted(pairs):
        clusters.union(first, second)

    n = len(lengths)
    cluster = np.array([clusters.find(i) for i in range(n)], dtype=np.int64)
    keep = cluster == np.arange(n)
    exact = np.array(is_exact_copy, dtype=bool)
    sizes = np.bincount(cluster, minlength=n) if n else np.zeros(0, dtype=np.int64)
    char_counts = np.array(lengths, dtype=np.int64)

    report.docs_in = n
    report.docs_out = int(keep.sum())
    report.exact_duplicates = int(exact.sum())
    report.near_duplicates = n - report.docs_out - report.exact_duplicates
    report.duplicate_clusters = int((sizes >= 2).sum())
    report.candidate_comparisons = index.comparisons
    report.verified_pairs = len(pairs)
    report.chars_in = int(char_counts.sum())
    report.chars_out = int(char_counts[keep].sum())
    report.seconds = time.perf_counter() - started
    return DedupResult(keep=keep, cluster=cluster, report=report)


def deduplicate(docs: Iterable[str], threshold: float = 0.8, num_perm: int = 128, shingle_size: int = 5,
                seed: int = 0, bands: int | None = None, rows: int | None = None) -> tuple[list[str], DedupReport]:
    """Drop exact and near duplicates; return (kept documents in input order, DedupReport)."""
    if isinstance(docs, str):
        raise TypeError("deduplicate: docs must be a list of str documents, got a single str")
    docs = list(docs)
    result = find_duplicates(docs, threshold=threshold, num_perm=num_perm, shingle_size=shingle_size,
                             seed=seed, bands=bands, rows=rows)
    kept = [doc for doc, keep in zip(docs, result.keep) if keep]
    return kept, result.report


class StreamingDeduplicator:
    """Decides document after document whether it duplicates one kept before (module docstring).

    ``offer(key, chars, signature, keys)`` takes the document's ``content_key``, its length in
    characters, and its MinHash signature (num_perm,) uint32 with its LSH band keys (bands,)
    uint64 from ``band_keys`` (both None for a document without words). It returns -1 when the
    document is kept, else the number (0, 1, ... in keeping order) of the kept document it
    duplicates. ``report`` counts as ``find_duplicates`` does; ``duplicate_clusters`` counts the
    kept documents that absorbed at least one duplicate.
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = 128, shingle_size: int = 5, seed: int = 0,
                 bands: int | None = None, rows: int | None = None):
        _validate(threshold, num_perm, shingle_size, seed)
        if (bands is None) != (rows is None):
            raise ValueError(f"dedup: give both bands and rows or neither, got bands={bands!r}, rows={rows!r}")
        if bands is None:
            bands, rows = optimal_bands(threshold, num_perm)
        self.num_perm, self.shingle_size, self.seed, self.bands, self.rows = num_perm, shingle_size, seed, bands, rows
        self.index = StreamingLSH(num_perm, float(threshold), bands, rows)
        self.report = DedupReport(threshold=float(threshold), num_perm=num_perm, shingle_size=shingle_size,
                                  bands=bands, rows=rows, streamed=True)
        self._kept_for_key: dict[bytes, int] = {}   # content key -> the kept document it stands for
        self._kept_for_row: list[int] = []          # LSH row -> kept document
        self._absorbing: set[int] = set()           # kept documents with at least one duplicate

    def offer(self, key: bytes, chars: int, signature: np.ndarray | None, keys: np.ndarray | None) -> int:
        started = time.perf_counter()
        report = self.report
        report.docs_in += 1
        report.chars_in += chars
        kept = self._kept_for_key.get(key)
        if kept is not None:
            report.exact_duplicates += 1
        elif signature is None:
            report.docs_without_words += 1
        else:
            row = self.index.match(signature, keys)
            if row >= 0:
                kept = self._kept_for_row[row]
                self._kept_for_key[key] = kept
                report.near_duplicates += 1
                report.verified_pairs += 1
        if kept is not None:
            self._absorbing.add(kept)
            report.duplicate_clusters = len(self._absorbing)
            report.candidate_comparisons = self.index.comparisons
            report.seconds += time.perf_counter() - started
            return kept
        number = report.docs_out
        report.docs_out += 1
        report.chars_out += chars
        self._kept_for_key[key] = number
        if signature is not None:
            self.index.add(signature, keys)
            self._kept_for_row.append(number)
        report.candidate_comparisons = self.index.comparisons
        report.seconds += time.perf_counter() - started
        return -1


def find_duplicates_streaming(docs: Iterable[str], threshold: float = 0.8, num_perm: int = 128,
                              shingle_size: int = 5, seed: int = 0, bands: int | None = None,
                              rows: int | None = None) -> DedupResult:
    """``StreamingDeduplicator`` over ``docs`` in one process: ``keep[i]``, and ``cluster[i]`` = the
    input position of the kept document that document i duplicates (i itself when kept)."""
    if isinstance(docs, str):
        raise TypeError("find_duplicates_streaming: docs must be an iterable of str documents, got a single str")
    deduplicator = StreamingDeduplicator(threshold, num_perm, shingle_size, seed, bands, rows)
    hasher = MinHasher(num_perm=num_perm, shingle_size=shingle_size, seed=seed)
    kept_positions: list[int] = []
    cluster: list[int] = []
    for doc_id, text in enumerate(docs):
        if not isinstance(text, str):
            raise TypeError(f"find_duplicates_streaming: document {doc_id} must be str, got {type(text).__name__}")
        shingles = hasher.shingles(text)
        signature = keys = None
        if shingles.size:
            signature = hasher.signature_from_shingles(shingles)
            keys = band_keys(signature[None, :], deduplicator.bands, deduplicator.rows)[0]
        kept = deduplicator.offer(content_key(text), len(text), signature, keys)
        if kept < 0:
            kept_positions.append(doc_id)
            cluster.append(doc_id)
        else:
            cluster.append(kept_positions[kept])
    cluster_array = np.array(cluster, dtype=np.int64)
    return DedupResult(keep=cluster_array == np.arange(len(cluster)), cluster=cluster_array,
                       report=deduplicator.report)
