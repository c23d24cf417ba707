"""Small helpers shared by the op families."""
from __future__ import annotations

from minillm.backend import get_array_module, is_host_array
from minillm.host import parallel_for
from minillm.tensor import Tensor


def as_tensor(value, like: Tensor | None = None) -> Tensor:
    """``value`` as a Tensor. Python numbers take ``like``'s dtype and device, so ``x * 2``
    stays float32 for a float32 ``x``; arrays are wrapped as they are (no gradient)."""
    if isinstance(value, Tensor):
        return value
    if like is not None and isinstance(value, (int, float, bool)):
        xp = get_array_module(like.data)
        return Tensor._from_op(xp.asarray(value, dtype=like.data.dtype), None)
    return Tensor(value)


def binary_operands(a, b) -> tuple[Tensor, Tensor]:
    """Both operands of a binary op as Tensors, numbers taking the other operand's dtype."""
    if isinstance(a, Tensor):
        return a, (b if isinstance(b, Tensor) else as_tensor(b, a))
    if isinstance(b, Tensor):
        return as_tensor(a, b), b
    raise TypeError(f"expected at least one Tensor operand, got {type(a).__name__} and "
                    f"{type(b).__name__}")


def sum_to(gradient, shape: tuple):
    """Sum ``gradient`` over the axes that broadcasting expanded, giving an array of ``shape``.

    Broadcasting prepends axes and stretches size-1 axes; the gradient of a broadcast is the
    sum over exactly those axes.
    """
    if gradient.shape == shape:
        return gradient
    lead = gradient.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, size in enumerate(shape)
                                      if size == 1 and gradient.shape[lead + i] != 1)
    if axes:
        gradient = gradient.sum(axis=axes, keepdims=True)
    return gradient.reshape(shape)


def normalize_axis(axis, ndim: int, op: str) -> tuple | None:
    """``axis`` (None, int or tuple) as a sorted tuple of non-negative axes (None = all)."""
    if axis is None:
        return None
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not isinstance(a, int) or not -ndim <= a < max(ndim, 1):
            raise ValueError(f"{op}: axis={axis!r} is out of range for a tensor with {ndim} dims")
        out.append(a % max(ndim, 1))
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: axis={axis!r} repeats an axis")
    return tuple(sorted(out))


def check_same_shape(a: Tensor, b: Tensor, op: str) -> None:
    if a.data.shape != b.data.shape:
        raise ValueError(f"{op}: shapes {tuple(a.data.shape)} and {tuple(b.data.shape)} differ; "
                         "expected equal shapes")


def for_rows(fn, n_rows: int, row_size: int, array) -> None:
    """``fn(start, stop)`` over ``range(n_rows)``: split across the host threads when ``array`` is a
    host array (:func:`minillm.host.parallel_for`; each row's arithmetic is unchanged, so results
    do not depend on the split), else one call (the GPU runs whole arrays)."""
    if is_host_array(array):
        parallel_for(fn, n_rows, cost_per_item=max(row_size, 1))
    else:
        fn(0, n_rows)


def matmul_flops(a_shape, b_shape, needs_input_grad) -> tuple[int, int]:
    """For the profiler: the (forward, backward) FLOPs of a @ b, 2·batch·N·K·M per product -- y,
    then dL/da and dL/db where ``needs_input_grad`` wants them (the sums over broadcast batch axes
    are not counted). a (..., N, K), b (..., K, M), batch axes broadcast."""
    batch = 1
    for axis in range(3, max(len(a_shape), len(b_shape)) + 1):   # the batch axes, broadcast, from the right
        size_a, size_b = (shape[-axis] if axis <= len(shape) else 1 for shape in (a_shape, b_shape))
        batch *= size_a if size_b == 1 else size_b
    product = 2 * batch * a_shape[-2] * a_shape[-1] * b_shape[-1]
    return product, product * sum(needs_input_grad[:2])
