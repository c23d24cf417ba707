"""Reductions over axes: sum, mean, max, var (all with ``keepdims``).

The backward of a reduction broadcasts the upstream gradient back over the reduced axes; to
do that with ``keepdims=False`` the reduced axes are first re-inserted as size-1 axes.
"""
from __future__ import annotations

from minillm.autograd import Function
from minillm.backend import get_array_module
from minillm.ops._util import normalize_axis
from minillm.tensor import Tensor


def _restore_reduced_axes(gy, input_ndim: int, axes: tuple | None, keepdims: bool):
    """gy with the reduced axes back as size-1 axes, ready to broadcast to the input shape."""
    if keepdims or input_ndim == 0:
        return gy
    if axes is None:
        return gy.reshape((1,) * input_ndim)
    shape = list(gy.shape)
    for axis in axes:
        shape.insert(axis, 1)
    return gy.reshape(shape)


def _count(shape: tuple, axes: tuple | None) -> int:
    if axes is None:
        n = 1
        for size in shape:
            n *= size
        return n
    n = 1
    for axis in axes:
        n *= shape[axis]
    return n


class Sum(Function):
    """y = sum of x over ``axes``.  Shapes: x (...) -> y (reduced).  Saves: the input shape."""

    def __init__(self, axes, keepdims: bool):
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x):
        self.shape = x.shape
        return x.sum(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        # dy/dx_i = 1 for every summed element
        xp = get_array_module(gy)
        g = _restore_reduced_axes(gy, len(self.shape), self.axes, self.keepdims)
        return xp.broadcast_to(g, self.shape).copy()


def sum(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    return Sum(normalize_axis(axis, x.ndim, "sum"), keepdims).apply(x)


class Mean(Function):
    """y = mean of x over ``axes``.  Saves: the input shape."""

    def __init__(self, axes, keepdims: bool):
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x):
        self.shape = x.shape
        return x.mean(axis=self.axes, keepdims=self.keepdims)

    def backward(self, gy):
        # dy/dx_i = 1/n
        xp = get_array_module(gy)
        g = _restore_reduced_axes(gy, len(self.shape), self.axes, self.keepdims)
        n = _count(self.shape, self.axes)
        return xp.broadcast_to(g / n, self.shape).astype(gy.dtype)


def mean(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:
    if x.size == 0:
        raise ValueError(f"mean: the tensor of shape {x.shape} is empty")
    return Mean(normalize_axis(axis, x.ndim, "mean"), keepdims).apply(x)


class Max(Function):
    """y = max of x over ``axes``; ties share the gradient equally (like ``torch.amax``).
    Saves: x and y (kept dims)."""

    def __init__(self, axes, keepdims: bool):
        self.axes, self.keepdims = axes, keepdims

    def forward(self, x):
        self.x = x
        y = x.max(axis=self.axes, keepdims=True)
        self.y_kept = y
        if self.keepdims:
            return y
        kept = () if self.axes is None else tuple(s for i, s in enumerate(x.shape) if i not in self.axes)
        return y.reshape(kept)

    def backward(self, gy):
        # dy/dx_i = [x_i == max] / (number of maxima)
        is_max = (self.x == self.y_kept).astype(gy.dtype)
        ties = is_max.sum(axis=self.axes, keepdims=True)
        g = _restore_reduced_axes(gy, self.x.ndim, self.axes, self.keepdims)
        return g * is_max / ties


def max(x: Tensor, axis=None, keepdims: bool = False) -> Tensor:  # noqa: A001
    if x.size == 0:
        raise ValueError(f"max: the tensor of shape {x.shape} is empty")
    return Max(normalize_axis(axis, x.ndim, "max"), keepdims).apply(x)


class Var(Function):
    """y = sum((x - mean)^2) / (n - correction) over ``axes`` (correction=1: unbiased, the
    PyTorch default; 0: the population variance).  Saves: x - mean."""

    def __init__(self, axes, keepdims: bool, correction: int):
        self.axes, self.keepdims, self.correction = axes, keepdims, correction

    def forward(self, x):
        self.centered = x - x.mean(axis=self.axes, keepdims=True)
        self.n = _count(x.shape, self.axes)
        return (self.centered ** 2).sum(axis=self.axes, keepdims=self.keepdims) / (self.n - self.correction)

    def backward(self, gy):
        # dy/dx_i = 2 (x_i - mean) / (n - correction)   (the mean's own term sums to zero)
        g = _restore_reduced_axes(gy, self.centered.ndim, self.axes, self.keepdims)
        return (g * self.centered * (2.0 / (self.n - self.correction))).astype(gy.dtype, copy=False)


def var(x: Tensor, axis=None, keepdims: bool = False, correction: int = 1) -> Tensor:
    axes = normalize_axis(axis, x.ndim, "var")
    n = _count(x.shape, axes)
    if n - correction <= 0:
        raise ValueError(f"var: {n} elements with correction={correction} leave no degrees of freedom")
    return Var(axes, keepdims, correction).apply(x)
