"""Batches of (input, target) windows from a 1-D token sequence, as host NumPy arrays.

Both loaders accept a 1-D integer ``np.ndarray`` (a shard memmap included) or a
``ConcatenatedTokens``; they read only the windows they return. Outputs are ``np.int64`` (and a
bool mask) on the host; the training loop moves them to the device.

For a window starting at ``s`` of length T: ``x = tokens[s : s+T]``, ``y = tokens[s+1 : s+T+1]``,
so ``y[t]`` is the token that follows ``x[t]`` and "target position" ``s+1+t`` is scored.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from minillm.data.shards import ConcatenatedTokens


def _check_tokens(tokens, caller: str) -> int:
    if isinstance(tokens, ConcatenatedTokens):
        return len(tokens)
    if not isinstance(tokens, np.ndarray):
        raise TypeError(f"{caller}: tokens must be a 1-D numpy integer array or ConcatenatedTokens, "
                        f"got {type(tokens).__name__} (move device arrays to the host first)")
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise ValueError(f"{caller}: tokens must be a 1-D integer array, got shape {tokens.shape}, dtype {tokens.dtype}")
    return tokens.size


def _check_positive_int(caller: str, name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{caller}: {name} must be an int >= 1, got {value!r}")


def _gather_windows(tokens, starts: np.ndarray, length: int) -> np.ndarray:
    """Rows ``tokens[s : s+length]`` for each start, as a (len(starts), length) int64 array."""
    if isinstance(tokens, np.ndarray):
        index = starts[:, None] + np.arange(length)                     # (B, length)
        return np.asarray(tokens[index], dtype=np.int64)
    return np.stack([np.asarray(tokens[int(s):int(s) + length], dtype=np.int64) for s in starts])


class RandomWindowLoader:
    """Training batches: ``batch_size`` windows of ``block_size + 1`` tokens at uniform random offsets.

    Offsets are drawn from ``np.random.Generator(np.random.PCG64(seed))`` with
    ``integers(0, N - block_size)``: every start in ``[0, N - block_size - 1]``, so every window
    fits. ``state_dict()`` captures the generator state, and ``load_state_dict`` restores it so a
    resumed run draws exactly the batches an uninterrupted run would have drawn.
    """

    def __init__(self, tokens, batch_size: int, block_size: int, seed: int = 0):
        self.num_tokens = _check_tokens(tokens, "RandomWindowLoader")
        _check_positive_int("RandomWindowLoader", "batch_size", batch_size)
        _check_positive_int("RandomWindowLoader", "block_size", block_size)
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"RandomWindowLoader: seed must be an int >= 0, got {seed!r}")
        if self.num_tokens < block_size + 1:
            raise ValueError(f"RandomWindowLoader: the token sequence has {self.num_tokens} tokens, fewer than one "
                             f"window of block_size + 1 = {block_size + 1}; use a smaller block_size or more data")
        self.tokens = tokens
        self.batch_size, self.block_size, self.seed = int(batch_size), int(block_size), int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))
        self.batches_served = 0

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (x, y), both (batch_size, block_size) int64, with y = x shifted left by one token."""
        starts = self.rng.integers(0, self.num_tokens - self.block_size, size=self.batch_size)   # (B,)
        windows = _gather_windows(self.tokens, starts, self.block_size + 1)                     # (B, T+1)
        self.batches_served += 1
        return np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:])

    def __iter__(self) -> "RandomWindowLoader":
        return self

    def __next__(self) -> tuple[np.ndarray, np.ndarray]:
        return self.next_batch()

    def state_dict(self) -> dict:
        """JSON-serialisable state: the PCG64 state, batches served, and the shape it applies to."""
        return {
            "bit_generator": self.rng.bit_generator.state,
            "batches_served": self.batches_served,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "block_size": self.block_size,
            "num_tokens": self.num_tokens,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; the batch size, block size and token count must match."""
        if not isinstance(state, dict):
            raise TypeError(f"RandomWindowLoader.load_state_dict: state must be a dict, got {type(state).__name__}")
        required = ("bit_generator", "batches_served", "batch_size", "block_size", "num_tokens")
        missing = [key for key in required if key not in state]
        if missing:
            raise ValueError(f"RandomWindowLoader.load_state_dict: state lacks keys {missing}")
        for key in ("batch_size", "block_size", "num_tokens"):
            if state[key] != getattr(self, key):
                what = "the training data changed" if key == "num_tokens" else f"{key} changed"
                raise ValueError(f"RandomWindowLoader.load_state_dict: {what} since this state was saved (saved "
                                 f"{key}={state[key]!r}, this loader has {key}={getattr(self, key)!r}), so the saved "
                                 "position would mean other windows; resume with the same data and sizes, or start "
                                 "a new run")
        generator = state["bit_generator"]
        if not isinstance(generator, dict) or generator.get("bit_generator") != "PCG64":
            raise ValueError(f"RandomWindowLoader.load_state_dict: expected a PCG64 bit generator state, got "
                             f"{generator!r:.80}")
        self.rng.bit_generator.state = generator
        self.batches_served = int(state["batches_served"])
        self.seed = int(state.get("seed", self.seed))


def sequential_windows(tokens, block_size: int, batch_size: int,
                       stride: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Evaluation batches that score every target position 1..N-1 exactly once.

    Windows have length ``L = min(block_size, N - 1)`` and start at ``0, stride, 2*stride, ...``
    while they fit; if the last one stops short of the end, a final window is aligned to the end
    (start ``N - 1 - L``). A window's ``loss_mask`` is True for target positions not scored by an
    earlier window: the first window scores all L positions, a later one only the new ones.
    A ``stride`` below ``block_size`` gives later positions more left context (and costs more
    windows). Yields ``(x, y, loss_mask)`` of shape (b, L) with ``b <= batch_size`` (the last
    batch may be smaller); x and y are int64, loss_mask bool.
    """
    n = _check_tokens(tokens, "sequential_windows")
    _check_positive_int("sequential_windows", "block_size", block_size)
    _check_positive_int("sequential_windows", "batch_size", batch_size)
    stride = block_size if stride is None else stride
    _check_positive_int("sequential_windows", "stride", stride)
    if stride > block_size:
        raise ValueError(f"sequential_windows: stride={stride} > block_size={block_size} would skip tokens; "
                         f"expected 1 <= stride <= block_size")
    if n < 2:
        raise ValueError(f"sequential_windows: need at least 2 tokens to form one (input, target) pair, got {n}")
    length = min(block_size, n - 1)
    starts = list(range(0, n - 1 - length + 1, stride))
    if starts[-1] + length < n - 1:
        starts.append(n - 1 - length)

    scored_until = 0   # highest target position scored so far (position 0 is never a target)
    for first in range(0, len(starts), batch_size):
        batch_starts = np.array(starts[first:first + batch_size], dtype=np.int64)
        windows = _gather_windows(tokens, batch_starts, length + 1)                        # (b, L+1)
        mask = np.empty((len(batch_starts), length), dtype=bool)
        for row, start in enumerate(batch_starts):
            positions = start + 1 + np.arange(length)                                      # target positions
            mask[row] = positions > scored_until
            scored_until = int(start) + length
        yield np.ascontiguousarray(windows[:, :-1]), np.ascontiguousarray(windows[:, 1:]), mask
