"""The key/value cache: attention keys and values of earlier positions, kept for generation.

A decoder predicts token t+1 from tokens 0..t. Recomputing the whole prefix for every new token
costs O(t) forward work per token; but the keys and values of positions < t do not change when
token t arrives (causal attention: no position sees the future). So they are computed once and
kept here, and each decode step feeds only the newest token:

    prefill:  model(idx[:, :T0], kv_cache=cache)   # writes positions 0..T0-1, cache.length = T0
    decode:   model(idx[:, T0:T0+1], kv_cache=cache)   # one token at position T0, length T0+1 ...

Layout: per layer one keys and one values buffer of shape (B, H_kv, capacity, D), allocated once
(capacity <= block_size). Grouped-query attention keeps only the H_kv key/value heads, so the
cache shrinks by H / H_kv. A step with T new tokens writes in place

    keys[:, :, length:length+T] = k          # (B, H_kv, T, D)

and attention reads the views keys[:, :, :length+T] (nothing is copied or reallocated per step).
Every layer writes at the same ``length``; :meth:`KVCache.advance` moves it once per forward, after
the last layer (``GPT.forward`` does this). Positions are the cache positions: token i of the cache
sits at absolute position i (learned/sinusoidal rows, RoPE angles), so ``reset()`` and a fresh
prefill give a window new positions from 0.
"""
from __future__ import annotations

import numpy as np

from minillm.backend import module_for_device


class LayerKVCache:
    """One layer's view of a :class:`KVCache`: ``update(k, v)`` writes the new keys/values at the
    cache's current length and returns the keys/values of every cached position."""

    def __init__(self, owner: "KVCache", keys, values):
        self.owner, self.keys, self.values = owner, keys, values

    def update(self, k, v):
        """Write k, v (B, H_kv, T, D) (plain xp arrays) at positions length..length+T-1 and return
        the views keys[:, :, :length+T], values[:, :, :length+T] (B, H_kv, length+T, D)."""
        start = self.owner.length
        end = start + k.shape[2]
        if k.shape[:2] != self.keys.shape[:2] or k.shape[3] != self.keys.shape[3] or k.shape != v.shape:
            raise ValueError(f"KVCache: new keys/values have shapes {tuple(k.shape)} and {tuple(v.shape)}; "
                             f"expected (B, H_kv, T, D) with (B, H_kv, D) = ({self.keys.shape[0]}, "
                             f"{self.keys.shape[1]}, {self.keys.shape[3]})")
        if end > self.owner.capacity:
            raise ValueError(f"KVCache: writing {k.shape[2]} positions at length {start} overflows the "
                             f"capacity of {self.owner.capacity} positions; reset() the cache and "
                             "prefill a shorter window")
        self.keys[:, :, start:end] = k                           # (B, H_kv, T, D) in place
        self.values[:, :, start:end] = v
        return self.keys[:, :, :end], self.values[:, :, :end]    # (B, H_kv, S, D) views, S = end


class KVCache:
    """Preallocated keys/values for every layer of a model (see the module docstring).

    Args:
        n_layer: the number of attention layers.
        batch_size: B, sequences decoded together (all at the same length).
        n_kv_head: H_kv, key/value heads per layer. head_dim: D.
        capacity: positions kept, at most the model's block_size.
        dtype, device: those of the model's parameters.
    Attributes: ``length`` (positions filled so far, the absolute position of the next token),
    ``capacity``, and ``layers`` (one :class:`LayerKVCache` per layer).
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, head_dim: int, capacity: int,
                 dtype=np.float32, device: str = "cpu"):
        for name, value in (("n_layer", n_layer), ("batch_size", batch_size), ("n_kv_head", n_kv_head),
                            ("head_dim", head_dim), ("capacity", capacity)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"KVCache: {name}={value!r}; expected a positive int")
        xp = module_for_device(device)
        shape = (batch_size, n_kv_head, capacity, head_dim)      # (B, H_kv, capacity, D)
        self.capacity = int(capacity)
        self.length = 0
        self.layers = [LayerKVCache(self, xp.zeros(shape, dtype=dtype), xp.zeros(shape, dtype=dtype))
                       for _ in range(n_layer)]

    @classmethod
    def for_model(cls, model, batch_size: int, capacity: int | None = None) -> "KVCache":
        """A cache for ``model`` (a GPT): its layers, H_kv, D, dtype and device; ``capacity``
        defaults to (and may not exceed) ``model.config.block_size``."""
        c = model.config
        capacity = c.block_size if capacity is None else capacity
        if not isinstance(capacity, (int, np.integer)) or not 0 < capacity <= c.block_size:
            raise ValueError(f"KVCache.for_model: capacity={capacity!r}; expected an int in "
                             f"[1, block_size={c.block_size}]")
        return cls(c.n_layer, batch_size, c.n_kv_head, c.head_dim, int(capacity), model.dtype, model.device)

    @property
    def batch_size(self) -> int:
        return self.layers[0].keys.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held by all keys and values buffers."""
        return sum(layer.keys.nbytes + layer.values.nbytes for layer in self.layers)

    def advance(self, t: int) -> None:
        """Mark ``t`` more positions as filled (after every layer has written them)."""
        if self.length + t > self.capacity:
            raise ValueError(f"KVCache.advance: length {self.length} + {t} exceeds the capacity {self.capacity}")
        self.length += t

    def reset(self) -> None:
        """Forget every position (the buffers are kept and overwritten by the next prefill)."""
        self.length = 0

    def __repr__(self) -> str:
        b, h_kv, cap, d = self.layers[0].keys.shape
        return (f"KVCache(layers={len(self.layers)}, batch_size={b}, n_kv_head={h_kv}, capacity={cap}, "
                f"head_dim={d}, length={self.length}, {self.nbytes / 2**20:.2f} MiB)")
