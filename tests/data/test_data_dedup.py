"""Exact and near de-duplication: planted near-duplicates at known Jaccard similarities."""
import math

import numpy as np
import pytest

from minillm.data import (
    LSHIndex,
    MinHasher,
    UnionFind,
    candidate_probability,
    deduplicate,
    estimate_jaccard,
    find_duplicates,
    optimal_bands,
)
from minillm.data.minhash import EMPTY, exact_jaccard, word_hashes

SHINGLE = 5


def _shingle_set(words, k=SHINGLE):
    return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}


def _jaccard(a, b):
    sa, sb = _shingle_set(a), _shingle_set(b)
    return len(sa & sb) / len(sa | sb)


def _plant(words, target, fresh):
    """Copy ``words`` with words replaced k apart so that the shingle Jaccard is ~ ``target``.

    Replacing one word changes the k shingles covering it; with replacements spaced k apart the
    changed sets are disjoint, so m replacements give J = (S - m k) / (S + m k), S = #shingles.
    """
    n_shingles = len(words) - SHINGLE + 1
    m = max(1, round(n_shingles * (1 - target) / (1 + target) / SHINGLE))
    out = list(words)
    for position in range(SHINGLE - 1, SHINGLE - 1 + SHINGLE * m, SHINGLE):
        assert position <= len(words) - SHINGLE
        out[position] = next(fresh)
    return out


@pytest.fixture(scope="module")
def planted():
    """40 random base documents, each with variants at Jaccard ~0.95, 0.9, 0.5, 0.2, plus 60 unrelated docs."""
    rng = np.random.default_rng(1234)
    vocab = [f"w{i}" for i in range(3000)]
    fresh = (f"fresh{i}" for i in range(10 ** 6))
    bases = [list(rng.choice(vocab, 200)) for _ in range(40)]
    docs = [" ".join(w) for w in bases]
    pairs = []   # (base index, variant index, exact Jaccard)
    for target in (0.95, 0.9, 0.5, 0.2):
        for b, words in enumerate(bases):
            variant = _plant(words, target, fresh)
            pairs.append((b, len(docs), _jaccard(words, variant)))
            docs.append(" ".join(variant))
    docs += [" ".join(rng.choice(vocab, 200)) for _ in range(60)]
    return docs, pairs


def test_planted_similarities_hit_their_targets(planted):
    _, pairs = planted
    for target, group in zip((0.95, 0.9, 0.5, 0.2), np.array_split(np.array(pairs), 4)):
        assert np.all(np.abs(group[:, 2] - target) < 0.03), target


def test_near_duplicates_found_and_dissimilar_pairs_kept(planted):
    docs, pairs = planted
    result = find_duplicates(docs, threshold=0.8, num_perm=128, shingle_size=SHINGLE, seed=0)
    high = [(a, b) for a, b, j in pairs if j >= 0.88]
    low = [(a, b) for a, b, j in pairs if j <= 0.55]
    recall = np.mean([result.cluster[b] == result.cluster[a] for a, b in high])
    assert recall >= 0.9, recall
    merged_low = [(a, b) for a, b in low if result.cluster[a] == result.cluster[b]]
    assert merged_low == []
    # Unrelated docs and base docs survive; the first of each cluster is the one kept.
    assert result.keep[:40].all() and result.keep[-60:].all()
    assert all(result.cluster[b] == a for a, b in high if result.cluster[b] == result.cluster[a])
    report = result.report
    assert report.docs_in == len(docs) and report.docs_out == int(result.keep.sum())
    assert report.near_duplicates == len(docs) - report.docs_out and report.exact_duplicates == 0
    # LSH keeps the work far below all-pairs (len(docs)^2 / 2 = 36,450 comparisons).
    assert report.candidate_comparisons < 400


def test_deduplicate_returns_kept_docs_in_order(planted):
    docs, _ = planted
    kept, report = deduplicate(docs, threshold=0.8, seed=0)
    result = find_duplicates(docs, threshold=0.8, seed=0)
    assert kept == [d for d, keep in zip(docs, result.keep) if keep]
    assert report.docs_out == len(kept)
    assert "dedup report" in str(report) and "12 bands x 10 rows" in str(report)


def test_exact_duplicates_including_whitespace_variants():
    a = "the quick brown fox jumps over the lazy dog " * 5
    b = "an entirely different text about something else " * 5
    docs = [a, b, a, "  " + a.replace(" ", "\n"), b, "", "   ", "The quick brown fox jumps"]
    kept, report = deduplicate(docs)
    assert kept == [a, b, "", "The quick brown fox jumps"]
    assert report.exact_duplicates == 4       # a, a (whitespace variant), b, "   " (same as "")
    assert report.near_duplicates == 0 and report.docs_without_words == 1


