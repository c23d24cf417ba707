"""Position-wise feed-forward networks: the GELU MLP (GPT-2) and SwiGLU (Llama).

GELU MLP:   y = W_down · gelu(W_up · x + b_up) + b_down,  hidden width 4C.
SwiGLU:     y = W_down · (silu(W_gate · x) ⊙ (W_up · x)),  three matrices, so for the same
            parameter count the hidden width is 2/3 of 4C (Shazeer 2020; Llama rounds it up to a
            multiple of 256, we use ``multiple_of``, 64 by default): see :func:`swiglu_hidden`.
"""
from __future__ import annotations

import numpy as np

from minillm import functional as F
from minillm.nn.layers import Linear
from minillm.nn.module import Module
from minillm.tensor import Tensor


def swiglu_hidden(n_embd: int, multiple_of: int = 64) -> int:
    """The Llama rule: int(2/3 · 4C) rounded up to a multiple of ``multiple_of``.

    Three (C × H) matrices with H ≈ 8C/3 hold as many parameters as the GELU MLP's two with
    H = 4C. Examples: C=192 -> 512, C=384 -> 1024, C=4096 with multiple_of=256 -> 11008 (Llama 7B).
    """
    if not isinstance(multiple_of, int) or multiple_of <= 0:
        raise ValueError(f"swiglu_hidden: multiple_of={multiple_of!r}; expected a positive int")
    hidden = int(2 * 4 * n_embd / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class MLP(Module):
    """The GPT-2 feed-forward: up_proj (C -> H), GELU, down_proj (H -> C); H = 4C by default."""

    def __init__(self, n_embd: int, hidden: int | None = None, bias: bool = True,
                 approximate: str = "tanh", dtype=np.float32, device: str = "cpu"):
        super().__init__()
        hidden = 4 * n_embd if hidden is None else hidden
        self.approximate = approximate
        self.up_proj = Linear(n_embd, hidden, bias=bias, dtype=dtype, device=device)
        self.down_proj = Linear(hidden, n_embd, bias=bias, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, C) -> (B, T, C)."""
        return self.down_proj(F.gelu(self.up_proj(x), self.approximate))   # (B, T, H) -> (B, T, C)


class SwiGLUMLP(Module):
    """The Llama feed-forward: down_proj(silu(gate_proj(x)) ⊙ up_proj(x)); H from
    :func:`swiglu_hidden` unless given."""

    def __init__(self, n_embd: int, hidden: int | None = None, bias: bool = False,
                 multiple_of: int = 64, dtype=np.float32, device: str = "cpu"):
        super().__init__()
        hidden = swiglu_hidden(n_embd, multiple_of) if hidden is None else hidden
        self.gate_proj = Linear(n_embd, hidden, bias=bias, dtype=dtype, device=device)
        self.up_proj = Linear(n_embd, hidden, bias=bias, dtype=dtype, device=device)
        self.down_proj = Linear(hidden, n_embd, bias=bias, dtype=dtype, device=device)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, C) -> (B, T, C)."""
        return self.down_proj(F.swiglu(self.gate_proj(x), self.up_proj(x)))   # (B, T, H) -> (B, T, C)
