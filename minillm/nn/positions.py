"""Position information: learned absolute, sinusoidal absolute, and rotary (RoPE).

Attention is blind to order, so the model must be told where each token is:

- :class:`LearnedPositionalEmbedding` (GPT-2): a trained vector per position, added to the
  token embeddings.
- :class:`SinusoidalPositionalEmbedding` ("Attention Is All You Need", section 3.5): a fixed
  vector per position, PE(p, 2i) = sin(p / 10000^(2i/C)), PE(p, 2i+1) = cos(p / 10000^(2i/C)),
  added to the token embeddings.
- :class:`RotaryEmbedding` (RoFormer; Llama): nothing is added; inside attention, queries and
  keys are rotated by angles proportional to their positions, so q·k depends on the offset
  between positions only.

Every one takes a ``position_offset``: the absolute position of the first of the T tokens, so a
key/value cache can feed tokens T0, T0+1, ... one block at a time.
"""
from __future__ import annotations

import numpy as np

from minillm import functional as F
from minillm.backend import device_of, module_for_device, random_normal
from minillm.nn.module import Module, Parameter
from minillm.tensor import Tensor


def _check_positions(t: int, position_offset: int, max_positions: int, what: str) -> None:
    if not isinstance(position_offset, int) or position_offset < 0:
        raise ValueError(f"{what}: position_offset={position_offset!r}; expected an int >= 0")
    if position_offset + t > max_positions:
        raise ValueError(f"{what}: positions {position_offset}..{position_offset + t - 1} exceed the "
                         f"{max_positions} positions it was built for (block_size)")


class LearnedPositionalEmbedding(Module):
    """A trained (max_positions, C) table; ``forward(T, offset)`` returns rows offset..offset+T-1
    as a (T, C) Tensor to add to (B, T, C) token embeddings. Init: N(0, 1) (GPT re-inits)."""

    def __init__(self, max_positions: int, n_embd: int, dtype=np.float32, device: str = "cpu"):
        super().__init__()
        self.max_positions = max_positions
        self.weight = Parameter(random_normal((max_positions, n_embd), dtype, device))

    def forward(self, t: int, position_offset: int = 0) -> Tensor:
        _check_positions(t, position_offset, self.max_positions, "LearnedPositionalEmbedding")
        return F.getitem(self.weight, slice(position_offset, position_offset + t))   # (T, C)

    def extra_repr(self) -> str:
        return f"{self.max_positions}, {self.weight.shape[1]}"


def sinusoidal_table(max_positions: int, n_embd: int, dtype=np.float32, device: str = "cpu"):
    """PE (max_positions, C): PE[p, 2i] = sin(p·ω_i), PE[p, 2i+1] = cos(p·ω_i), ω_i = 10000^(-2i/C).

    Computed in float64, then cast. C must be even (sin/cos pairs)."""
    if n_embd % 2:
        raise ValueError(f"sinusoidal_table: n_embd={n_embd} is odd; expected an even size")
    xp = module_for_device(device)
    positions = xp.arange(max_positions, dtype=np.float64).reshape(-1, 1)     # (P, 1)
    omega = 10000.0 ** (-xp.arange(0, n_embd, 2, dtype=np.float64) / n_embd)  # (C/2,)
    angles = positions * omega.reshape(1, -1)                                 # (P, C/2)
    table = xp.empty((max_positions, n_embd), dtype=np.float64)               # (P, C)
    table[:, 0::2] = xp.sin(angles)
    table[:, 1::2] = xp.cos(angles)
    return table.astype(dtype)


class SinusoidalPositionalEmbedding(Module):
    """The fixed sinusoidal table (a buffer: no parameters); ``forward(T, offset)`` returns its
    rows offset..offset+T-1 as a (T, C) constant Tensor."""

    def __init__(self, max_positions: int, n_embd: int, dtype=np.float32, device: str = "cpu"):
        super().__init__()
        self.max_positions = max_positions
        self.register_buffer("table", sinusoidal_table(max_positions, n_embd, dtype, device))

    def _buffers_to_dtype(self, dtype) -> None:
        # recomputed rather than cast, so float32 -> float64 gains the precision
        self.register_buffer("table", sinusoidal_table(self.max_positions, self.table.shape[1], dtype,
                                                       device_of(self.table)))

    def forward(self, t: int, position_offset: int = 0) -> Tensor:
        _check_positions(t, position_offset, self.max_positions, "SinusoidalPositionalEmbedding")
        return Tensor._from_op(self.table[position_offset:position_offset + t], None)   # (T, C)

    def extra_repr(self) -> str:
        return f"{self.max_positions}, {self.table.shape[1]}"


class RotaryEmbedding(Module):
    """cos/sin tables (buffers, (max_positions, D/2)) and their application to queries/keys:
    ``forward(x, offset)`` rotates x (B, heads, T, D) for positions offset..offset+T-1
    (half-split pairs (i, i + D/2), as in GPT-NeoX and Hugging Face Llama; see F.rope)."""

    def __init__(self, head_dim: int, max_positions: int, theta: float = 10000.0,
                 dtype=np.float32, device: str = "cpu"):
        super().__init__()
        self.head_dim, self.max_positions, self.theta = head_dim, max_positions, float(theta)
        cos, sin = F.rope_tables(head_dim, max_positions, theta, dtype, device)
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)

    def _buffers_to_dtype(self, dtype) -> None:
        # recomputed rather than cast, so float32 -> float64 gains the precision
        cos, sin = F.rope_tables(self.head_dim, self.max_positions, self.theta, dtype, device_of(self.cos))
        self.register_buffer("cos", cos)
        self.register_buffer("sin", sin)

    def forward(self, x: Tensor, position_offset: int = 0) -> Tensor:
        _check_positions(x.shape[-2], position_offset, self.max_positions, "RotaryEmbedding")
        return F.rope(x, self.cos, self.sin, position_offset)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_positions={self.max_positions}, theta={self.theta}"