def test_case_differences_are_near_duplicates():
    text = " ".join(f"word{i}" for i in range(100))
    kept, report = deduplicate([text, text.upper()])
    assert kept == [text] and report.near_duplicates == 1 and report.exact_duplicates == 0


def test_transitive_clusters_keep_the_first_document():
    rng = np.random.default_rng(7)
    fresh = (f"fresh{i}" for i in range(10 ** 6))
    a = list(rng.choice([f"w{i}" for i in range(5000)], 400))
    b = _plant(a, 0.9, fresh)
    c = _plant(b[::-1], 0.9, fresh)[::-1]         # c ~ b, and further from a
    result = find_duplicates([" ".join(x) for x in (c, a, b)], threshold=0.8)
    # Whatever pairs verified, everything in one cluster is represented by the lowest index.
    assert set(result.cluster.tolist()) <= {0, 1, 2}
    assert all(result.cluster[i] <= i for i in range(3))
    uf = UnionFind()
    for _ in range(5):
        uf.add()
    uf.union(3, 4)
    uf.union(4, 1)
    assert [uf.find(i) for i in range(5)] == [0, 1, 2, 1, 1]


def test_find_duplicates_streams_a_generator():
    docs = [" ".join(f"t{i + j}" for j in range(50)) for i in range(0, 500, 50)] * 2
    result = find_duplicates(iter(docs))
    assert result.keep.tolist() == [True] * 10 + [False] * 10


def test_minhash_estimates_are_unbiased_within_their_error(planted):
    docs, pairs = planted
    hasher = MinHasher(num_perm=256, shingle_size=SHINGLE, seed=3)
    errors = []
    for a, b, j in pairs:
        sa, sb = hasher.shingles(docs[a]), hasher.shingles(docs[b])
        assert abs(exact_jaccard(sa, sb) - j) < 1e-9          # hashed shingle sets: no collisions here
        estimate = estimate_jaccard(hasher.signature_from_shingles(sa), hasher.signature_from_shingles(sb))
        sigma = math.sqrt(j * (1 - j) / 256)
        assert abs(estimate - j) <= 4.5 * sigma + 1e-9, (j, estimate)
        errors.append(estimate - j)
    assert abs(np.mean(errors)) < 0.01                        # no systematic bias


def test_minhash_is_deterministic_and_seeded():
    text = "to be or not to be that is the question whether tis nobler in the mind"
    s0, s0_again, s1 = MinHasher(seed=0).signature(text), MinHasher(seed=0).signature(text), MinHasher(seed=1).signature(text)
    assert s0.dtype == np.uint32 and s0.shape == (128,)
    np.testing.assert_array_equal(s0, s0_again)
    assert not np.array_equal(s0, s1)
    # Short documents (fewer words than the shingle size) are one shingle; empty ones have none.
    assert MinHasher().shingles("two words").size == 1
    assert MinHasher().shingles("  \n ").size == 0
    assert (MinHasher(num_perm=8).signature("") == EMPTY).all()


def _reference_signature(hasher, shingles):
    """One permutation hashing with densification in Python integers (the module docstring)."""
    k = hasher.num_perm
    bins = [[] for _ in range(k)]
    for h in shingles:
        bins[h * k >> 64].append(h)
    entries = [((min(b) * k) % 2**64) >> 32 if b else None for b in bins]
    return [entries[j] if entries[j] is not None
            else next(entries[i] for i in hasher.orders[j].tolist() if entries[i] is not None) for j in range(k)]


@pytest.mark.parametrize("size", [1, 3, 40, 500])
def test_signature_matches_a_reference_in_python_integers(size):
    hasher = MinHasher(num_perm=16, seed=5)
    shingles = np.random.default_rng(size).integers(0, 2**64, size=size, dtype=np.uint64, endpoint=False)
    expected = _reference_signature(hasher, [int(h) for h in shingles.tolist()])
    assert hasher.signature_from_shingles(shingles).tolist() == expected             # unsorted input
    assert hasher.signature_from_shingles(np.sort(shingles)).tolist() == expected
    assert hasher.signature_from_shingles(np.r_[shingles, shingles]).tolist() == expected   # repeats


def test_word_hashes_split_words_as_str_split_does():
    spaces = "".join(chr(c) for c in range(0x3001) if chr(c).isspace())
    rng = np.random.default_rng(0)
    letters = list("abcXYZ09éßΣж中😀-'.") + [" ", "\n"] + list(spaces)
    text = "".join(rng.choice(letters, 3000).tolist())
    words = text.split()
    assert len(words) > 100
    expected = [int(word_hashes(word)[0]) for word in words]      # each word alone (ASCII or UTF-32 path)
    assert word_hashes(text).tolist() == expected
    assert len(set(expected)) == len(set(words))                   # distinct words, distinct hashes
    assert word_hashes(" \t\u3000 ").size == 0
    # The ASCII (one byte per character) and UTF-32 paths hash a word alike.
    assert word_hashes("shingle é")[0] == word_hashes("shingle")[0]


