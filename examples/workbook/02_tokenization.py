# Workbook chapter 2: tokenization (byte-level BPE from the naive loop to the fast trainer; GPT-2's vocabulary).
# %%
import os
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import minillm as mm
from minillm.data import default_corpus_path, read_corpus
from minillm.tokenizer import (
    END_OF_TEXT,
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    BPETokenizer,
    bytes_to_unicode,
    format_compression_report,
    train_bpe_naive,
)
from minillm.tokenizer.patterns import Splitter

SMALL = os.environ.get("MINILLM_WORKBOOK_SIZE", "full") == "small"   # CI runs the small size
SEED = 0
mm.manual_seed(SEED)
rng = np.random.default_rng(SEED)
started = time.perf_counter()

corpus = read_corpus(default_corpus_path())[0]          # the embedded corpus (Shakespeare's tragedies)
TRAIN_CHARS = 20_000 if SMALL else 100_000             # for the naive loop, which rescans the text per merge
NAIVE_MERGES = 60 if SMALL else 250
train_text = corpus[:TRAIN_CHARS]
heldout_text = corpus[-(20_000 if SMALL else 50_000):]  # the last play's end: never seen in training
print(f"size: {'small' if SMALL else 'full'}; corpus {len(corpus):,} characters, training on {len(train_text):,}, "
      f"held out {len(heldout_text):,}")

# %% [markdown]
# # 2. Tokenization: byte-level BPE
#
# A model reads integers, not text. The tokenizer maps text to a sequence of ids from a fixed
# vocabulary of $V$ tokens and back. The blueprint's choice (GPT-2, GPT-4, Llama 3) is
# **byte-level byte-pair encoding**:
#
# * the base vocabulary is the 256 possible **bytes**, so *every* string (any script, emoji,
#   binary junk) has an encoding, its UTF-8 bytes: no unknown token, and
#   $\mathrm{decode}(\mathrm{encode}(s)) = s$ always;
# * **merges** learned from a corpus add tokens for frequent byte sequences (" the", "ing",
#   "\n\n"), so common text costs few tokens. Fewer tokens per text means a longer effective
#   context for the same block size $T$ and less compute per byte; more merges mean a larger
#   embedding table ($V \times C$ parameters) and rarer, less-trained tokens.
#
# This chapter writes BPE training as the naive loop, checks minillm's fast trainer against
# it, derives why the regex pre-tokenization is there, checks encoding and decoding, adds a
# special token, and then loads GPT-2's real 50,257-token vocabulary into minillm and shows
# that it is the same algorithm with different data.

# %% [markdown]
# ## 2.1 Pre-tokenization: the regex split
#
# Before BPE sees the text, a regular expression cuts it into **chunks**; BPE never merges
# across a chunk boundary. GPT-4's pattern (`"gpt4"`, minillm's default) takes: contractions
# (`'s`, `'ll`), a letter run with at most one leading non-letter (so `" the"` keeps its space),
# digit runs of at most 3 (`"2026"` becomes `"202"`, `"6"`), punctuation runs, and whitespace runs.
# GPT-2's pattern (`"gpt2"`) is similar but splits contractions case-sensitively and digits in
# unbounded runs.
#
# Why split at all? Without it, the most frequent byte pairs of English include pairs that
# straddle words ("e" + " ", "," + " "), and merges build tokens that span words, such as
# `", and "` (section 2.6 prints the ones it learns): one meaning spread over many near-identical
# tokens (`"dog."`, `"dog!"`, `"dog,"`), the merge budget spent on accidental word junctions, and
# numbers glued to whatever follows them. With the split, a token is always a piece of *one*
# word (with at most one leading space or symbol), one number or one punctuation run.

# %%
sample = "I'll say it: 2026 ships, 3.14159 apples!\n\n  Don't\tstop."
gpt4_split = Splitter(GPT4_SPLIT_PATTERN, named=True).split
gpt2_split = Splitter(GPT2_SPLIT_PATTERN, named=True).split
print("gpt4:", gpt4_split(sample))
print("gpt2:", gpt2_split(sample))
assert "".join(gpt4_split(sample)) == sample == "".join(gpt2_split(sample))   # the chunks cover the text

