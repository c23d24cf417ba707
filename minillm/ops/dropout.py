"""Inverted dropout: zero each element with probability p and scale the rest by 1/(1-p)."""
from __future__ import annotations

from minillm.autograd import Function
from minillm.backend import device_of, dropout_keep_mask
from minillm.tensor import Tensor


class Dropout(Function):
    """y = x ⊙ m, where m_i = 1/(1-p) with probability 1-p and 0 otherwise, so E[y] = x.
    The mask comes from the global generator (``manual_seed``).  Saves: the mask."""

    def __init__(self, p: float):
        self.p = p

    def forward(self, x):
        self.mask = dropout_keep_mask(x.shape, 1.0 - self.p, x.dtype, device_of(x))
        return x * self.mask

    def backward(self, gy):
        # dy/dx = m
        return gy * self.mask


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Apply dropout when ``training`` and p > 0; otherwise return ``x`` unchanged."""
    if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p={p!r}; expected a probability in [0, 1)")
    if not training or p == 0.0:
        return x
    return Dropout(float(p)).apply(x)