def test_long_documents_are_hashed_in_blocks_with_the_same_result(monkeypatch):
    from minillm.data import minhash

    rng = np.random.default_rng(2)
    text = "".join(rng.choice(list("ab  \n\u3000é"), 5000).tolist()) + "x" * 300   # ends in a long word
    whole = MinHasher(seed=4).shingles(text)
    monkeypatch.setattr(minhash, "_BLOCK_CHARS", 64)
    np.testing.assert_array_equal(MinHasher(seed=4).shingles(text), whole)
    assert minhash._word_hashes_in_blocks(text).size == len(text.split())


def test_whitespace_table_covers_every_code_point_str_split_splits_on():
    assert not any(chr(c).isspace() for c in range(0x3001, 0x110000))


def test_minhash_estimates_match_exact_jaccard_on_random_pairs():
    """Random pairs over the whole range of J, long documents (many more shingles than bins) and
    short ones (fewer: densified entries): the estimate is unbiased and its error is the
    ~sqrt(J (1 - J) / num_perm) of MinHash."""
    rng = np.random.default_rng(7)
    vocab = [f"v{i}" for i in range(5000)]
    hasher = MinHasher(num_perm=128, shingle_size=SHINGLE, seed=11)
    errors, sigmas, similarities = [], [], []
    for pair in range(300):
        n_words = int(rng.choice([30, 80, 400, 1500]))
        base = rng.choice(vocab, n_words).tolist()
        other = list(base)
        cut = int(round(n_words * rng.random() ** 0.3))   # keep a random prefix (J spreads over 0..1) ...
        other[cut:] = rng.choice(vocab, n_words - cut).tolist()          # ... redraw the rest
        rate = rng.random() * 0.03                                       # and edit up to 3% of the prefix
        other[:cut] = [w if rng.random() > rate else "x" + w for w in other[:cut]]
        sa, sb = hasher.shingles(" ".join(base)), hasher.shingles(" ".join(other))
        j = exact_jaccard(sa, sb)
        similarities.append(j)
        errors.append(estimate_jaccard(hasher.signature_from_shingles(sa), hasher.signature_from_shingles(sb)) - j)
        sigmas.append(math.sqrt(j * (1 - j) / min(128, len(np.union1d(sa, sb)))))
    errors, sigmas = np.array(errors), np.array(sigmas)
    assert np.histogram(similarities, bins=[0, 0.3, 0.7, 0.9, 1.0])[0].min() >= 20    # the range is covered
    assert abs(errors.mean()) < 3 * errors.std() / math.sqrt(len(errors)) + 1e-3      # no bias
    assert np.abs(errors).mean() < 1 / math.sqrt(128)                                  # the MinHash band
    assert (np.abs(errors) <= 4.5 * sigmas + 1e-9).mean() > 0.99


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9])
def test_optimal_bands_put_the_s_curve_near_the_threshold(threshold):
    bands, rows = optimal_bands(threshold, 128)
    assert bands * rows <= 128
    assert abs((1 / bands) ** (1 / rows) - threshold) < 0.1
    assert candidate_probability(threshold + 0.1, bands, rows) > 0.9
    assert candidate_probability(threshold - 0.3, bands, rows) < 0.1


def test_lsh_index_buckets_and_validation():
    index = LSHIndex(num_perm=8, threshold=0.5, bands=4, rows=2)
    base = np.arange(8, dtype=np.uint32)
    for doc_id, signature in enumerate([base, base + 100, base.copy(), np.r_[base[:4], base[4:] + 50]]):
        index.add(doc_id, signature.astype(np.uint32))
    assert len(index) == 4
    assert index.near_duplicate_pairs() == {(0, 2), (0, 3)}
    with pytest.raises(ValueError, match="bands \\* rows <= num_perm"):
        LSHIndex(num_perm=8, threshold=0.5, bands=3, rows=3)
    with pytest.raises(ValueError, match="shape \\(8,\\)"):
        index.add(9, np.zeros(7, np.uint32))


@pytest.mark.parametrize("kwargs, words", [
    ({"threshold": 1.0}, "threshold"),
    ({"threshold": 0}, "threshold"),
    ({"num_perm": 0}, "num_perm"),
    ({"shingle_size": 2.5}, "shingle_size"),
    ({"seed": -1}, "seed"),
])
def test_dedup_validates_arguments(kwargs, words):
    with pytest.raises(ValueError, match=words):
        deduplicate(["a b c"], **kwargs)


def test_dedup_rejects_non_text():
    with pytest.raises(TypeError, match="single str"):
        deduplicate("one document")
    with pytest.raises(TypeError, match="document 1"):
        deduplicate(["fine", b"bytes"])