# %% [markdown]
# ## 2.2 Training, the naive loop
#
# Every chunk becomes a **word**: the list of its UTF-8 byte values (ids 0–255). Then, for
# $k = 0, 1, \dots, M - 1$:
#
# 1. count every adjacent pair $(a, b)$ over all words: $c(a, b) = \sum_w \#\{i : w_i = a, w_{i+1} = b\}$;
# 2. take the most frequent pair $(a^\star, b^\star) = \arg\max c$;
# 3. give it the new id $256 + k$ and replace it in every word, left to right without overlap
#    (`a a a` $\to$ `aa a`).
#
# The learned tokens are nested: token $256 + k$ is the concatenation of two tokens with smaller
# ids, so the vocabulary is $V = 256 + M$ (plus special tokens). A merge lowers the number of
# tokens in the training words by the number of occurrences it replaces, $c(a^\star, b^\star)$
# less any overlapping ones (`a a a` holds two `a a` pairs but one merge), so the greedy choice
# is the pair that shortens the training text most *at this step*.
#
# **Ties.** When several pairs share the highest count, the rule must be fixed, or two correct
# implementations learn different vocabularies. minillm takes the smallest $(a, b)$: left id
# first, then right id (byte ids are byte values; merged ids grow in learning order).

# %%
def merge_pair(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """word with every occurrence of pair replaced by new_id, left to right, no overlaps."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def count_pairs(words: list[list[int]]) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = {}
    for word in words:
        for pair in zip(word, word[1:]):
            counts[pair] = counts.get(pair, 0) + 1
    return counts


def train_naive(text: str, num_merges: int, split, tie_break: str = "smallest") -> list[tuple[int, int]]:
    """BPE the textbook way: recount all pairs of all chunk occurrences before every merge.

    tie_break="smallest": among equal counts the smallest (left, right) wins (minillm's rule);
    tie_break="first seen": max() over the count dict, i.e. the pair that first occurred in the text."""
    words = [list(chunk.encode("utf-8")) for chunk in split(text)]
    merges = []
    for k in range(num_merges):
        counts = count_pairs(words)
        if not counts:
            break
        if tie_break == "smallest":
            best = min(counts, key=lambda pair: (-counts[pair], pair))
        else:
            best = max(counts, key=counts.get)        # dict order: first occurrence wins ties
        words = [merge_pair(word, best, 256 + k) for word in words]
        merges.append(best)
    return merges


print(merge_pair([97, 97, 97, 98], (97, 97), 256), "  (a a a b -> aa a b)")
clock = time.perf_counter()
naive_merges = train_naive(train_text, NAIVE_MERGES, gpt4_split)
naive_seconds = time.perf_counter() - clock
print(f"naive loop: {len(naive_merges)} merges in {naive_seconds:.2f} s")

# %% [markdown]
# ## 2.3 The fast trainer
#
# `BPETokenizer.train(texts, vocab_size, pattern)` learns the same merges without rescanning:
#
# * the corpus is reduced once to `{distinct chunk: count}` (a few thousand distinct words
#   instead of every occurrence), and pair counts are weighted by those counts;
# * after merging $(a, b)$ into $N$, only the neighbours of each occurrence change: for
#   `x a b y` $\to$ `x N y` the pairs $(x, a), (a, b), (b, y)$ lose the word's count and
#   $(x, N), (N, y)$ gain it; an index `pair -> words containing it` touches only those words;
# * the best pair comes from a heap ordered by $(-c, a, b)$: highest count first, then the
#   smallest pair, the same tie-break; entries whose count went down are re-filed lazily when
#   they surface.
#
# Each merge costs time proportional to the occurrences of the merged pair, not to the corpus.
# The same text, pattern and number of merges must give the *very same* merge list.

# %%
clock = time.perf_counter()
fast = BPETokenizer.train(train_text, vocab_size=256 + NAIVE_MERGES, pattern="gpt4")
fast_seconds = time.perf_counter() - clock
print(f"BPETokenizer.train: {len(fast.merges)} merges in {fast_seconds:.3f} s "
      f"({naive_seconds / fast_seconds:.0f}x faster than the naive loop here)")
assert fast.merges == naive_merges                                    # same merges, same order
assert train_bpe_naive(train_text, NAIVE_MERGES, pattern="gpt4") == naive_merges   # minillm's own naive twin
print("first merges:", [fast.vocab[256 + k] for k in range(12)])

# %% [markdown]
# **Where a different tie-break changes the result.** A loop that takes `max(counts,
# key=counts.get)` breaks ties by *first occurrence in the text*. It is still a correct BPE, but
# it learns the same merges only up to the first step where the top count is shared by two
# pairs and the two rules pick differently; from there the vocabularies diverge (the ids of all
# later merges shift). The relationship to check: identical up to that step, and at that step
# both choices have the same count.

# %%
first_seen = train_naive(train_text, NAIVE_MERGES, gpt4_split, tie_break="first seen")
diverge = next((k for k, (a, b) in enumerate(zip(first_seen, naive_merges)) if a != b), None)
if diverge is None:
    print(f"no tie decided differently within {NAIVE_MERGES} merges")
    assert first_seen == naive_merges
else:
    assert first_seen[:diverge] == naive_merges[:diverge]
    words = [list(chunk.encode("utf-8")) for chunk in gpt4_split(train_text)]
    for k, pair in enumerate(naive_merges[:diverge]):                # replay the common prefix
        words = [merge_pair(word, pair, 256 + k) for word in words]
    counts = count_pairs(words)
    smallest, earliest = naive_merges[diverge], first_seen[diverge]
    print(f"the rules agree on merges 0..{diverge - 1}; at merge {diverge} the count {counts[smallest]} is shared: "
          f"smallest pair {smallest} vs first-seen pair {earliest}")
    assert counts[smallest] == counts[earliest] == max(counts.values())
    assert smallest < earliest                                      # minillm took the smaller ids

# %% [markdown]
# ## 2.4 Encoding and decoding
#
# **Encoding** a new text: split it with the same pattern, then in each chunk start from its
# bytes and **apply the merges in the order they were learned**: find the adjacent pair with
# the lowest merge rank (its id $256 + k$), merge all its occurrences, repeat until no adjacent
# pair has a merge. This reproduces what training did to the training chunks (a merge only
# creates pairs of *higher* rank, so applying merges in rank order never misses one). minillm's
# encoder merges one occurrence at a time (lowest rank, leftmost first) with a chunk cache; the
# composed version below is the direct transcription of the rule.
#
# **Decoding** is a table lookup: each id to its bytes, concatenate, decode UTF-8. A single
# token may hold part of a multi-byte character (a merge of bytes, not of characters), so
# decode the whole sequence, not token by token.

# %%
def encode_composed(text: str, merges: list[tuple[int, int]], split, byte_ids=None) -> list[int]:
    """Split, then per chunk: merge the lowest-rank pair present (all occurrences), until none has a merge."""
    rank = {pair: 256 + k for k, pair in enumerate(merges)}
    byte_ids = byte_ids if byte_ids is not None else list(range(256))
    ids: list[int] = []
    for chunk in split(text):
        word = [byte_ids[b] for b in chunk.encode("utf-8")]
        while len(word) > 1:
            present = [rank[pair] for pair in zip(word, word[1:]) if pair in rank]
            if not present:
                break
            lowest = min(present)
            word = merge_pair(word, merges[lowest - 256], lowest)
        ids += word
    return ids


held_ids = fast.encode(heldout_text)
assert held_ids == encode_composed(heldout_text, fast.merges, gpt4_split)
print(f"held-out text: {len(heldout_text.encode()):,} bytes -> {len(held_ids):,} tokens "
      f"({len(heldout_text.encode()) / len(held_ids):.2f} bytes per token)")
print(fast.visualize(heldout_text[1000:1200]))

hard = ["", "naïve café, Ærø, Ελληνικά, 日本語, 🤖👩‍🔬", "\x00\x01 tabs\tand\r\nCRLF", "a" * 500, "  leading and trailing  "]
for text in hard + [heldout_text]:
    ids = fast.encode(text)
    assert fast.decode(ids) == text and fast.decode_bytes(ids) == text.encode("utf-8")
    assert ids == encode_composed(text, fast.merges, gpt4_split)
robot = fast.encode("🤖")
print("'🤖' ->", robot, "; its first token decodes alone to", repr(fast.decode(robot[:1])),
      "(a byte of a 4-byte character: U+FFFD), all of them to", repr(fast.decode(robot)))

# %% [markdown]
# ## 2.5 Special tokens
#
# A **special token** such as `<|endoftext|>` is a reserved id outside the merges, written
# between documents in the training stream (chapter 1's shards) so the model learns where a
# document ends, and used to stop generation. It is never produced by merging: training cuts
# the special strings out of the text before counting pairs, and encoding finds them before the
# regex split. Its id comes after the merges: $V = 256 + M + \#\text{specials}$.
#
# Text from users may contain the string `<|endoftext|>`. Turning it silently into the control
# id would let a user end a document or forge a chat turn (prompt injection), so `encode`
# refuses it by default; the caller says what it wants: `allowed_special="all"` (or a set) makes
# it the special id, `"none"` (or `encode_ordinary`) encodes it as plain text.

# %%
documents = [corpus[i:i + 4000] for i in range(0, 40_000, 4000)]
with_eot = BPETokenizer.train(END_OF_TEXT.join(documents), vocab_size=256 + 200 + 1, pattern="gpt4",
                              special_tokens=[END_OF_TEXT])
eot = with_eot.special_tokens[END_OF_TEXT]
print(with_eot, "| id of", END_OF_TEXT, "=", eot)
assert eot == 256 + len(with_eot.merges) and with_eot.vocab_size == eot + 1
assert not any(b"<|" in token for token in with_eot.vocab.values() if token != END_OF_TEXT.encode())

text = "the end.<|endoftext|>A new document"
try:
    with_eot.encode(text)
    raise AssertionError("the special token string was accepted without allowed_special")
except ValueError as error:
    print("default:", str(error)[:100], "...")
as_special = with_eot.encode(text, allowed_special="all")
as_text = with_eot.encode(text, allowed_special="none")
print("allowed_special='all' :", as_special)
print("allowed_special='none':", as_text)
assert as_special.count(eot) == 1 and eot not in as_text and as_text == with_eot.encode_ordinary(text)
assert with_eot.decode(as_special) == text == with_eot.decode(as_text)

# %% [markdown]
# ## 2.6 Watching the merges grow
#
# BPE training is greedy: the first $m$ merges of a long run are exactly what a run of $m$
# merges learns. So a tokenizer built from a prefix of the merge list *is* the smaller
# tokenizer, and one training run gives the whole curve of compression against vocabulary size.
# Adding merge $m + 1$ never increases the token count of a text (encoding with $m + 1$ merges is
# encoding with $m$, then merging the new pair wherever it occurs), so bytes per token can only
# grow with $m$. The curve flattens: early merges (" the", "nd") cover a large share of the
# text, later ones rare words. On held-out text it grows more slowly than on the training text
# (the late merges are words of the training plays). Without the split (`pattern=None`) merges
# cross words, and on this corpus that does not even buy compression: learned on the same text
# with the same number of merges, the split tokenizer needs fewer tokens on the training text and
# on held-out text (printed and checked below).

# %%
BIG_MERGES = 1000 if SMALL else 4000
big_text = corpus[:300_000] if SMALL else corpus[:-50_000]
clock = time.perf_counter()
big = BPETokenizer.train(big_text, vocab_size=256 + BIG_MERGES, pattern="gpt4")
print(f"trained {BIG_MERGES} merges on {len(big_text):,} characters in {time.perf_counter() - clock:.1f} s")
assert BPETokenizer.train(big_text, vocab_size=256 + 100, pattern="gpt4").merges == big.merges[:100]   # greedy: a prefix
NO_SPLIT_MERGES = BIG_MERGES // 4
same_text = big_text[:100_000]
no_split = BPETokenizer.train(same_text, vocab_size=256 + NO_SPLIT_MERGES, pattern=None)
with_split = BPETokenizer.train(same_text, vocab_size=256 + NO_SPLIT_MERGES, pattern="gpt4")
crossing = [t for t in no_split.vocab.values() if b" " in t.strip(b" ") and len(t) > 3][:10]
print("without the split, tokens span words:", crossing)


def bytes_per_token(tokenizer, text: str) -> float:
    return len(text.encode("utf-8")) / len(tokenizer.encode_ordinary(text))


def curve(merges, texts, pattern, byte_ids=None, points=None):
    points = points or sorted({int(m) for m in np.unique(np.geomspace(1, len(merges), 14).astype(int))} | {0})
    rows = []
    for m in points:
        prefix = BPETokenizer(merges[:m], pattern=pattern, byte_ids=byte_ids)
        rows.append([bytes_per_token(prefix, t) for t in texts])
    return np.array(points), np.array(rows)


train_sample = big_text[:len(heldout_text)]
points, ratios = curve(big.merges, [train_sample, heldout_text], "gpt4")
points_none, ratios_none = curve(no_split.merges, [same_text[:len(heldout_text)], heldout_text], None)
points_same, ratios_same = curve(with_split.merges, [same_text[:len(heldout_text)], heldout_text], "gpt4")
assert np.all(np.diff(ratios, axis=0) >= 0)          # more merges never cost more tokens
print(f"{NO_SPLIT_MERGES} merges learned on the same {len(same_text):,} characters: bytes per token "
      f"{ratios_same[-1, 0]:.3f} (gpt4 split) vs {ratios_none[-1, 0]:.3f} (no split) on the training text, "
      f"{ratios_same[-1, 1]:.3f} vs {ratios_none[-1, 1]:.3f} held out")
assert np.all(ratios_same[-1] > ratios_none[-1])
print(f"{'merges':>7} {'train B/token':>14} {'held-out B/token':>17}")
for m, (train_ratio, held_ratio) in zip(points, ratios):
    print(f"{m:>7} {train_ratio:>14.3f} {held_ratio:>17.3f}")
print(format_compression_report(big.compression_report(heldout_text)))

plt.figure(figsize=(6.5, 4))
plt.plot(points, ratios[:, 0], "o-", label=f"gpt4 split, {len(big_text) // 1000}k chars, training text")
plt.plot(points, ratios[:, 1], "o-", label=f"gpt4 split, {len(big_text) // 1000}k chars, held-out text")
plt.plot(points_same, ratios_same[:, 1], "^:", label=f"gpt4 split, {len(same_text) // 1000}k chars, held-out text")
plt.plot(points_none, ratios_none[:, 1], "s--", label=f"no split, {len(same_text) // 1000}k chars, held-out text")
plt.xscale("symlog", linthresh=1)
plt.xlabel("number of merges M (vocabulary 256 + M)")
plt.ylabel("UTF-8 bytes per token")
plt.title("BPE merges growing: compression vs vocabulary")
plt.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## 2.7 GPT-2's real vocabulary
#
# OpenAI published GPT-2's tokenizer as two files: `encoder.json` (token string $\to$ id, 50,257
# entries) and `vocab.bpe` (the 50,000 merges, one `left right` pair per line, in learning
# order). Two details make them look unlike a minillm tokenizer, and neither changes the
# algorithm:
#
# * the files store bytes as printable characters (`bytes_to_unicode`: the printable Latin-1
#   bytes stand for themselves, the others are shifted to U+0100 and up, so a space is `Ġ` and a
#   newline `Ċ`), and the 256 byte tokens have ids in that table's order rather than id = byte
#   value (minillm keeps this as `byte_ids`);
# * merge $k$ makes the token with id $256 + k$, and `<|endoftext|>` is id 50,256, after the merges.
#
# `BPETokenizer.from_gpt2(encoder.json, vocab.bpe)` reads them (checking that ids follow merge
# order) with GPT-2's split pattern. The files are looked for in `shared/data/gpt2` next to the
# repository or a folder above it; the section is skipped where they are not there.

# %%
def find_gpt2_files():
    here = Path.cwd().resolve()
    for folder in [here, *here.parents, *Path(mm.__file__).resolve().parents]:
        candidate = folder / "shared" / "data" / "gpt2"
        if (candidate / "encoder.json").is_file() and (candidate / "vocab.bpe").is_file():
            return candidate / "encoder.json", candidate / "vocab.bpe"
    return None


gpt2_files = find_gpt2_files()
if gpt2_files is None:
    print("SKIPPED (sections 2.7-2.8): GPT-2's encoder.json and vocab.bpe were not found in shared/data/gpt2 "
          "next to the repository or a folder above it; the rest of the chapter does not need them")
else:
    gpt2 = BPETokenizer.from_gpt2(*gpt2_files)
    print(gpt2, "from", gpt2_files[0].parent)
    printable = bytes_to_unicode()
    print("bytes as the files write them: space ->", printable[32], " newline ->", printable[10], " 'a' ->", printable[97])
    print("their ids: space", gpt2.byte_ids[32], " newline", gpt2.byte_ids[10], " 'a'", gpt2.byte_ids[97],
          "(byte_ids is a permutation of 0..255)")
    assert sorted(gpt2.byte_ids) == list(range(256)) and gpt2.vocab_size == 50257
    assert gpt2.special_tokens == {END_OF_TEXT: 50256}
    hello = gpt2.encode("Hello world")
    print("'Hello world' ->", hello)
    assert hello == [15496, 995]               # the ids GPT-2 itself produces (OpenAI's encoder.py, tiktoken)
    passage = heldout_text[2000:2300]
    ids = gpt2.encode(passage)
    print(f"{len(passage.encode())} bytes -> {len(ids)} GPT-2 tokens:", ids[:16], "...")
    print(gpt2.visualize(passage[:160]))
    assert gpt2.decode(ids) == passage
    print(format_compression_report(gpt2.compression_report(heldout_text)))

# %% [markdown]
# ## 2.8 The same algorithm
#
# What can be checked about a vocabulary trained on data we do not have? Three things, each an
# `assert`:
#
# 1. **The encoder.** The composed encoder of section 2.4, the one checked against the
#    tokenizer minillm trained, given GPT-2's merges and byte order, reproduces GPT-2's ids.
# 2. **The ranks are a BPE merge order.** In a vocabulary produced by BPE training, the bytes
#    of token $k$, encoded with the merges learned before it, come out as exactly two earlier
#    tokens, its two parts (when it was learned, those two sat side by side in the training
#    words, made by the earlier merges). So the merge list can be recovered from the token
#    strings listed by id alone, with no `vocab.bpe`: minillm does that when it reads a tiktoken
#    rank file (`load_tiktoken`). Written out as such a file and read back, GPT-2's vocabulary
#    gives back exactly the 50,000 merges of `vocab.bpe`, and a tokenizer minillm trained gives
#    back its own merges.
# 3. **Greedy prefixes.** GPT-2 with only its first $m$ merges is the tokenizer a greedy run
#    would have stopped at after $m$ merges; its tokens refine the full tokenizer's (every
#    boundary of the full encoding is a boundary of the prefix encoding: merges only join). The
#    curve of bytes per token against $m$ for GPT-2's merges sits beside the one minillm learned
#    on Shakespeare, and the two tokenizers' first merges are largely the same strings. At equal
#    $m$ the merges learned on the same kind of text compress it better (printed below): the
#    algorithm is shared, the vocabulary is a property of the training data.

# %%
if gpt2_files is None:
    print("SKIPPED: GPT-2's files were not found (see above)")
else:
    # 1. the composed encoder reproduces GPT-2's ids
    for text in [passage, "Hello world", "naïve café 🤖 1234567 don't DON'T\n\n\tEnd.", heldout_text[:5000]]:
        assert encode_composed(text, gpt2.merges, gpt2_split, gpt2.byte_ids) == gpt2.encode(text)
    print("the composed encoder with GPT-2's merges and byte order gives GPT-2's ids")

    # 2. the merge order is recoverable from the ranks alone, for GPT-2 and for minillm's own
    with tempfile.TemporaryDirectory() as folder:
        for name, tokenizer, pattern in [("GPT-2", gpt2, "gpt2"), ("minillm-trained", big, "gpt4")]:
            path = Path(folder) / f"{name}.tiktoken"
            tokenizer.save_tiktoken(path)                      # token bytes by id, no merge list
            recovered = BPETokenizer.load_tiktoken(path, pattern=pattern)
            assert recovered.merges == tokenizer.merges and recovered.byte_ids == tokenizer.byte_ids
            print(f"{name}: all {len(recovered.merges):,} merges recovered from the token list alone")

    # 3. prefixes: refinement, and the curve
    def boundaries(tokenizer, text):
        lengths = [len(tokenizer.decode_bytes([i])) for i in tokenizer.encode_ordinary(text)]
        return set(np.cumsum(lengths).tolist())

    full_cuts = boundaries(gpt2, heldout_text[:5000])
    print(f"{'GPT-2 merges':>12} {'tokens':>7}  first 12 ids of {passage[:30]!r}")
    for m in [0, 100, 1000, 10_000, 50_000]:
        prefix = BPETokenizer(gpt2.merges[:m], pattern="gpt2", byte_ids=gpt2.byte_ids)
        assert full_cuts <= boundaries(prefix, heldout_text[:5000])
        print(f"{m:>12,} {len(prefix.encode(passage)):>7}  {prefix.encode(passage)[:12]}")
    assert BPETokenizer(gpt2.merges[:50_000], pattern="gpt2", byte_ids=gpt2.byte_ids).encode(passage) == ids

    gpt2_points, gpt2_ratios = curve(gpt2.merges, [heldout_text], "gpt2", byte_ids=gpt2.byte_ids,
                                     points=[0, 1, 3, 10, 30, 100, 300, 1000, 3000, 10_000, 30_000, 50_000])
    shakespeare_gpt2 = BPETokenizer.train(big_text, vocab_size=256 + BIG_MERGES, pattern="gpt2")
    mm_points, mm_ratios = curve(shakespeare_gpt2.merges, [heldout_text], "gpt2")
    first = 100
    gpt2_first = [gpt2.vocab[256 + k] for k in range(first)]
    mm_first = [shakespeare_gpt2.vocab[256 + k] for k in range(first)]
    shared = len(set(gpt2_first) & set(mm_first))
    print(f"first merges, GPT-2 (WebText):         {gpt2_first[:10]}")
    print(f"first merges, minillm on Shakespeare: {mm_first[:10]}")
    print(f"{shared} of the first {first} tokens are the same strings")
    at = mm_points[-1]
    gpt2_at = bytes_per_token(BPETokenizer(gpt2.merges[:at], pattern="gpt2", byte_ids=gpt2.byte_ids), heldout_text)
    print(f"at M = {at} merges on held-out Shakespeare: {mm_ratios[-1, 0]:.3f} bytes/token with merges learned on "
          f"Shakespeare, {gpt2_at:.3f} with GPT-2's (learned on web text); GPT-2's full 50,000: {gpt2_ratios[-1, 0]:.3f}")
    assert mm_ratios[-1, 0] > gpt2_at                 # in-domain merges compress in-domain text better
    assert gpt2_first[0] == mm_first[0] == b" t" and shared >= first // 2

    plt.figure(figsize=(6.5, 4))
    plt.plot(gpt2_points, gpt2_ratios[:, 0], "o-", label="GPT-2's merges (trained on WebText)")
    plt.plot(mm_points, mm_ratios[:, 0], "s-", label="minillm, trained on the corpus (gpt2 split)")
    plt.xscale("symlog", linthresh=1)
    plt.xlabel("number of merges M")
    plt.ylabel("bytes per token on held-out Shakespeare")
    plt.title("one algorithm, two training sets")
    plt.legend(fontsize=8)
    plt.show()
print(f"chapter ran in {time.perf_counter() - started:.1f} s")

# %% [markdown]
# ## Checklist
#
# | setting | typical | when it is off |
# |---|---|---|
# | vocabulary size $V = 256 + M + $ specials | 50k (GPT-2), 100k (GPT-4), a few thousand for a small model on a small corpus | too small: long sequences (fewer bytes per token, so less text fits in the block size $T$, more compute per byte); too large for the data: thousands of tokens seen a handful of times, whose embedding rows stay near their initialisation (rare tokens come out garbled), and a $V \times C$ embedding and output layer that dominate a small model's parameters |
# | split pattern | `"gpt4"` | `None`: tokens span words and punctuation (`", my lord"`), the same word gets many tokens; a pattern that does not cover every character silently drops text (minillm refuses such a custom pattern) |
# | training text | the data distribution the model will see | trained on one domain, another compresses badly (code through a prose tokenizer: runs of spaces as single bytes); check bytes per token on held-out text of each kind |
# | tie-break, byte order | fixed by the implementation | two "correct" trainers disagree after the first tied count, and token ids stop matching between tools: compare merges, not just vocab sizes |
# | special tokens | `<\|endoftext\|>` between documents | missing: the model never learns where documents end and runs on at generation; allowed in user text: prompt injection (forged document or chat boundaries) |
# | same tokenizer at train and inference | the one saved with the dataset (`meta.json`) | a different tokenizer: valid-looking ids that mean other tokens, a model that outputs nonsense with no error; the right merges with another split pattern: segmentations the model never saw in training, quietly worse output |
#
# ## Exercises
#
# 1. **Digits.** Train two tokenizers of 500 merges on the corpus plus a few thousand random
#    numbers, one with `"gpt2"` and one with `"gpt4"`. Which learns tokens like `"1234"`, and
#    how does each tokenize `"123456789"`? Why is grouping digits by three better for
#    arithmetic? *Hint:* compare `tokenizer.visualize("12345 + 678 = 13023")`.
# 2. **Your own encoder.** `encode_composed` merges the lowest-rank pair everywhere at once;
#    minillm merges the leftmost occurrence of the lowest-rank pair one at a time. Prove that
#    both give the same ids, then check the overlapping case (`"aaa"` with the merge `(a, a)`:
#    both must give `[aa, a]`, scanning left to right). *Hint:* a merge only creates pairs that
#    contain the new token, and every merge of such a pair has a higher rank than the new token.
