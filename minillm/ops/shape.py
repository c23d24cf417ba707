"""Shape ops: reshape, transpose/permute, swapaxes, broadcast_to/expand, getitem (slices and
integer-array indices), concatenate, stack, split.

These move values around without arithmetic, so each backward moves the gradient back the
same way (the inverse reshape or permutation, a scatter for indexing, slices for concatenate).
"""
from __future__ import annotations

from minillm.autograd import Function
from minillm.backend import get_array_module, scatter_add
from minillm.ops._util import sum_to
from minillm.tensor import Tensor


class Reshape(Function):
    """y = x viewed with a new shape (same number of elements).  Saves: the input shape."""

    def __init__(self, shape: tuple):
        self.shape = shape

    def forward(self, x):
        self.input_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        # dy/dx: the same elements, so reshape back
        return gy.reshape(self.input_shape)


def reshape(x: Tensor, shape) -> Tensor:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    known = 1
    for size in shape:
        if size != -1:
            known *= size
    if shape.count(-1) > 1 or (-1 not in shape and known != x.size) or \
            (-1 in shape and (known == 0 or x.size % known)):
        raise ValueError(f"reshape: cannot reshape a tensor of shape {x.shape} ({x.size} elements) "
                         f"into shape {shape}")
    return Reshape(shape).apply(x)


class Transpose(Function):
    """y = x with its axes permuted (``axes=None`` reverses them).  Shapes: y.shape[i] =
    x.shape[axes[i]].  Saves: the permutation."""

    def __init__(self, axes):
        self.axes = axes

    def forward(self, x):
        return x.transpose(self.axes)

    def backward(self, gy):
        # the inverse permutation puts every gradient element back where its input came from
        if self.axes is None:
            return gy.transpose()
        inverse = [0] * len(self.axes)
        for position, axis in enumerate(self.axes):
            inverse[axis] = position
        return gy.transpose(inverse)


def transpose(x: Tensor, axes=None) -> Tensor:
    if axes is not None:
        axes = tuple(a % x.ndim if isinstance(a, int) and -x.ndim <= a < x.ndim else a for a in axes)
        if sorted(axes) != list(range(x.ndim)):
            raise ValueError(f"transpose: axes={axes!r} is not a permutation of the {x.ndim} axes "
                             f"of a tensor of shape {x.shape}")
    return Transpose(axes).apply(x)


permute = transpose


def swapaxes(x: Tensor, axis1: int, axis2: int) -> Tensor:
    """Exchange two axes (a transpose with the permutation that swaps them)."""
    axes = list(range(x.ndim))
    axes[axis1], axes[axis2] = axes[axis2], axes[axis1]
    return transpose(x, axes)


class BroadcastTo(Function):
    """y = x broadcast (expanded) to ``shape``.  Saves: the input shape."""

    def __init__(self, shape: tuple):
        self.shape = shape

    def forward(self, x):
        self.input_shape = x.shape
        return get_array_module(x).broadcast_to(x, self.shape)

    def backward(self, gy):
        # each input element fed every copy of itself: sum the copies
        return sum_to(gy, self.input_shape)


def broadcast_to(x: Tensor, shape) -> Tensor:
    shape = tuple(shape)
    try:
        get_array_module(x.data).broadcast_shapes(x.data.shape, shape)
    except ValueError:
        raise ValueError(f"broadcast_to: cannot broadcast shape {x.shape} to {shape}") from None
    return BroadcastTo(shape).apply(x)


expand = broadcast_to


def _index_arrays(index):
    """Tensors inside an index become their arrays (integer/boolean indices have no gradient)."""
    if isinstance(index, Tensor):
        return index.data
    if isinstance(index, tuple):
        return tuple(i.data if isinstance(i, Tensor) else i for i in index)
    return index


def _may_repeat(index) -> bool:
    """True when the index holds an integer array or list, which may read a position twice.

    Ints, slices, None, Ellipsis and boolean masks each select a position at most once, so
    their backward can assign instead of scatter-adding."""
    parts = index if isinstance(index, tuple) else (index,)
    for part in parts:
        if isinstance(part, list):
            return True
        if hasattr(part, "dtype") and part.dtype.kind in "iu" and part.ndim > 0:
            return True
    return False


