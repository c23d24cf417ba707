"""Applying BPE merges to one chunk, and recovering merges from a rank table.

Conventions (shared by the whole tokenizer package)
--------------------------------------------------
- Token ids 0..255 are the 256 single bytes (in some order: identity for trained tokenizers,
  GPT-2's own order for GPT-2 files). Merge ``k`` (0-based, in the order it was learned) makes
  the token with id ``256 + k``.
- ``merges`` maps a pair of ids ``(left, right)`` to the id of the token it makes. That id is also
  the merge's *rank* (priority): lower ids were learned earlier and are applied first. This is
  tiktoken's convention, where a token's rank is its id.

Encoding one chunk
------------------
Start from the chunk's byte ids; repeatedly merge the adjacent pair with the lowest rank (the
leftmost one on ties); stop when no adjacent pair has a merge. This is tiktoken's procedure. It
equals applying the merges in rank order, each to all its occurrences left to right (a merge
only creates pairs of higher rank), which is how training applied them to the training chunks.

Short chunks use a direct loop (find the minimum over all pair ranks after each merge: O(n^2),
but n is a word and the scans run in C).
Long chunks (``pattern=None`` gives one chunk per text) use a heap of candidate merges over a
linked list of tokens: O(n log n).
"""
from __future__ import annotations

import heapq
import sys

NO_MERGE = sys.maxsize  # rank of a pair that has no merge; larger than every real rank
LONG_CHUNK_TOKENS = 64  # above this many tokens the heap algorithm is faster than rescanning


def apply_merges(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    """BPE-encode one chunk given as the list of its byte token ids; returns the token ids.

    ``ids`` is consumed (it may be modified in place and returned).
    """
    if len(ids) > LONG_CHUNK_TOKENS:
        return _apply_merges_heap(ids, merges)
    return _apply_merges_rescan(ids, merges)


def _apply_merges_rescan(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    # ranks[i] is the rank of the pair (ids[i], ids[i + 1]); after a merge only the two
    # neighbouring entries change, so min() and index() (both in C) do the rescanning.
    get_rank = merges.get
    ranks = [get_rank(pair, NO_MERGE) for pair in zip(ids, ids[1:])]
    while ranks:
        best = min(ranks)
        if best == NO_MERGE:
            break
        i = ranks.index(best)  # leftmost occurrence of the best pair
        ids[i] = best  # the rank is the id of the merged token
        del ids[i + 1]
        del ranks[i]
        if i < len(ranks):
            ranks[i] = get_rank((best, ids[i + 1]), NO_MERGE)
        if i > 0:
            ranks[i - 1] = get_rank((ids[i - 1], best), NO_MERGE)
    return ids


def _apply_merges_heap(ids: list[int], merges: dict[tuple[int, int], int]) -> list[int]:
    """Same result as ``_apply_merges_rescan`` in O(n log n) for long chunks.

    Tokens live in a doubly linked list (``next_pos``/``prev_pos`` over positions; a merged-away
    position gets token None). The heap holds ``(rank, position)`` for every adjacent pair that
    has a merge; entries are validated when popped (lazy deletion), because merges around a
    position change which pair starts there. Popping the lowest rank, then the lowest position,
    applies merges in rank order and, within one rank, left to right.
    """
    tokens: list[int | None] = list(ids)
    length = len(tokens)
    next_pos = list(range(1, length + 1))
    prev_pos = list(range(-1, length - 1))
    get_rank = merges.get
    heap = [(rank, i) for i, pair in enumerate(zip(ids, ids[1:])) if (rank := get_rank(pair)) is not None]
    heapq.heapify(heap)
    while heap:
        rank, i = heapq.heappop(heap)
        left = tokens[i]
        j = next_pos[i]
        if left is None or j >= length or get_rank((left, tokens[j])) != rank:
            continue  # stale entry: this position was merged away or its pair changed
        tokens[i] = rank
        tokens[j] = None
        after = next_pos[j]
        next_pos[i] = after
        if after < length:
            prev_pos[after] = i
        before = prev_pos[i]
        if before >= 0:
            new_rank = get_rank((tokens[before], rank))
            if new_rank is not None:
                heapq.heappush(heap, (new_rank, before))
        if after < length:
            new_rank = get_rank((rank, tokens[after]))
            if new_rank is not None:
                heapq.heappush(heap, (new_rank, i))
    return [token for token in tokens if token is not None]


def merges_from_ranked_tokens(tokens: list[bytes], source: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Recover ``(byte_ids, merges)`` from tokens listed in rank order (tiktoken's rank files).

    ``tokens[r]`` is the byte string of rank ``r``. Ranks 0..255 must be the 256 single bytes;
    every later token must split, under the merges of lower rank, into exactly two tokens: that
    pair is its merge. (This holds for every vocabulary that BPE training produced: when a token
    was learned, its two parts were what the earlier merges made of its bytes.) ``source`` names
    the file for error messages.
    """
    if len(tokens) < 256:
        raise ValueError(f"{source}: has {len(tokens)} tokens; expected at least the 256 single bytes")
    byte_ids = [-1] * 256
    for rank in range(256):
        token = tokens[rank]
        if len(token) != 1:
            raise ValueError(
                f"{source}: rank {rank} is the {len(token)}-byte token {token!r}; expected ranks 0..255 "
                "to be the 256 single bytes"
            )
        if byte_ids[token[0]] != -1:
            raise ValueError(f"{source}: byte {token!r} appears twice (ranks {byte_ids[token[0]]} and {rank})")
        byte_ids[token[0]] = rank
    merges: dict[tuple[int, int], int] = {}
    merge_list: list[tuple[int, int]] = []
    for rank in range(256, len(tokens)):
        token = tokens[rank]
        if len(token) < 2:
            raise ValueError(f"{source}: rank {rank} is the single byte {token!r}; single bytes must have ranks 0..255")
        parts = apply_merges([byte_ids[byte] for byte in token], merges)
        if len(parts) != 2:
            raise ValueError(
                f"{source}: the token {token!r} (rank {rank}) is not the merge of two earlier tokens: the "
                f"merges of lower rank split it into {len(parts)} parts; the ranks are not in BPE merge order"
            )
        merges[(parts[0], parts[1])] = rank
        merge_list.append((parts[0], parts[1]))
    return byte_ids, merge_list
