"""BPE training: learn merges from a corpus.

Algorithm
---------
1. Pre-tokenize the corpus once and count each distinct chunk (``count_chunks``). Special token
   strings are cut out first, so they never take part in merges. BPE never merges across chunks,
   so the corpus is fully described by ``{chunk: count}``: a few tens of thousands of distinct
   words instead of millions of occurrences.
2. Each distinct chunk becomes a "word": the list of its UTF-8 byte values (token ids 0..255).
   ``pair_counts[(a, b)]`` = sum over words of (occurrences of the adjacent pair in the word) x
   (the word's count); ``pair_words[(a, b)]`` lists the words that contain the pair.
3. Repeat ``num_merges`` times: take the pair with the highest count (tie-break below), give it
   the next id ``256 + k``, and replace it in *only the words that contain it* (left to right,
   non-overlapping: ``aaa`` -> ``[aa, a]``). Only the pairs next to each replaced occurrence
   change count (``merge_in_word``); the rest of the corpus is never rescanned.
4. The best pair comes from a max-heap of ``(-count, a, b)`` with lazy invalidation: counts of
   existing pairs only ever go *down* (only pairs containing the new token go up, and those are
   new), so a popped entry whose count is stale is pushed back with its current count.

Tie-break rule (deterministic training)
---------------------------------------
Among pairs with the same count, the pair ``(a, b)`` with the smallest ids wins, comparing the
left id first, then the right id: byte ids are byte values and merged ids grow in learning order,
so earlier/lower tokens win. On ``"aaabdaaabac"`` this gives ``aa`` (count 4), then ``ab``
(tied with ``(aa, a)`` at 2; ``a`` = 97 < ``aa`` = 256), then ``(aa, ab)`` -- the classic example.

The naive twin
--------------
``train_bpe_naive`` is the same training written the textbook way: recount every pair of every
chunk occurrence before each merge. It keeps none of the bookkeeping above (distinct-chunk
counts, incremental deltas, the lazy heap), so it is slow (each merge rescans the corpus) and
plainly correct; the tests check that both learn the very same merges, as the fused ops are
checked against their composed twins.
"""
from __future__ import annotations

import heapq
import re
import warnings
from collections import Counter
from typing import Iterable

import regex
from tqdm import tqdm

from .checks import check_no_surrogates
from .patterns import Splitter, resolve_pattern
from .special import SpecialTokenMatcher


def count_chunks(texts: Iterable[str], splitter: Splitter, specials: SpecialTokenMatcher,
                 verbose: bool = False) -> Counter:
    """Pre-tokenize every text and count the distinct chunks: ``{chunk: occurrences}``.

    Long texts are split in blocks at safe cut points (see ``patterns``), so memory stays
    proportional to one block plus the distinct chunks, not to the corpus.
    """
    counts: Counter = Counter()
    total_chars = 0
    # A list's size is known up front; a generator's is not (the bar then just counts).
    known_total = sum(len(t) for t in texts if isinstance(t, str)) if isinstance(texts, (list, tuple)) else None
    with tqdm(desc="pre-tokenizing", total=known_total, unit="char", unit_scale=True,
              disable=not verbose) as progress:
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}]={text!r:.60} has type {type(text).__name__}; expected str")
            check_no_surrogates(text, f"texts[{index}]")
            total_chars += len(text)
            done = 0
            for piece in specials.strip(text):
                for block in splitter.blocks(piece):
                    counts.update(splitter.split(block))
                    progress.update(len(block))
                    done += len(block)
            progress.update(len(text) - done)  # the special token strings that were cut out
    if total_chars == 0:
        raise ValueError("texts is an empty corpus (no characters); expected at least one non-empty text")
    return counts


