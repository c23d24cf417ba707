# Workbook chapter 1: data (cleaning, exact and MinHash-LSH near-duplicate removal, token shards).
# %%
import hashlib
import json
import os
import re
import struct
import tempfile
import time
import unicodedata
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import minillm as mm
from minillm.data import (
    MinHasher,
    TokenDataset,
    candidate_probability,
    clean_document,
    clean_documents,
    deduplicate,
    default_corpus_path,
    estimate_jaccard,
    find_duplicates,
    optimal_bands,
    prepare_dataset,
    read_corpus,
    read_shard,
    read_shard_header,
    split_train_val,
)
from minillm.data.dedup import content_key
from minillm.tokenizer import END_OF_TEXT, BPETokenizer

SMALL = os.environ.get("MINILLM_WORKBOOK_SIZE", "full") == "small"   # CI runs the small size
SEED = 0
mm.manual_seed(SEED)
rng = np.random.default_rng(SEED)
started = time.perf_counter()
print("size:", "small" if SMALL else "full")

# %% [markdown]
# # 1. Data: cleaning, de-duplication, shards
#
# A language model learns whatever its token stream contains, so the first stage of the
# blueprint turns raw text into that stream:
#
# 1. **cleaning** makes every document canonical (one kind of newline, one spelling of each
#    character, no invisible control bytes, no trailing whitespace), so that equal text becomes
#    equal bytes, equal tokens and equal hashes;
# 2. **de-duplication** drops exact copies and *near* copies (a page mirrored with a different
#    footer, a licence repeated a thousand times): duplicated text is memorised, wastes compute
#    and leaks evaluation data into training. Exact copies are found with a content hash; near
#    copies with **MinHash** signatures and **locality-sensitive hashing (LSH)**, which never
#    compares all pairs;
# 3. **shards**: the surviving documents are tokenized and written as flat binary arrays of
#    token ids that the training loop memory-maps.
#
# `minillm prepare` runs these steps, streaming over many input files (`minillm.data`:
# `clean.py`, `dedup.py` + `minhash.py`, `shards.py` + `dataset.py`, `stream.py`). This chapter
# derives why each step works, rebuilds it in a few lines, checks the library against the
# rebuild, and shows the numbers.

# %% [markdown]
# ## 1.1 Cleaning
#
# `clean_document` applies four rules, in this order:
#
# | rule | what | why |
# |---|---|---|
# | line endings | `\r\n` and a lone `\r` become `\n` | a Windows file must tokenize like a Unix one; the blank-line rule sees one newline kind |
# | control characters | code points of category Cc (U+0000–U+001F, U+007F–U+009F) are removed, except `\n` and `\t` | NUL bytes, ANSI colour escapes, form feeds are noise the model would learn to emit; done *before* NFC so a removed control between a letter and its combining accent cannot leave a non-NFC pair behind |
# | NFC | Unicode normalisation form C | "é" can be one code point (U+00E9) or two ("e" + U+0301): different bytes, different tokens, different hashes for the same text. NFC composes them; NFKC would also rewrite "ﬁ" or "²", which is a change of content, so it is not used |
# | whitespace | trailing spaces/tabs of every line removed; a run of 4+ newlines (3+ blank lines) becomes 3 newlines (2 blank lines); leading blank lines and trailing whitespace of the document removed | invisible differences that defeat exact de-duplication and waste tokens; spaces *inside* lines and indentation are kept (they are content in code and verse) |
#
# Then `clean_documents` drops documents shorter than `min_chars` after cleaning.
#
# First, the rules written out in a few lines (the composed version), then checked against the
# library on a messy example and on thousands of random strings.

