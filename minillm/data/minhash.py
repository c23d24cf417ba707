"""MinHash signatures and LSH banding, from first principles with NumPy.

Similarity of two documents = Jaccard similarity of their sets of word shingles,
``J(A, B) = |A ∩ B| / |A ∪ B|``, where a k-shingle is k consecutive words (the text is casefolded
and split on whitespace exactly as ``str.split()`` does; a document with fewer than k words is one
shingle of all its words).

Shingle hashing, vectorised over the whole document (no Python loop over words). The casefolded
text becomes an array of code points (one byte each when it is ASCII, else UTF-32); whitespace is
what ``str.isspace`` accepts (a lookup table). A word ``c_0 .. c_{L-1}`` hashes to
``splitmix64(sum_t c_t * R^t + L * K)`` in wrapping uint64 arithmetic, with ``R`` and ``K`` fixed
odd constants (the same for every seed and machine): a polynomial hash, computed for all words at
once from one prefix sum over the document (``word_hashes``). Words that differ in one character
never collide (R is odd, so R^t is invertible); other words of one length collide only when the
polynomial of their character differences vanishes at R modulo 2^64, which strings can be built
to do (Thue-Morse words of 2,048 characters) and which merges two shingles, nothing else. k
consecutive word hashes are combined with a polynomial ``h = (...(w0 * M + w1) * M + ...) +
w_{k-1}``, the seed's 64-bit key is added and splitmix64's finaliser mixes the result, so that
every output bit depends on every input bit: shingle hashes are uint64 values, and the set of a
document is its sorted unique hashes.

Signatures: one permutation hashing with densification (Li, Owen & Zhang 2012; Shrivastava 2017;
Mai et al. 2020), not ``num_perm`` separate hash functions. The 64-bit hash range is cut into
``num_perm`` equal bins, bin ``j`` holding the hashes ``h`` with ``floor(h * num_perm / 2^64) = j``;
signature entry ``j`` is the smallest hash of the document in bin ``j``, stored as the top 32 bits
of its position inside the bin, ``((h * num_perm) mod 2^64) >> 32`` (the hashes are sorted
already, so this is one ``searchsorted`` of the bin boundaries: O(num_perm log n) per document,
where separate hash functions cost O(num_perm * n)). If bin ``j`` of A ∪ B is non-empty, its
smallest hash belongs to a uniformly random element of A ∪ B (the hash is random), which is in
both documents with probability J: then both entries agree; otherwise they differ (up to a 2^-32
chance of equal 32-bit positions). An empty bin ``j`` copies the entry of the first non-empty bin
in a fixed random order of the bins drawn for ``j`` from ``PCG64(seed)``: the first bin in that
order that is non-empty for A ∪ B decides, as above, so ``Pr[entry j agrees] = J`` for every
entry and the fraction of equal entries is an unbiased estimate of J. For documents with many more
shingles than bins its standard error is about ``sqrt(J (1 - J) / num_perm)``, as for separate
hash functions (bins sample without replacement); for documents with fewer shingles than bins the
copied entries repeat information, and the error grows towards that of ``n`` shingles.
A document without words has the signature ``EMPTY`` in every entry.

LSH banding. The signature is cut into ``b`` bands of ``r`` rows (``b * r <= num_perm``); two
documents become a candidate pair when all r rows of at least one band agree, which happens
with probability ``1 - (1 - J^r)^b``: an S-curve whose steepest point is near
``J ≈ (1/b)^(1/r)``. ``optimal_bands`` picks (b, r) minimising the weighted area of false
positives (the curve below the threshold) plus false negatives (one minus the curve above it),
weighting false negatives more since every candidate is verified afterwards.
Candidates are then verified with the estimated Jaccard from the full signatures, so nothing is
ever compared all-pairs: the work is one sort of the band keys per band plus a few comparisons
per bucket.
"""
from __future__ import annotations

import re
from typing import Iterator

import numpy as np