def learn_merges(chunk_counts: dict[str, int], num_merges: int, verbose: bool = False) -> list[tuple[int, int]]:
    """Learn up to ``num_merges`` merges; merge k makes token id 256 + k (see module docstring).

    Returns fewer merges (with a warning) when every chunk has become a single token before
    ``num_merges`` is reached.
    """
    words: list[list[int]] = []
    counts: list[int] = []
    for chunk, count in chunk_counts.items():
        data = chunk.encode("utf-8")
        if len(data) >= 2:  # a single byte has no pair to merge
            words.append(list(data))
            counts.append(count)

    pair_counts: dict[tuple[int, int], int] = {}
    # Lists, not sets: far less memory. A word stays listed after it lost the pair (the pair
    # occurred elsewhere too); merging such a word changes nothing and is skipped.
    pair_words: dict[tuple[int, int], list[int]] = {}
    for index, word in enumerate(words):
        count = counts[index]
        for pair in zip(word, word[1:]):
            pair_counts[pair] = pair_counts.get(pair, 0) + count
        for pair in set(zip(word, word[1:])):  # each word listed once per pair
            if pair in pair_words:
                pair_words[pair].append(index)
            else:
                pair_words[pair] = [index]
    heap = [(-count, left, right) for (left, right), count in pair_counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    with tqdm(total=num_merges, desc="BPE merges", unit=" merges", disable=not verbose) as progress:
        while len(merges) < num_merges:
            best = _pop_most_frequent(heap, pair_counts)
            if best is None:
                break
            new_id = 256 + len(merges)
            merges.append(best)
            _apply_merge(best, new_id, words, counts, pair_counts, pair_words, heap)
            progress.update(1)
    if len(merges) < num_merges:
        warnings.warn(
            f"BPE training stopped after {len(merges)} merges (asked for {num_merges}): every chunk "
            "of the corpus is already a single token; the vocabulary is smaller than vocab_size",
            stacklevel=3,
        )
    return merges


def _pop_most_frequent(heap: list, pair_counts: dict[tuple[int, int], int]) -> tuple[int, int] | None:
    """Pop the pair with the highest current count (smallest ids on ties); None when none is left."""
    while heap:
        negative_count, left, right = heap[0]
        current = pair_counts.get((left, right))
        if current == -negative_count:
            heapq.heappop(heap)
            return left, right
        if current is None:  # the pair no longer occurs anywhere
            heapq.heappop(heap)
        else:  # its count went down since this entry was pushed: re-file it under the true count
            heapq.heapreplace(heap, (-current, left, right))
    return None


def _apply_merge(pair: tuple[int, int], new_id: int, words: list[list[int]], counts: list[int],
                 pair_counts: dict[tuple[int, int], int], pair_words: dict[tuple[int, int], list[int]],
                 heap: list) -> None:
    """Merge ``pair`` into ``new_id`` in every word that contains it and update the statistics."""
    delta: dict[tuple[int, int], int] = {}
    for index in pair_words.pop(pair):
        new_pairs: set[tuple[int, int]] = set()
        merged = merge_in_word(words[index], pair, new_id, counts[index], delta, new_pairs)
        if merged is None:
            continue  # a stale entry: the pair is no longer in this word
        words[index] = merged
        for new_pair in new_pairs:  # record where the brand-new pairs (with new_id) live
            if new_pair in pair_words:
                pair_words[new_pair].append(index)
            else:
                pair_words[new_pair] = [index]
    for changed_pair, change in delta.items():
        count = pair_counts.get(changed_pair, 0) + change
        if count > 0:
            pair_counts[changed_pair] = count
            if new_id in changed_pair:  # only new pairs gain count; old ones are fixed lazily
                heapq.heappush(heap, (-count, changed_pair[0], changed_pair[1]))
        else:
            pair_counts.pop(changed_pair, None)
            pair_words.pop(changed_pair, None)


def merge_in_word(word: list[int], pair: tuple[int, int], new_id: int, count: int,
                  delta: dict[tuple[int, int], int], new_pairs: set[tuple[int, int]]) -> list[int] | None:
    """Replace every occurrence of ``pair`` in ``word`` with ``new_id`` (left to right), add the
    pair count changes, weighted by the word's ``count``, to ``delta`` and the pairs that contain
    ``new_id`` to ``new_pairs``. Returns the merged word, or None if ``pair`` is absent.

    Only the neighbours of each occurrence change: with ``x a b y`` -> ``x N y``, the pairs
    ``(x, a)``, ``(a, b)``, ``(b, y)`` lose ``count`` and ``(x, N)``, ``(N, y)`` gain it. ``x`` is
    taken from the merged output, so back-to-back occurrences (``a b a b``) are counted right.
    """
    left, right = pair
    length = len(word)
    merged: list[int] = []
    start = 0
    found = False
    while True:
        try:
            i = word.index(left, start)  # jump to the next candidate (a C-level scan)
        except ValueError:
            break
        if i + 1 < length and word[i + 1] == right:
            merged += word[start:i]
            if merged:
                before = merged[-1]
                delta[(before, left)] = delta.get((before, left), 0) - count
                delta[(before, new_id)] = delta.get((before, new_id), 0) + count
                new_pairs.add((before, new_id))
            if i + 2 < length:
                after = word[i + 2]
                delta[(right, after)] = delta.get((right, after), 0) - count
                delta[(new_id, after)] = delta.get((new_id, after), 0) + count
                new_pairs.add((new_id, after))
            delta[pair] = delta.get(pair, 0) - count
            merged.append(new_id)
            start = i + 2
            found = True
        else:
            merged += word[start:i + 1]
            start = i + 1
    if not found:
        return None
    merged += word[start:]
    return merged


def train_bpe_naive(texts: str | Iterable[str], num_merges: int, pattern: str | None = "gpt4",
                    special_tokens: Iterable[str] = ()) -> list[tuple[int, int]]:
    """Learn ``num_merges`` BPE merges the textbook way: count all pairs, merge the most frequent.

    The reference for ``BPETokenizer.train`` (``count_chunks`` + ``learn_merges``): the same
    arguments give the same merges (``BPETokenizer.train(texts, 256 + num_merges +
    len(special_tokens), pattern, special_tokens).merges``), at a cost of O(corpus bytes) per
    merge instead of O(occurrences of the merged pair).

    1. Every text is cut at the special token strings (longest first where two start at the same
       place, as in encoding); the strings themselves are dropped, so they never take part in a
       merge.
    2. Each remaining piece is split with ``pattern`` (``"gpt2"``, ``"gpt4"``, a custom regex, or
       None for no split); every chunk *occurrence* becomes a word, the list of its UTF-8 byte
       values (ids 0..255). BPE never merges across chunks.
    3. For k = 0, 1, ..., num_merges - 1: count every adjacent pair (a, b) in every word; take
       the highest count, ties to the smallest (a, b) -- left id first, then right id (the
       documented tie-break of the module docstring); give it id 256 + k; replace it in every
       word left to right without overlap (``aaa`` -> ``[aa, a]``).

    Returns the merges in learning order; fewer than ``num_merges`` (without a warning) when no
    word has two tokens left.
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    _, pattern_string = resolve_pattern(pattern)
    ordered_specials = sorted(special_tokens, key=len, reverse=True)
    special_splitter = re.compile("|".join(map(re.escape, ordered_specials))) if ordered_specials else None

    words: list[list[int]] = []
    for text in texts:
        pieces = special_splitter.split(text) if special_splitter is not None else [text]
        for piece in pieces:
            chunks = [piece] if pattern_string is None else \
                [match.group() for match in regex.finditer(pattern_string, piece)]
            words += [list(chunk.encode("utf-8")) for chunk in chunks if chunk]

    merges: list[tuple[int, int]] = []
    for k in range(num_merges):
        pair_counts = Counter(pair for word in words for pair in zip(word, word[1:]))
        if not pair_counts:
            break
        best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
        words = [_replace_pair(word, best, 256 + k) for word in words]
        merges.append(best)
    return merges


def _replace_pair(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """``word`` with every occurrence of ``pair`` replaced by ``new_id``, scanning left to right
    (an occurrence that overlaps the previous one is not merged: ``a a a`` -> ``aa a``)."""
    merged: list[int] = []
    i = 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged
