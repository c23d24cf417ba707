"""Basic layers: Linear, Embedding, LayerNorm, RMSNorm, Dropout.

Each holds its Parameters and calls one fused op from :mod:`minillm.functional` in ``forward``.
Default initialisations follow PyTorch, so a layer used on its own behaves as users expect
(GPT re-initialises its layers with the GPT-2 scheme, see :mod:`minillm.nn.gpt`).
"""
from __future__ import annotations

import math

import numpy as np

from minillm import functional as F
from minillm.backend import module_for_device, random_init_skipped, random_normal, random_uniform
from minillm.nn.module import Module, Parameter
from minillm.tensor import Tensor


def _positive_int(value, what: str, layer: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{layer}: {what}={value!r}; expected a positive int")
    return int(value)


def _uniform(shape, bound: float, dtype, device: str):
    """U(-bound, bound) samples from the global generator."""
    array = random_uniform(shape, dtype, device)                 # U[0, 1)
    if random_init_skipped():                                    # a load overwrites it next (skip_random_init)
        return array
    array *= 2 * bound
    array -= bound
    return array


class Linear(Module):
    """y = x W^T + b with W (out_features, in_features), like ``torch.nn.Linear``.

    Init: W, b ~ U(-1/sqrt(in), 1/sqrt(in)) (PyTorch's default).
    Shapes: x (..., in_features) -> y (..., out_features).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype=np.float32, device: str = "cpu"):
        super().__init__()
        self.in_features = _positive_int(in_features, "in_features", "Linear")
        self.out_features = _positive_int(out_features, "out_features", "Linear")
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform((out_features, in_features), bound, dtype, device))
        self.bias = Parameter(_uniform((out_features,), bound, dtype, device)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``embedding_dim``, looked up by integer id.

    Init: N(0, 1) (PyTorch's default). Shapes: ids (...) -> (..., embedding_dim).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, dtype=np.float32, device: str = "cpu"):
        super().__init__()
        self.num_embeddings = _positive_int(num_embeddings, "num_embeddings", "Embedding")
        self.embedding_dim = _positive_int(embedding_dim, "embedding_dim", "Embedding")
        self.weight = Parameter(random_normal((num_embeddings, embedding_dim), dtype, device))

    def forward(self, ids, check_range: bool = True) -> Tensor:
        """Rows of the table at ``ids``; ``check_range=False`` when the caller checked the ids."""
        return F.embedding(ids, self.weight, check_range=check_range)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class LayerNorm(Module):
    """Layer normalisation over the last axis with a learned scale (ones) and shift (zeros)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, bias: bool = True,
                 dtype=np.float32, device: str = "cpu"):
        super().__init__()
        self.normalized_shape = _positive_int(normalized_shape, "normalized_shape", "LayerNorm")
        self.eps = float(eps)
        xp = module_for_device(device)
        self.weight = Parameter(xp.ones(normalized_shape, dtype=dtype))
        self.bias = Parameter(xp.zeros(normalized_shape, dtype=dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(Module):
    """RMS normalisation over the last axis with a learned scale (ones)."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, dtype=np.float32, device: str = "cpu"):
        super().__init__()
        self.normalized_shape = _positive_int(normalized_shape, "normalized_shape", "RMSNorm")
        self.eps = float(eps)
        self.weight = Parameter(module_for_device(device).ones(normalized_shape, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class Dropout(Module):
    """Zero each element with probability p in training mode (scaling the rest by 1/(1-p));
    the identity in eval mode or when p = 0."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p={p!r}; expected a probability in [0, 1)")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