# %%
def clean_composed(text: str) -> str:
    """The four cleaning rules, written out (a twin of minillm.data.clean_document)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")                    # 1. line endings
    text = "".join(c for c in text
                   if c in "\n\t" or unicodedata.category(c) != "Cc")          # 2. control characters
    text = unicodedata.normalize("NFC", text)                                  # 3. one spelling per character
    text = "\n".join(line.rstrip(" \t") for line in text.split("\n"))         # 4a. trailing spaces/tabs
    text = re.sub(r"\n{4,}", "\n\n\n", text)                                   # 4b. at most 2 blank lines
    text = re.sub(r"\A(?:[ \t]*\n)+", "", text)                                # 4c. leading blank lines
    return text.rstrip()                                                       # 4d. trailing whitespace


messy = ("\r\n\n  \nCafe\u0301 menu:\x00\r\n"          # CRLF, decomposed e + accent, a NUL byte
         "  caf\u00e9 au lait \t\r\n"                    # the composed spelling, trailing spaces
         "\x1b[31mred\x1b[0m  text\r\n\n\n\n\n\n"        # ANSI escapes (ESC is Cc), six newlines
         "end   \r")
cleaned = clean_document(messy)
print("before:", repr(messy))
print("after: ", repr(cleaned))
assert cleaned == clean_composed(messy)
assert cleaned == "Café menu:\n  café au lait\n[31mred[0m  text\n\n\nend"
# Only the ESC byte is a control character: the rest of a colour escape ("[31m") is printable
# text and stays. Removing whole escape sequences would need a rule of its own.
# NFC made the two spellings of "café" the same code points, hence the same bytes:
print("decomposed:", "cafe\u0301".encode(), " composed:", "caf\u00e9".encode(),
      " after NFC both are", unicodedata.normalize("NFC", "cafe\u0301").encode())
assert unicodedata.normalize("NFC", "cafe\u0301") == "caf\u00e9"

# %%
# The composed twin and the library agree on random strings drawn from an alphabet of the
# troublemakers (newline kinds, controls incl. U+0085, combining marks, spaces and tabs).
alphabet = ["a", "b", "e", " ", "  ", "\t", "\n", "\r", "\r\n", "\x00", "\x07", "\x1b", "\x85", "\x7f",
            "\u0301", "\u00e9", "\u200d", "\ufb01", "\u00a0"]
trials = 500 if SMALL else 5000
for _ in range(trials):
    text = "".join(rng.choice(alphabet, size=rng.integers(0, 40)))
    assert clean_document(text) == clean_composed(text), repr(text)
print(f"clean_document == clean_composed on {trials} random strings")

# %% [markdown]
# `clean_documents` cleans a list and reports what it changed, so a surprising corpus shows up
# as a surprising count (a million control characters means a binary file slipped in).

# %%
raw_docs = [messy, "Short one.\r\n", "\n\n\n" + "A tidy paragraph of plain text, long enough to keep." + "   \n\n"]
docs_clean, cleaning = clean_documents(raw_docs, min_chars=32)
print(cleaning)
assert cleaning.docs_in == 3 and cleaning.docs_out == 2 and cleaning.dropped_too_short == 1
# The report counts what the rules did: NFC changed one document; the control characters are
# those left after rule 1 (lone \r became \n first) that are Cc but neither \n nor \t.
after_rule_1 = messy.replace("\r\n", "\n").replace("\r", "\n")
controls = [c for c in after_rule_1 if c not in "\n\t" and unicodedata.category(c) == "Cc"]
print("control characters removed:", controls)
assert cleaning.nfc_docs_changed == 1 and cleaning.control_chars_removed == len(controls) == 3

# %% [markdown]
# ## 1.2 Exact duplicates
#
# Two documents are exact duplicates when they are equal after collapsing every run of
# whitespace to one space (re-wrapped lines, a different indentation, an extra blank line do not
# make a new document; a change of case does). minillm keys each document by a 16-byte BLAKE2b
# digest of that normalised text and keeps the first document with each key: one dictionary
# lookup per document, memory 16 bytes per document, no text kept.

# %%
def content_key_composed(text: str) -> bytes:
    return hashlib.blake2b(" ".join(text.split()).encode("utf-8"), digest_size=16).digest()


corpus_text = clean_document(read_corpus(default_corpus_path())[0])   # the embedded corpus: one document
corpus_words = corpus_text.split()
print(f"embedded corpus: {len(corpus_text):,} characters, {len(corpus_words):,} words")
passage = corpus_words[1000:1040]
original = " ".join(passage)
rewrapped = "\n".join("  ".join(passage[i:i + 7]) for i in range(0, len(passage), 7)) + "\n\n"
shouted = original.upper()
for name, text in [("original", original), ("re-wrapped", rewrapped), ("upper case", shouted)]:
    print(f"{name:<11} key {content_key(text).hex()[:16]}...  {text[:48]!r}")
    assert content_key(text) == content_key_composed(text)
assert content_key(original) == content_key(rewrapped) != content_key(shouted)

# %% [markdown]
# ## 1.3 Near duplicates: shingles and the Jaccard similarity
#
# A document $d$ becomes the **set** $S(d)$ of its $k$-shingles: every run of $k$ consecutive
# words (casefolded, split on whitespace; minillm's default $k = 5$). Two documents are similar
# when their sets overlap a lot, measured by the **Jaccard similarity**
#
# $$J(A, B) = \frac{|A \cap B|}{|A \cup B|} \in [0, 1].$$
#
# Changing one word of a long document removes the (up to) $k$ shingles that contain it and adds
# $k$ new ones, so $m$ scattered word substitutions in $n$ words leave about $n - km$ shared
# shingles: $J \approx (n - km) / (n + km)$. With $k = 5$, replacing 2% of the words gives
# $J \approx 0.82$.
#
# Computing $J$ exactly for every pair of $N$ documents costs $N^2/2$ set intersections: $5
# \cdot 10^{11}$ of them for a million documents. MinHash replaces each set by a short
# **signature** whose agreement rate estimates $J$; LSH then finds the pairs with high agreement
# without comparing all pairs.
#
# ### Why a MinHash entry agrees with probability $J$
#
# Let $\pi$ be a uniformly random permutation of the universe of shingles and define
# $h_\pi(A) = \min_{x \in A} \pi(x)$. Look at the element $x^\star$ of $A \cup B$ with the
# smallest $\pi$-value. Because $\pi$ is uniformly random, every element of $A \cup B$ is
# equally likely to be $x^\star$: $\Pr[x^\star = x] = 1/|A \cup B|$.
#
# * If $x^\star \in A \cap B$, it is the minimum of both sets: $h_\pi(A) = h_\pi(B) = \pi(x^\star)$.
# * If $x^\star \in A \setminus B$, then $h_\pi(A) = \pi(x^\star)$, while every element of $B$ is
#   in $A \cup B$ and is not $x^\star$, so $h_\pi(B) > \pi(x^\star)$: they differ. The same holds
#   for $x^\star \in B \setminus A$.
#
# Hence
#
# $$\Pr_\pi\left[h_\pi(A) = h_\pi(B)\right] = \Pr[x^\star \in A \cap B] = \frac{|A \cap B|}{|A \cup B|} = J(A, B).$$
#
# With $K$ independent permutations $\pi_1 \dots \pi_K$ the **signature** is
# $\big(h_{\pi_1}(A), \dots, h_{\pi_K}(A)\big)$ and the fraction of equal entries
# $\hat J = \frac1K \sum_j \mathbf 1[h_{\pi_j}(A) = h_{\pi_j}(B)]$ is a mean of $K$ independent
# Bernoulli($J$) variables:
#
# $$\mathbb E[\hat J] = J, \qquad \operatorname{sd}(\hat J) = \sqrt{\frac{J (1 - J)}{K}} \le \frac{1}{2\sqrt K}.$$
#
# With $K = 128$ the standard error is at most $0.044$: estimates land within about
# $1/\sqrt{K} = 0.088$ (two standard errors) of $J$.
#
# **The composed version.** A random permutation of all 64-bit values is out of reach, but a
# *bijection* of the 64-bit integers that scrambles bits well acts like one on the few thousand
# shingle hashes we apply it to: $\pi_j(x) = \mathrm{mix}(x \oplus \kappa_j)$ with a random key
# $\kappa_j$ and splitmix64's finaliser as the mixer (xor-shifts and odd multiplications, each
# invertible). Shapes: $n$ shingle hashes $\to$ an $(n, K)$ table of permuted values $\to$ its
# column minima, the $(K,)$ signature.
#
# **What minillm does instead** (`MinHasher`, one-permutation hashing with densification): one
# hash per shingle, the 64-bit range cut into $K$ equal bins, entry $j$ = the smallest hash in
# bin $j$. Inside a bin the argument above holds unchanged (the smallest hash of $A \cup B$ in
# the bin is a uniformly random element of it), so each entry still agrees with probability $J$;
# empty bins borrow the entry of another bin chosen in a fixed random order, which keeps that
# probability. It costs one sorted search per document ($O(K \log n)$) instead of $K$ hash
# functions over all $n$ shingles ($O(Kn)$). The bins sample shingles without replacement, so its
# error is, if anything, slightly smaller than the formula above.

# %%
SHINGLE = 5
NUM_PERM = 128


def shingle_set(text: str, k: int = SHINGLE) -> set[tuple[str, ...]]:
    """The k-word shingles of text (casefolded, whitespace-split); fewer than k words: one shingle."""
    words = text.casefold().split()
    if len(words) < k:
        return {tuple(words)} if words else set()
    return {tuple(words[i:i + k]) for i in range(len(words) - k + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 (each step is invertible), wrapping arithmetic."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(shingles: set) -> np.ndarray:
    """(n,) uint64: an 8-byte BLAKE2b hash of each shingle (deterministic, unlike Python's hash())."""
    return np.array([int.from_bytes(hashlib.blake2b("\x1f".join(s).encode(), digest_size=8).digest(), "little")
                     for s in shingles], dtype=np.uint64)


def minhash_composed(shingles: set, keys: np.ndarray) -> np.ndarray:
    """(K,) uint64 classical MinHash: entry j = min over shingles of pi_j(x) = mix64(x ^ key_j)."""
    x = shingle_hashes(shingles)                     # (n,)
    permuted = mix64(x[:, None] ^ keys[None, :])     # (n, K): every shingle under every permutation
    return permuted.min(axis=0)                      # (K,)


perm_keys = np.random.default_rng(SEED).integers(0, 2**63, size=NUM_PERM, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
a_text = " ".join(corpus_words[5000:5600])
x = shingle_hashes(shingle_set(a_text))
print("shingles:", x.shape, "-> permuted table:", mix64(x[:, None] ^ perm_keys[None, :]).shape,
      "-> signature:", minhash_composed(shingle_set(a_text), perm_keys).shape)
hasher = MinHasher(num_perm=NUM_PERM, shingle_size=SHINGLE, seed=SEED)
print("minillm: shingle hashes", hasher.shingles(a_text).shape, hasher.shingles(a_text).dtype,
      "-> signature", hasher.signature(a_text).shape, hasher.signature(a_text).dtype)
assert hasher.shingles(a_text).size == len(shingle_set(a_text))   # the same shingles, hashed its own way

# %% [markdown]
# ### The estimate against the exact value
#
# Pairs of documents with planted edits: a 600-word passage of the corpus and a copy in which a
# random fraction of the words is replaced by random corpus words and one random span is
# deleted. For each pair: the exact $J$ of the shingle sets, the composed classical MinHash
# estimate, and minillm's estimate (`estimate_jaccard` of two `MinHasher` signatures).

# %%
vocabulary = np.array(sorted(set(corpus_words)))


def plant_edits(words: list[str], rate: float, rng: np.random.Generator) -> list[str]:
    """A copy of words with a fraction ``rate`` substituted by random corpus words and one span of
    up to rate * len(words) words deleted."""
    words = list(words)
    replace = np.flatnonzero(rng.random(len(words)) < rate)
    for i, word in zip(replace, rng.choice(vocabulary, size=replace.size)):
        words[i] = str(word)
    span = int(rng.integers(0, int(rate * len(words)) + 1))
    start = int(rng.integers(0, len(words) - span + 1))
    return words[:start] + words[start + span:]


num_pairs = 40 if SMALL else 200
pair_rng = np.random.default_rng(SEED + 1)
pairs = []
for _ in range(num_pairs):
    start = int(pair_rng.integers(0, len(corpus_words) - 600))
    words = corpus_words[start:start + 600]
    rate = 0.25 * float(pair_rng.uniform()) ** 2           # spreads J over (0, 1]
    pairs.append((" ".join(words), " ".join(plant_edits(words, rate, pair_rng))))

exact, composed, library = [], [], []
for doc_a, doc_b in pairs:
    sa, sb = shingle_set(doc_a), shingle_set(doc_b)
    exact.append(jaccard(sa, sb))
    composed.append(float(np.mean(minhash_composed(sa, perm_keys) == minhash_composed(sb, perm_keys))))
    library.append(estimate_jaccard(hasher.signature(doc_a), hasher.signature(doc_b)))
    # minillm's hashed shingle sets have the same exact Jaccard (no 64-bit hash collisions here)
    ha, hb = hasher.shingles(doc_a), hasher.shingles(doc_b)
    assert abs(np.intersect1d(ha, hb).size / np.union1d(ha, hb).size - exact[-1]) < 1e-12
exact, composed, library = map(np.array, (exact, composed, library))

standard_error = np.sqrt(exact * (1 - exact) / NUM_PERM)
for name, estimate in [("composed", composed), ("minillm", library)]:
    error = estimate - exact
    z = error[standard_error > 0] / standard_error[standard_error > 0]
    within = np.mean(np.abs(error) <= 1 / np.sqrt(NUM_PERM))
    print(f"{name:<9} mean error {error.mean():+.4f}   RMS error {np.sqrt(np.mean(error ** 2)):.4f}   "
          f"max |error| {np.abs(error).max():.4f}   RMS z-score {np.sqrt(np.mean(z ** 2)):.2f}   "
          f"within 1/sqrt(K) = {1 / np.sqrt(NUM_PERM):.3f}: {within:.0%}")
    assert abs(error.mean()) < 3 * 0.5 / np.sqrt(NUM_PERM * len(error))   # unbiased (3 standard errors of a mean)
    assert np.sqrt(np.mean(z ** 2)) < 1.5          # errors of the size sqrt(J(1-J)/K) predicts
    assert within >= 0.85                          # about 1/sqrt(K) at most, as derived

grid = np.linspace(0, 1, 101)
plt.figure(figsize=(6, 5))
plt.fill_between(grid, grid - 2 * np.sqrt(grid * (1 - grid) / NUM_PERM), grid + 2 * np.sqrt(grid * (1 - grid) / NUM_PERM),
                 color="0.85", label=r"$J \pm 2\sqrt{J(1-J)/K}$")
plt.plot(grid, grid, "k-", lw=0.8)
plt.scatter(exact, composed, s=14, label="composed (K permutations)")
plt.scatter(exact, library, s=14, marker="x", label="minillm (one permutation, densified)")
plt.xlabel("exact Jaccard of the shingle sets")
plt.ylabel(f"MinHash estimate (K = {NUM_PERM})")
plt.title("MinHash estimates the Jaccard similarity")
plt.legend(loc="upper left")
plt.show()

# %% [markdown]
# The derivation also predicts the *spread* of one pair's estimate over random hash functions:
# a Binomial$(K, J)/K$ with standard deviation $\sqrt{J(1-J)/K}$. Re-hashing one pair with many
# seeds (each seed draws new hash keys and densification orders) shows it.

# %%
num_seeds = 100 if SMALL else 400
middle = int(np.argmin(np.abs(exact - 0.5)))          # the pair whose J is closest to 0.5
doc_a, doc_b = pairs[middle]
estimates = np.array([estimate_jaccard(*(MinHasher(NUM_PERM, SHINGLE, seed).signature(d) for d in (doc_a, doc_b)))
                      for seed in range(num_seeds)])
predicted_sd = np.sqrt(exact[middle] * (1 - exact[middle]) / NUM_PERM)
print(f"J = {exact[middle]:.3f}: mean estimate {estimates.mean():.3f}, sd {estimates.std(ddof=1):.4f} "
      f"(Bernoulli prediction {predicted_sd:.4f}) over {num_seeds} seeds")
assert abs(estimates.mean() - exact[middle]) < 4 * predicted_sd / np.sqrt(num_seeds)
assert 0.7 < estimates.std(ddof=1) / predicted_sd < 1.2    # without replacement: a little below 1

plt.figure(figsize=(6, 3.5))
plt.hist(estimates, bins=np.arange(-0.5, NUM_PERM + 1.5) / NUM_PERM, density=True, label="minillm, one seed each")
binomial = np.array([np.exp(np.sum(np.log(np.arange(NUM_PERM - j + 1, NUM_PERM + 1)))
                            - np.sum(np.log(np.arange(1, j + 1))))
                     * exact[middle] ** j * (1 - exact[middle]) ** (NUM_PERM - j) for j in range(NUM_PERM + 1)])
plt.plot(np.arange(NUM_PERM + 1) / NUM_PERM, binomial * NUM_PERM, "k.-", lw=0.8, label=f"Binomial({NUM_PERM}, J) / K")
plt.axvline(exact[middle], color="r", lw=1, label="exact J")
plt.xlim(exact[middle] - 0.2, exact[middle] + 0.2)
plt.xlabel("estimated Jaccard")
plt.legend(fontsize=8)
plt.title("spread of one pair's estimate over hash seeds")
plt.show()

# %% [markdown]
# ### LSH banding: the S-curve
#
# Comparing signatures is cheap, but comparing all pairs is still $N^2/2$ comparisons. LSH cuts
# the signature into $b$ **bands** of $r$ rows ($br \le K$) and hashes each band to a bucket key;
# only documents that share a bucket in at least one band (**candidates**) are compared. For a
# pair with Jaccard $s$, treating the entries as independent with $\Pr[\text{agree}] = s$:
#
# $$\Pr[\text{a given band agrees in all } r \text{ rows}] = s^r, \qquad
#   \Pr[\text{no band agrees}] = (1 - s^r)^b,$$
#
# $$P(s) = \Pr[\text{candidate}] = 1 - (1 - s^r)^b .$$
#
# $P$ is an S-curve: near 0 for small $s$ (few false candidates), near 1 for large $s$ (few
# missed duplicates). Its steepest point: from $\ln P'(s) = \text{const} + (r-1)\ln s + (b-1)\ln(1 - s^r)$,
#
# $$\frac{d}{ds}\ln P'(s) = \frac{r-1}{s} - \frac{(b-1)\, r s^{r-1}}{1 - s^r} = 0
#   \iff s^r = \frac{r-1}{rb-1} \iff s^\star = \left(\frac{r-1}{rb-1}\right)^{1/r} \approx \left(\frac1b\right)^{1/r}.$$
#
# `optimal_bands(threshold, K)` chooses $(b, r)$ minimising a weighted area of false positives
# ($\int_0^t P$) and false negatives ($\int_t^1 (1 - P)$), weighting misses 4:1 because every
# candidate is verified with the full signature afterwards (a false candidate costs one cheap
# comparison; a miss is a duplicate that stays).

# %%
THRESHOLD = 0.8
bands, rows = optimal_bands(THRESHOLD, NUM_PERM)
steepest = ((rows - 1) / (rows * bands - 1)) ** (1 / rows)
print(f"optimal_bands({THRESHOLD}, {NUM_PERM}) = {bands} bands x {rows} rows; steepest point s* = {steepest:.3f}, "
      f"(1/b)^(1/r) = {(1 / bands) ** (1 / rows):.3f}")
slope = np.gradient(candidate_probability(grid, bands, rows), grid)
assert abs(grid[np.argmax(slope)] - steepest) <= 0.011      # the grid's spacing
assert np.allclose(candidate_probability(grid, bands, rows), 1 - (1 - grid ** rows) ** bands)

# The empirical candidate rate: for a few pairs, over many seeds, does any band agree in full?
def shares_a_band(sig_a: np.ndarray, sig_b: np.ndarray) -> bool:
    return bool((sig_a[:bands * rows].reshape(bands, rows) == sig_b[:bands * rows].reshape(bands, rows)).all(axis=1).any())


lsh_seeds = 60 if SMALL else 300
hashers = [MinHasher(NUM_PERM, SHINGLE, seed) for seed in range(lsh_seeds)]
chosen = [int(np.argmin(np.abs(exact - target))) for target in (0.55, 0.65, 0.72, 0.78, 0.84, 0.9, 0.95)]
measured = []
for index in chosen:
    doc_a, doc_b = pairs[index]
    measured.append(np.mean([shares_a_band(h.signature(doc_a), h.signature(doc_b)) for h in hashers]))
    predicted = float(candidate_probability(exact[index], bands, rows))
    print(f"J = {exact[index]:.3f}: candidate in {measured[-1]:.0%} of {lsh_seeds} seeds, S-curve {predicted:.0%}")
    assert abs(measured[-1] - predicted) <= 4 * np.sqrt(predicted * (1 - predicted) / lsh_seeds) + 0.05

plt.figure(figsize=(6, 4))
for b, r in [(bands, rows), (32, 4), (4, 32)]:
    plt.plot(grid, candidate_probability(grid, b, r), label=f"b={b}, r={r}" + (" (minillm)" if (b, r) == (bands, rows) else ""))
plt.scatter(exact[chosen], measured, color="k", zorder=3, label="measured (minillm signatures)")
plt.axvline(THRESHOLD, color="0.5", ls="--", lw=1, label=f"threshold {THRESHOLD}")
plt.xlabel("Jaccard similarity s")
plt.ylabel(r"P(candidate) = $1-(1-s^r)^b$")
plt.title(f"LSH S-curves, K = {NUM_PERM}")
plt.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 1.4 The library's de-duplication on a corpus with planted copies
#
# `deduplicate(docs, threshold=0.8)` runs the whole pipeline: exact keys first (an exact copy
# never reaches MinHash), signatures into an `LSHIndex`, candidates from shared band buckets,
# each candidate verified by its estimated $J \ge$ threshold, accepted pairs merged into clusters
# with union-find, and the first document of each cluster kept (input order).
#
# The corpus: 400-word passages of the embedded text, plus exact copies (re-wrapped lines), near
# copies (4 words substituted: at most $4k = 20$ of 396 shingles change, $J \ge 376/416 = 0.90$)
# and distant rewrites (40 words substituted: $J \approx 0.4$, which must survive). The composed reference compares **all pairs** with the exact
# Jaccard; the library must reach the same verdict on every document while comparing only LSH
# candidates.

# %%
num_originals = 30 if SMALL else 200
corpus_rng = np.random.default_rng(SEED + 2)
starts = corpus_rng.choice(len(corpus_words) // 400, size=num_originals, replace=False) * 400
originals = [corpus_words[s:s + 400] for s in starts]             # non-overlapping 400-word passages


def substitute(words: list[str], count: int, rng: np.random.Generator) -> list[str]:
    """A copy of words with ``count`` words (at distinct random positions) replaced by random corpus words."""
    words = list(words)
    for i, word in zip(rng.choice(len(words), size=count, replace=False), rng.choice(vocabulary, size=count)):
        words[i] = str(word)
    return words


docs, planted = [], []
for index, words in enumerate(originals):
    docs.append(" ".join(words)); planted.append(("original", index))
for index in corpus_rng.choice(num_originals, size=num_originals // 3, replace=False):
    words = originals[index]
    docs.append("\n".join(" ".join(words[i:i + 9]) for i in range(0, len(words), 9))); planted.append(("exact", index))
for index in corpus_rng.choice(num_originals, size=num_originals // 2, replace=False):
    docs.append(" ".join(substitute(originals[index], 4, corpus_rng))); planted.append(("near", index))
for index in corpus_rng.choice(num_originals, size=num_originals // 4, replace=False):
    docs.append(" ".join(substitute(originals[index], 40, corpus_rng))); planted.append(("rewrite", index))
order = corpus_rng.permutation(np.arange(num_originals, len(docs)))      # copies after the originals, shuffled
docs = docs[:num_originals] + [docs[i] for i in order]
planted = planted[:num_originals] + [planted[i] for i in order]
print(f"{len(docs)} documents:", {kind: sum(p[0] == kind for p in planted) for kind in ("original", "exact", "near", "rewrite")})

# Composed reference: exact keys, then ALL pairs by exact Jaccard, union-find, keep the first of each cluster.
sets = [shingle_set(d) for d in docs]
parent = list(range(len(docs)))


def root(i: int) -> int:
    while parent[i] != i:
        i = parent[i]
    return i


all_pairs_j = []
for i in range(len(docs)):
    for j in range(i + 1, len(docs)):
        similarity = jaccard(sets[i], sets[j])
        all_pairs_j.append(similarity)
        if content_key(docs[i]) == content_key(docs[j]) or similarity >= THRESHOLD:
            low, high = sorted((root(i), root(j)))
            parent[high] = low
keep_reference = np.array([root(i) == i for i in range(len(docs))])
all_pairs_j = np.array(all_pairs_j)
closest = all_pairs_j[all_pairs_j < 1][np.argmin(np.abs(all_pairs_j[all_pairs_j < 1] - THRESHOLD))]
closest_sd = np.sqrt(closest * (1 - closest) / NUM_PERM)
print(f"all pairs: {len(all_pairs_j):,} exact Jaccards; the one closest to the threshold is J = {closest:.3f}, "
      f"{abs(closest - THRESHOLD) / closest_sd:.1f} standard errors of the estimate away")
assert abs(closest - THRESHOLD) > 3 * closest_sd     # so the estimate cannot flip a verdict in practice

result = find_duplicates(docs, threshold=THRESHOLD, num_perm=NUM_PERM, shingle_size=SHINGLE, seed=SEED)
kept, report = deduplicate(docs, threshold=THRESHOLD, num_perm=NUM_PERM, shingle_size=SHINGLE, seed=SEED)
print(report)
assert np.array_equal(result.keep, keep_reference)
assert kept == [d for d, k in zip(docs, keep_reference) if k]
assert report.exact_duplicates == sum(p[0] == "exact" for p in planted)
assert report.near_duplicates == sum(p[0] == "near" for p in planted)
assert all(result.keep[i] == (kind in ("original", "rewrite")) for i, (kind, _) in enumerate(planted))
assert all(result.cluster[i] == source for i, (kind, source) in enumerate(planted) if kind in ("exact", "near"))
print(f"candidate comparisons: {report.candidate_comparisons} (all pairs would be {len(all_pairs_j):,})")

plt.figure(figsize=(6, 3))
plt.hist(all_pairs_j[all_pairs_j > 0.02], bins=50, range=(0, 1), color="0.4")
plt.axvline(THRESHOLD, color="r", ls="--", label=f"threshold {THRESHOLD}")
plt.yscale("log")
plt.xlabel("exact Jaccard of a pair (pairs above 0.02)")
plt.ylabel("pairs")
plt.legend()
plt.title("planted copies sit far from the threshold; unrelated passages near 0")
plt.show()

# %% [markdown]
# ## 1.5 Token shards
#
# Training reads random windows of the token stream millions of times, so the stream is stored
# the way it is read: flat little-endian arrays of token ids, one **shard** file per
# `shard_tokens` ids, each with a 32-byte header:
#
# | offset | bytes | field |
# |---|---|---|
# | 0 | 8 | magic `b"MINILLM\0"` |
# | 8 | 4 | format version (uint32, 1) |
# | 12 | 2 | item size: 2 = uint16 ids, 4 = uint32 ids |
# | 14 | 2 | reserved (0) |
# | 16 | 8 | token count $N$ (uint64) |
# | 24 | 8 | vocab size $V$ (uint64; every id is $< V$) |
# | 32 | $N \cdot$ item size | the ids |
#
# uint16 holds ids up to 65535, so any $V \le 65536$ halves the disk and page-cache footprint
# (GPT-2's 50,257 fits). A reader **memory-maps** the ids after the header: the OS pages them in
# on demand, so a 100 GB dataset costs no resident memory until a window is read.
#
# `prepare_dataset(docs, tokenizer, folder)` splits the documents into train and validation
# (the validation set is the tail of the text, cut at a line break near
# $(1 - \text{val\_fraction})$ of the characters), encodes each split with an end-of-text token
# between documents, writes `train_000000.bin, ...` and `val_000000.bin, ...`, and finally
# `meta.json`: vocabulary size, the tokenizer itself, and per split the shard names, token and
# byte counts, and a **manifest** (name, token count, SHA-256 of each shard file).
# `meta.json` is written last, so a folder without it is an interrupted prepare.
# `TokenDataset(folder)` checks every shard against the manifest when it opens them.

# %%
tokenizer = BPETokenizer.train(corpus_text[:200_000], vocab_size=256 + 256 + 1, pattern="gpt4",
                               special_tokens=[END_OF_TEXT])
eot = tokenizer.special_tokens[END_OF_TEXT]
print(tokenizer, "end-of-text id", eot)
workdir = tempfile.TemporaryDirectory()
folder = Path(workdir.name) / "dataset"
meta = prepare_dataset(kept, tokenizer, folder, val_fraction=0.1, shard_tokens=8_000, eot_token_id=eot)
for path in sorted(folder.iterdir()):
    print(f"  {path.name:<18} {path.stat().st_size:>9,} bytes")
for split in ("train", "val"):
    info = meta["splits"][split]
    print(f"{split}: {info['documents']} documents, {info['tokens']:,} tokens, {info['bytes']:,} bytes of text, "
          f"{info['eot_tokens']} end-of-text tokens")
print(json.dumps(meta["splits"]["train"]["manifest"][0], indent=1))

# %% [markdown]
# Reading a shard by hand (the composed version) and with `read_shard` (the library's memory map)
# gives the same ids; the header says how many there are and what type they have.

# %%
first_shard = folder / meta["splits"]["train"]["shards"][0]
raw = first_shard.read_bytes()
magic, version, item_size, reserved, count, vocab_size = struct.unpack("<8sIHHQQ", raw[:32])
ids_by_hand = np.frombuffer(raw[32:], dtype="<u2" if item_size == 2 else "<u4")
print(f"header: magic={magic!r} version={version} item size={item_size} count={count:,} vocab={vocab_size}")
print("first ids:", ids_by_hand[:12], "->", repr(tokenizer.decode(ids_by_hand[:12])))
memmap = read_shard(first_shard)
print("read_shard:", type(memmap).__name__, memmap.dtype, memmap.shape, "header:", read_shard_header(first_shard))
assert magic == b"MINILLM\0" and count == ids_by_hand.size == memmap.size and vocab_size == tokenizer.vocab_size
assert np.array_equal(ids_by_hand, memmap)
assert hashlib.sha256(raw).hexdigest() == meta["splits"]["train"]["manifest"][0]["sha256"]

# %% [markdown]
# The dataset class reads the shards back; the checks: the token counts add up (manifest, meta,
# shards), each split is exactly its documents encoded and joined by the end-of-text id, and a
# changed byte in a shard is refused.

# %%
dataset = TokenDataset(folder)
print(dataset)
train_docs, val_docs = split_train_val(kept, 0.1)
for split, split_docs in (("train", train_docs), ("val", val_docs)):
    tokens = dataset.tokens(split)
    info = meta["splits"][split]
    expected = sum(len(tokenizer.encode_ordinary(d)) for d in split_docs) + len(split_docs) - 1
    print(f"{split}: {len(tokens):,} tokens in {len(info['shards'])} shard(s) "
          f"{[entry['tokens'] for entry in info['manifest']]}; expected {expected:,}")
    assert len(tokens) == dataset.num_tokens(split) == sum(e["tokens"] for e in info["manifest"]) == expected
    joined = np.asarray(tokens[0:len(tokens)])           # a memmap, or several gathered into one array
    assert tokenizer.decode(joined) == END_OF_TEXT.join(split_docs)
    assert int((joined == eot).sum()) == info["eot_tokens"] == len(split_docs) - 1
    print(f"  bytes per token {dataset.num_bytes(split) / (len(tokens) - info['eot_tokens']):.2f}")

damaged = bytearray(raw)
damaged[40] ^= 1                                     # flip one bit of one token id
first_shard.write_bytes(bytes(damaged))
try:
    TokenDataset(folder)
    raise AssertionError("a damaged shard was accepted")
except ValueError as error:
    print("damaged shard refused:", str(error)[:110], "...")
first_shard.write_bytes(raw)
assert TokenDataset(folder).num_tokens("train") == meta["splits"]["train"]["tokens"]

plt.figure(figsize=(6, 2.5))
names = [e["name"] for s in ("train", "val") for e in meta["splits"][s]["manifest"]]
plt.bar(names, [e["tokens"] for s in ("train", "val") for e in meta["splits"][s]["manifest"]],
        color=["C0" if n.startswith("train") else "C1" for n in names])
plt.xticks(rotation=45, ha="right", fontsize=7)
plt.ylabel("tokens")
plt.title("shards: full ones of shard_tokens, then the remainder")
plt.show()
del memmap, dataset, tokens
workdir.cleanup()
print(f"chapter ran in {time.perf_counter() - started:.1f} s")

# %% [markdown]
# ## Checklist
#
# | setting | minillm default | when it is off |
# |---|---|---|
# | cleaning: NFC, control characters | on | the same word gets several token spellings (embedding capacity wasted on "é" vs "e"+U+0301); exact dedup misses copies that differ only in encoding; the model samples stray `\x1b[` escapes or NUL bytes |
# | `min_chars` | 32 | too low: menus, boilerplate lines and empty pages survive; too high: short poems, code snippets, Q&A pairs are lost (watch `dropped (too short)` in the report) |
# | dedup `threshold` | 0.8 | too high (0.95): near copies (mirrors, templated pages) survive and are memorised: training loss keeps dropping while validation stalls, and the model regurgitates them verbatim; too low (0.5): distinct documents on one topic or with shared boilerplate are dropped, losing data |
# | `shingle_size` $k$ | 5 words | small $k$ (1–2): every English text shares most shingles ("of the"), unrelated documents look similar; large $k$: a single edit changes $k$ shingles, so real near copies fall below the threshold |
# | `num_perm` $K$ | 128 | the estimate's standard error is $\sqrt{J(1-J)/K}$: $K = 16$ gives $\pm 0.1$, so verdicts near the threshold become coin flips; larger $K$ costs memory ($4K$ bytes per document) and time |
# | bands $	imes$ rows | `optimal_bands` (12 $	imes$ 10 at 0.8) | S-curve midpoint $(1/b)^{1/r}$ far above the threshold: duplicates are never even compared (missed); far below: most pairs become candidates and dedup approaches all-pairs cost |
# | `shard_tokens` | $2^{24}$ | tiny shards: thousands of files and open memory maps; shards larger than a disk or a transfer limit are awkward to move; the count does not change what training sees |
# | `val_fraction` | 0.1 | too small: a noisy validation loss that cannot tell runs apart; documents duplicated across train and val (dedup skipped) make validation loss look far better than it is |
#
# ## Exercises
#
# 1. **Chains.** Build three documents with $J(A,B) pprox J(B,C) pprox 0.85$ but
#    $J(A,C) pprox 0.7$ (substitute words in two disjoint halves). What do `find_duplicates`
#    and `minillm.data.find_duplicates_streaming` keep, and why do they differ? *Hint:* read the
#    docstring of `minillm/data/dedup.py` on clustering versus streaming.
# 2. **Choose the bands.** For a threshold of 0.5 and $K = 128$, compare `optimal_bands` with
#    $(b, r) = (64, 2)$ and $(8, 16)$: plot the three S-curves and count, on the pairs of
#    section 1.3, the candidates and the misses each would give. *Hint:* the steepest point is
#    $((r-1)/(rb-1))^{1/r}$.
