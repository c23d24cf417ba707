"""Embedding lookup: rows of a weight table picked by integer ids.

The gradient of a lookup is a scatter-add: every occurrence of id v adds its upstream row to
row v of the table gradient. Repeated ids must accumulate, which NumPy's fancy ``+=`` would not
do, so the scatter goes through :func:`minillm.backend.scatter_add`. ``embedding_composed`` is
the reference twin (``getitem`` with an integer array, whose backward scatter-adds too).
"""
from __future__ import annotations

from minillm.autograd import Function
from minillm.backend import device_of, get_array_module, scatter_add, to_device
from minillm.ops import shape as sh
from minillm.tensor import Tensor


class Embedding(Function):
    """y[..., :] = W[ids[...], :].

    Shapes: ids (...) integers in [0, V), W (V, C) -> y (..., C).
    Saves: the ids (integers, not differentiated).
    """

    def __init__(self, ids):
        self.ids = ids

    def forward(self, weight):
        self.num_embeddings = weight.shape[0]
        return weight[self.ids]                                  # (..., C)

    def backward(self, gy):
        # dL/dW[v] = sum of gy[p] over every position p with ids[p] == v
        xp = get_array_module(gy)
        c = gy.shape[-1]
        gw = xp.zeros((self.num_embeddings, c), dtype=gy.dtype)  # (V, C)
        scatter_add(gw, self.ids.reshape(-1), gy.reshape(-1, c))  # rows (N,), values (N, C)
        return gw


def _ids_array(ids, weight: Tensor, op: str):
    """``ids`` as an integer array on the weight's device (moved there), range-checked."""
    array = ids.data if isinstance(ids, Tensor) else ids
    if not hasattr(array, "dtype") or array.dtype.kind not in "iu":
        kind = getattr(array, "dtype", type(array).__name__)
        raise TypeError(f"{op}: ids must be an integer array or Tensor, got {kind}")
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        raise ValueError(f"{op}: weight must be a 2-D Tensor (num_embeddings, embedding_dim), got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    array = to_device(array, device_of(weight.data))             # explicit transfer if needed
    if array.size:
        xp = get_array_module(array)
        low, high = int(xp.min(array)), int(xp.max(array))
        if low < 0 or high >= weight.shape[0]:
            bad = low if low < 0 else high
            raise ValueError(f"{op}: token id {bad} is out of range; expected ids in "
                             f"[0, {weight.shape[0]}) for a table of {weight.shape[0]} rows")
    return array


def embedding(ids, weight: Tensor) -> Tensor:
    """Look up rows of ``weight`` (V, C) at integer ``ids`` (...) -> (..., C)."""
    return Embedding(_ids_array(ids, weight, "embedding")).apply(weight)


def embedding_composed(ids, weight: Tensor) -> Tensor:
    """embedding from primitives: ``weight[ids]`` (getitem scatter-adds in backward)."""
    return sh.getitem(weight, _ids_array(ids, weight, "embedding_composed"))