EMPTY = 0xFFFFFFFF                        # every signature entry of a document without words
_COMBINE = np.uint64(0x9E3779B97F4A7C15)   # odd 64-bit constant (golden ratio): polynomial base
_LENGTH = np.uint64(0xC2B2AE3D27D4EB4F)    # odd 64-bit constant: a word's length enters its hash
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# A word c_0 .. c_{L-1} hashes through sum_t c_t * R^t mod 2^64 with R a fixed random odd constant
# (the same for every seed and machine, so shingle sets depend on the seed only through its key).
_BASE = int(np.random.Generator(np.random.PCG64(0x5EED)).integers(0, 2**63, dtype=np.uint64)) * 2 + 1  # host: a constant
_BASE_INVERSE = pow(_BASE, -1, 2**64)      # R is odd, so it is invertible modulo 2^64
_powers = np.ones(1, dtype=np.uint64)      # R^p, p = 0, 1, ... (grown on demand, doubling)
_inverse_powers = np.ones(1, dtype=np.uint64)   # R^-p
# str.split() splits on the code points str.isspace accepts; all of them are below U+3001 (a test
# checks every code point), so code points are clipped to U+3001 before the table lookup.
_SPACE_LIMIT = 0x3001
_IS_SPACE = np.array([chr(c).isspace() for c in range(_SPACE_LIMIT + 1)], dtype=bool)  # host: a lookup table
# Long documents are hashed in blocks of about this many characters, cut at whitespace (``\\s`` in
# a str pattern is str.isspace), so the temporary arrays (~40 bytes per character) stay bounded.
_BLOCK_CHARS = 1 << 20
_SPACE_RE = re.compile(r"\s")


def _splitmix64_finalise(h: np.ndarray) -> np.ndarray:
    """splitmix64's output mixer (a bijection on uint64), applied in place and returned."""
    h ^= h >> np.uint64(30)
    h *= _MIX1
    h ^= h >> np.uint64(27)
    h *= _MIX2
    h ^= h >> np.uint64(31)
    return h