class GetItem(Function):
    """y = x[index] with NumPy semantics (basic slicing and integer/boolean array indexing).
    Saves: the index and the input shape."""

    def __init__(self, index):
        self.index = index

    def forward(self, x):
        self.input_shape, self.input_dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, gy):
        # dy/dx scatters gy back to the positions read; repeated indices add up
        xp = get_array_module(gy)
        gx = xp.zeros(self.input_shape, dtype=gy.dtype)
        if _may_repeat(self.index):
            scatter_add(gx, self.index, gy)
        else:
            gx[self.index] = gy
        return gx


def getitem(x: Tensor, index) -> Tensor:
    index = _index_arrays(index)
    try:
        return GetItem(index).apply(x)
    except IndexError as error:
        raise IndexError(f"getitem: index {index!r:.200} is invalid for a tensor of shape "
                         f"{x.shape}: {error}") from None


class Concatenate(Function):
    """y = the inputs joined along ``axis``.  Saves: the sizes along that axis."""

    def __init__(self, axis: int):
        self.axis = axis

    def forward(self, *arrays):
        self.sizes = [a.shape[self.axis] for a in arrays]
        return get_array_module(*arrays).concatenate(arrays, axis=self.axis)

    def backward(self, gy):
        # each input gets back its own slice of the gradient
        grads, start = [], 0
        for size, needed in zip(self.sizes, self.needs_input_grad):
            index = [slice(None)] * gy.ndim
            index[self.axis] = slice(start, start + size)
            grads.append(gy[tuple(index)] if needed else None)
            start += size
        return tuple(grads)


def concatenate(tensors, axis: int = 0) -> Tensor:
    tensors = list(tensors)
    if not tensors:
        raise ValueError("concatenate: expected at least one tensor, got none")
    ndim = tensors[0].ndim
    if not -ndim <= axis < ndim:
        raise ValueError(f"concatenate: axis={axis} is out of range for {ndim}-dim tensors")
    axis %= ndim
    for i, t in enumerate(tensors):
        other = tuple(s for k, s in enumerate(t.shape) if k != axis)
        first = tuple(s for k, s in enumerate(tensors[0].shape) if k != axis)
        if t.ndim != ndim or other != first:
            raise ValueError(f"concatenate: tensor {i} has shape {t.shape}, which does not match "
                             f"tensor 0's shape {tensors[0].shape} outside axis {axis}")
    return Concatenate(axis).apply(*tensors)


cat = concatenate


def stack(tensors, axis: int = 0) -> Tensor:
    """Join same-shape tensors along a new axis (each gets a size-1 axis, then concatenate)."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("stack: expected at least one tensor, got none")
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise ValueError(f"stack: tensor {i} has shape {t.shape}, expected {tensors[0].shape}")
    ndim = tensors[0].ndim + 1
    if not -ndim <= axis < ndim:
        raise ValueError(f"stack: axis={axis} is out of range for the {ndim}-dim result")
    axis %= ndim
    expanded = [reshape(t, t.shape[:axis] + (1,) + t.shape[axis:]) for t in tensors]
    return concatenate(expanded, axis=axis)


def split(x: Tensor, sections, axis: int = -1) -> list[Tensor]:
    """Split along ``axis`` into equal parts (``sections`` an int) or parts of the given sizes
    (a list of ints), like ``torch.split`` with sizes. Each part is a slice (a GetItem)."""
    axis %= x.ndim
    length = x.shape[axis]
    if isinstance(sections, int):
        if sections <= 0 or length % sections:
            raise ValueError(f"split: cannot split axis {axis} of size {length} into {sections} equal parts")
        sizes = [length // sections] * sections
    else:
        sizes = list(sections)
        if any(s < 0 for s in sizes) or sum(sizes) != length:
            raise ValueError(f"split: sizes {sizes} do not add up to the axis size {length}")
    parts, start = [], 0
    for size in sizes:
        index = (slice(None),) * axis + (slice(start, start + size),)
        parts.append(getitem(x, index))
        start += size
    return parts