def code_points(text: str) -> np.ndarray:
    """The code points of ``text``: (len(text),) uint8 when it is ASCII, else uint32."""
    if text.isascii():
        return np.frombuffer(text.encode("ascii"), dtype=np.uint8)      # host: bytes of one document
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)     # host: code points of one document


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(R^p, R^-p) mod 2^64 for p = 0 .. at least n - 1, as uint64 arrays (wrapping products)."""
    global _powers, _inverse_powers
    if len(_powers) < n:
        size = max(n, 2 * len(_powers), 4096)
        _powers = np.full(size, _BASE, dtype=np.uint64)                 # host: MinHash runs on the CPU
        _powers[0] = 1
        np.multiply.accumulate(_powers, out=_powers)
        _inverse_powers = np.full(size, _BASE_INVERSE, dtype=np.uint64)  # host: as above
        _inverse_powers[0] = 1
        np.multiply.accumulate(_inverse_powers, out=_inverse_powers)
    return _powers, _inverse_powers


def _is_space(points: np.ndarray) -> np.ndarray:
    """(n,) bool: which code points ``str.split()`` splits on. The table is consulted only for the
    code points that can be whitespace at all (<= 32, or 0x85 .. 0x3000), a few per word."""
    maybe = points <= 32
    if points.dtype != np.uint8:
        maybe |= (points >= 0x85) & (points <= _SPACE_LIMIT)
    where = np.flatnonzero(maybe)
    maybe[where[~_IS_SPACE[points[where]]]] = False
    return maybe


def word_hashes(text: str) -> np.ndarray:
    """(n_words,) uint64 hashes of ``text.split()``'s words, in order (module docstring), vectorised.

    With prefix sums ``S_p = sum_{q < p} c_q R^q`` the word at [s, e) has
    ``sum_t c_{s+t} R^t = (S_e - S_s) * R^-s`` (mod 2^64): one multiply and one cumulative sum per
    character, then a few operations per word.
    """
    points = code_points(text)                                               # (n,)
    n = points.size
    padded = np.ones(n + 2, dtype=bool)                                      # whitespace before and after
    padded[1:n + 1] = _is_space(points)
    edges = np.flatnonzero(padded[1:] != padded[:-1])                        # (2 n_words,) start, end, start, ...
    if edges.size == 0:
        return np.zeros(0, dtype=np.uint64)
    powers, inverse_powers = _power_tables(n)
    prefix = np.zeros(n + 1, dtype=np.uint64)                                # (n + 1,) S_0 .. S_n, wrapping
    np.multiply(points, powers[:n], out=prefix[1:])
    np.cumsum(prefix[1:], out=prefix[1:])
    starts, ends = edges[0::2], edges[1::2]                                  # (n_words,) each
    sums = prefix[ends] - prefix[starts]
    sums *= inverse_powers[starts]
    sums += (ends - starts).astype(np.uint64) * _LENGTH
    return _splitmix64_finalise(sums)


def _word_hashes_in_blocks(text: str) -> np.ndarray:
    """``word_hashes(text)``, computed over blocks of about ``_BLOCK_CHARS`` characters that end
    just before a whitespace character, so that no word is cut."""
    if len(text) <= _BLOCK_CHARS:
        return word_hashes(text)
    parts, start = [], 0
    while start < len(text):
        end = start + _BLOCK_CHARS
        if end < len(text):
            space = _SPACE_RE.search(text, end)
            end = space.start() if space else len(text)
        parts.append(word_hashes(text[start:end]))
        start = end
    return np.concatenate(parts)


class MinHasher:
    """Computes shingle hash sets and MinHash signatures (see the module docstring for the math).

    Args:
        num_perm: signature length = number of bins (more: better estimates; the cost of a
            signature hardly depends on it). The name is the classical one: with one permutation
            hashing each entry still behaves as the minimum of its own random permutation.
        shingle_size: k, words per shingle.
        seed: seeds the shingle hash key and the densification orders; equal seeds give equal
            signatures.
    """

    def __init__(self, num_perm: int = 128, shingle_size: int = 5, seed: int = 0):
        for arg, value, low in (("num_perm", num_perm, 1), ("shingle_size", shingle_size, 1), ("seed", seed, 0)):
            if type(value) is not int or value < low:
                raise ValueError(f"MinHasher: {arg} must be an int >= {low}, got {value!r}")
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        rng = np.random.Generator(np.random.PCG64(seed))
        self.key = np.uint64(int(rng.integers(0, 2**63, dtype=np.uint64)) * 2 + 1)   # the seed's hash key
        # Bin j holds the hashes h >= ceil(j * 2^64 / num_perm) (and below the next bin's start).
        self.bin_starts = np.array([-(-(j << 64) // num_perm) for j in range(num_perm)],
                                   dtype=np.uint64)                                     # (num_perm,)
        # Densification: for each bin, a random order of all bins; an empty bin copies the entry of
        # the first non-empty bin in its order.
        self.orders = np.stack([rng.permutation(num_perm).astype(np.int32)
                                for _ in range(num_perm)])                              # (num_perm, num_perm)

    def shingles(self, text: str) -> np.ndarray:
        """Sorted unique shingle hashes of ``text`` as uint64; empty if it has no words."""
        if not isinstance(text, str):
            raise TypeError(f"MinHasher.shingles: text must be str, got {type(text).__name__}")
        w = _word_hashes_in_blocks(text.casefold())       # (n_words,)
        if not w.size:
            return w
        k = min(self.shingle_size, len(w))
        n = len(w) - k + 1
        h = w[:n].copy()                                  # (n,) uint64, wraps on overflow by design
        for j in range(1, k):
            h *= _COMBINE
            h += w[j:j + n]
        h += self.key
        _splitmix64_finalise(h)
        h.sort()
        distinct = np.empty(n, dtype=bool)
        distinct[0] = True
        np.not_equal(h[1:], h[:-1], out=distinct[1:])
        return h[distinct]

    def signature_from_shingles(self, shingles: np.ndarray) -> np.ndarray:
        """MinHash signature (num_perm,) uint32 of a shingle-hash array; all ``EMPTY`` if it is empty."""
        if not isinstance(shingles, np.ndarray) or shingles.dtype != np.uint64 or shingles.ndim != 1:
            raise TypeError("MinHasher.signature_from_shingles: shingles must be a 1-D uint64 array "
                            "(from MinHasher.shingles)")
        if shingles.size == 0:
            return np.full(self.num_perm, EMPTY, dtype=np.uint32)
        if shingles.size > 1 and not (shingles[1:] >= shingles[:-1]).all():
            shingles = np.sort(shingles)
        first = np.searchsorted(shingles, self.bin_starts)                      # (num_perm,) first index per bin
        filled = np.diff(first, append=shingles.size) > 0                       # (num_perm,) bin not empty
        smallest = shingles[np.minimum(first, shingles.size - 1)]               # (num_perm,)
        signature = ((smallest * np.uint64(self.num_perm)) >> np.uint64(32)).astype(np.uint32)
        empty = np.flatnonzero(~filled)
        if empty.size:
            probes = self.orders[empty]                                          # (n_empty, num_perm)
            source = probes[np.arange(empty.size), np.argmax(filled[probes], axis=1)]
            signature[empty] = signature[source]
        return signature

    def signature(self, text: str) -> np.ndarray:
        """MinHash signature (num_perm,) uint32 of ``text``."""
        return self.signature_from_shingles(self.shingles(text))


def estimate_jaccard(signature_a: np.ndarray, signature_b: np.ndarray) -> float:
    """Fraction of equal MinHash entries: an unbiased estimate of the Jaccard similarity."""
    if signature_a.shape != signature_b.shape or signature_a.ndim != 1:
        raise ValueError(f"estimate_jaccard: signatures must be 1-D of equal length, got shapes "
                         f"{signature_a.shape} and {signature_b.shape}")
    return float(np.mean(signature_a == signature_b))


def exact_jaccard(shingles_a: np.ndarray, shingles_b: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle-hash sets (1.0 for two empty sets)."""
    union = np.union1d(shingles_a, shingles_b).size
    if union == 0:
        return 1.0
    return np.intersect1d(shingles_a, shingles_b, assume_unique=True).size / union


def candidate_probability(similarity, bands: int, rows: int):
    """Probability that two documents with Jaccard ``similarity`` share a band: 1 - (1 - s^r)^b."""
    s = np.asarray(similarity, dtype=np.float64)
    return 1.0 - (1.0 - s ** rows) ** bands


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid-rule integral of samples y over the grid x."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2.0)


def optimal_bands(threshold: float, num_perm: int, false_positive_weight: float = 0.2,
                  false_negative_weight: float = 0.8) -> tuple[int, int]:
    """Choose (bands, rows), bands * rows <= num_perm, for a Jaccard ``threshold``.

    Minimises ``wp * ∫_0^t P(s) ds + wn * ∫_t^1 (1 - P(s)) ds`` with ``P(s) = 1 - (1 - s^r)^b``
    (trapezoid rule on a 201-point grid per side), as in Leskovec, Rajaraman & Ullman, "Mining
    of Massive Datasets", ch. 3. Ties go to the first (fewest bands) candidate.

    The default weights favour recall (0.8 on false negatives): every candidate is verified
    against the full signature afterwards, so a false positive costs one cheap comparison while
    a false negative is a duplicate that stays. For threshold 0.8 and 128 permutations this gives
    12 bands x 10 rows: pairs at J = 0.9 become candidates with probability 0.994, at J = 0.5 0.012.
    """
    if not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
        raise ValueError(f"optimal_bands: threshold must be a float in (0, 1), got {threshold!r}")
    if type(num_perm) is not int or num_perm < 1:
        raise ValueError(f"optimal_bands: num_perm must be an int >= 1, got {num_perm!r}")
    below = np.linspace(0.0, threshold, 201)
    above = np.linspace(threshold, 1.0, 201)
    best, best_error = (1, num_perm), float("inf")
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            false_positive = _trapezoid(candidate_probability(below, bands, rows), below)
            false_negative = _trapezoid(1.0 - candidate_probability(above, bands, rows), above)
            error = false_positive_weight * false_positive + false_negative_weight * false_negative
            if error < best_error - 1e-15:
                best, best_error = (bands, rows), error
    return best


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64 keys of the LSH bands of (n, num_perm) signatures: band j's ``rows``
    values combined polynomially in wrapping uint64, then mixed (see :class:`LSHIndex`)."""
    n = signatures.shape[0]
    table = signatures[:, :bands * rows].astype(np.uint64).reshape(n, bands, rows)   # (n, b, r)
    keys = table[:, :, 0].copy()
    for j in range(1, rows):
        keys *= _COMBINE
        keys += table[:, :, j]
    return _splitmix64_finalise(keys)


class StreamingLSH:
    """LSH buckets that answer as documents arrive: "is this one a near copy of one kept before?"

    ``match(signature, keys)`` gathers the kept rows that share a band key with the document,
    compares their signatures with its own in insertion order and returns the first row whose
    estimated Jaccard is ``>= threshold`` (else -1); ``add(signature, keys)`` keeps it. Memory per
    kept document: its signature (4 * num_perm bytes) plus one dict entry per band (a Python int
    key and row, ~100 bytes each); no text.
    """

    def __init__(self, num_perm: int, threshold: float, bands: int, rows: int):
        self.num_perm, self.threshold, self.bands, self.rows = num_perm, threshold, bands, rows
        self._signatures = np.zeros((64, num_perm), dtype=np.uint32)
        self._buckets: list[dict[int, int | list[int]]] = [{} for _ in range(bands)]
        self.size = 0
        self.comparisons = 0

    def match(self, signature: np.ndarray, keys: np.ndarray) -> int:
        candidates: set[int] = set()
        for bucket, key in zip(self._buckets, keys.tolist()):
            rows = bucket.get(key)
            if rows is None:
                continue
            if isinstance(rows, int):
                candidates.add(rows)
            else:
                candidates.update(rows)
        if not candidates:
            return -1
        rows = np.array(sorted(candidates), dtype=np.int64)
        similarity = (self._signatures[rows] == signature).mean(axis=1)     # (n_candidates,)
        self.comparisons += len(rows)
        hits = np.flatnonzero(similarity >= self.threshold)
        return int(rows[hits[0]]) if hits.size else -1

    def add(self, signature: np.ndarray, keys: np.ndarray) -> int:
        row = self.size
        if row == len(self._signatures):     # grow by doubling: amortised O(1) appends
            self._signatures = np.resize(self._signatures, (2 * row, self.num_perm))
        self._signatures[row] = signature
        for bucket, key in zip(self._buckets, keys.tolist()):
            rows = bucket.get(key)
            if rows is None:
                bucket[key] = row
            elif isinstance(rows, int):
                bucket[key] = [rows, row]
            else:
                rows.append(row)
        self.size += 1
        return row


class LSHIndex:
    """Band buckets over MinHash signatures, stored compactly for streaming use.

    ``add(doc_id, signature)`` appends the signature to a growing (n, num_perm) uint32 array and
    its ``bands`` band keys to an (n, bands) uint64 array (each key: the band's r values combined
    polynomially in wrapping uint64 and mixed; equal bands give equal keys, and the 2^-64 chance
    that unequal bands collide only adds a candidate that verification then rejects).
    ``near_duplicate_pairs()`` sorts each band's keys, walks the runs of equal keys (the buckets)
    and verifies candidates by estimated Jaccard. Memory: 4 * num_perm + 8 * (bands + 1) bytes per
    document; no per-document Python objects.
    """

    def __init__(self, num_perm: int, threshold: float, bands: int | None = None, rows: int | None = None):
        if (bands is None) != (rows is None):
            raise ValueError(f"LSHIndex: give both bands and rows or neither, got bands={bands!r}, rows={rows!r}")
        if bands is None:
            bands, rows = optimal_bands(threshold, num_perm)
        if type(bands) is not int or type(rows) is not int or bands < 1 or rows < 1 or bands * rows > num_perm:
            raise ValueError(f"LSHIndex: need ints bands, rows >= 1 with bands * rows <= num_perm={num_perm}, "
                             f"got bands={bands!r}, rows={rows!r}")
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"LSHIndex: threshold must be in (0, 1], got {threshold!r}")
        self.num_perm, self.threshold, self.bands, self.rows = num_perm, threshold, bands, rows
        self._size = 0
        self._signatures = np.zeros((64, num_perm), dtype=np.uint32)
        self._keys = np.zeros((64, bands), dtype=np.uint64)
        self._doc_ids = np.zeros(64, dtype=np.int64)
        self.comparisons = 0   # signature comparisons made by near_duplicate_pairs

    def __len__(self) -> int:
        return self._size

    def _band_keys(self, signature: np.ndarray) -> np.ndarray:
        return band_keys(signature[None, :], self.bands, self.rows)[0]

    def add(self, doc_id: int, signature: np.ndarray) -> None:
        """Index one document's signature (num_perm,) under ``doc_id``."""
        if not isinstance(signature, np.ndarray) or signature.shape != (self.num_perm,):
            raise ValueError(f"LSHIndex.add: signature must be a numpy array of shape ({self.num_perm},), "
                             f"got {getattr(signature, 'shape', type(signature).__name__)}")
        if self._size == len(self._doc_ids):   # grow by doubling: amortised O(1) appends
            capacity = 2 * self._size
            self._signatures = np.resize(self._signatures, (capacity, self.num_perm))
            self._keys = np.resize(self._keys, (capacity, self.bands))
            self._doc_ids = np.resize(self._doc_ids, capacity)
        self._signatures[self._size] = signature
        self._keys[self._size] = self._band_keys(signature)
        self._doc_ids[self._size] = doc_id
        self._size += 1

    def buckets(self) -> Iterator[np.ndarray]:
        """Yield, per band, every bucket holding 2+ documents as an array of row indices (ascending)."""
        for band in range(self.bands):
            keys = self._keys[:self._size, band]
            order = np.argsort(keys, kind="stable")        # stable: rows stay ascending inside a bucket
            sorted_keys = keys[order]
            starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
            ends = np.r_[starts[1:], self._size]
            for start, end in zip(starts[ends - starts >= 2], ends[ends - starts >= 2]):
                yield order[start:end]

    def near_duplicate_pairs(self) -> set[tuple[int, int]]:
        """Verified pairs (doc_id_a, doc_id_b), a < b in insertion order, with estimated J >= threshold.

        In each bucket the earliest document is the pivot: every other member is compared with it
        and those that match are paired with it; the members that did not match form the rest of
        the bucket and the procedure repeats on them. A bucket of g near-copies costs g - 1
        comparisons (not g^2 / 2); truly dissimilar members cost more but rarely share a band.
        """
        pairs: set[tuple[int, int]] = set()
        compared: dict[tuple[int, int], bool] = {}   # (row, row) -> verdict, so bands never redo a pair
        signatures = self._signatures
        for rest in self.buckets():
            while len(rest) > 1:
                pivot, others = int(rest[0]), rest[1:]
                new = np.array([(pivot, int(o)) not in compared for o in others], dtype=bool)
                if new.any():
                    similarity = (signatures[others[new]] == signatures[pivot]).mean(axis=1)   # (n_new,)
                    self.comparisons += int(new.sum())
                    for other, value in zip(others[new].tolist(), (similarity >= self.threshold).tolist()):
                        compared[(pivot, other)] = value
                matched = np.array([compared[(pivot, int(o))] for o in others], dtype=bool)
                pivot_id = int(self._doc_ids[pivot])
                for other in others[matched]:
                    pairs.add((pivot_id, int(self._doc_ids[other])))
                rest = others[~matched]
        return pairs
