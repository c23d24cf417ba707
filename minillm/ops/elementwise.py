"""Elementwise ops: add, sub, mul, div, neg, pow, exp, log, sqrt, abs, maximum, minimum,
clip, where, cast.

Binary ops broadcast like NumPy; their backward sums the gradient back to each input's shape
(:func:`sum_to`). Python numbers take the tensor operand's dtype, so float32 stays float32.
Operands of two float dtypes promote like NumPy (a float32 residual stream plus a float16 branch
under mixed precision is float32); add, sub, mul and div return each gradient in its input's dtype.
"""
from __future__ import annotations

import numpy as np

from minillm.amp.formats import cast as cast_array
from minillm.autograd import Function
from minillm.backend import get_array_module
from minillm.ops._util import as_tensor, binary_operands, sum_to
from minillm.tensor import Tensor


def _broadcast_error(op: str, a: Tensor, b: Tensor) -> ValueError:
    return ValueError(f"{op}: shapes {tuple(a.data.shape)} and {tuple(b.data.shape)} cannot be "
                      "broadcast together; expected equal sizes or 1 on every trailing axis")


def _apply_binary(fn: Function, a, b, op: str) -> Tensor:
    a, b = binary_operands(a, b)
    try:
        return fn.apply(a, b)
    except ValueError as error:
        if "broadcast" in str(error):
            raise _broadcast_error(op, a, b) from None
        raise


def _input_grad(gradient, shape: tuple, dtype):
    """sum_to(gradient, shape) in the input's dtype (it differs only for mixed-dtype operands)."""
    gradient = sum_to(gradient, shape)
    return gradient if gradient.dtype == dtype else cast_array(gradient, dtype)


class Add(Function):
    """y = a + b (broadcasting).  Shapes: a, b broadcastable -> y.  Saves: the input shapes and dtypes."""

    def forward(self, a, b):
        self.a_shape, self.b_shape, self.a_dtype, self.b_dtype = a.shape, b.shape, a.dtype, b.dtype
        return a + b

    def backward(self, gy):
        # dy/da = 1, dy/db = 1
        return (_input_grad(gy, self.a_shape, self.a_dtype) if self.needs_input_grad[0] else None,
                _input_grad(gy, self.b_shape, self.b_dtype) if self.needs_input_grad[1] else None)


def add(a, b) -> Tensor:
    return _apply_binary(Add(), a, b, "add")


class Sub(Function):
    """y = a - b (broadcasting).  Saves: the input shapes and dtypes."""

    def forward(self, a, b):
        self.a_shape, self.b_shape, self.a_dtype, self.b_dtype = a.shape, b.shape, a.dtype, b.dtype
        return a - b

    def backward(self, gy):
        # dy/da = 1, dy/db = -1
        return (_input_grad(gy, self.a_shape, self.a_dtype) if self.needs_input_grad[0] else None,
                _input_grad(-gy, self.b_shape, self.b_dtype) if self.needs_input_grad[1] else None)


def sub(a, b) -> Tensor:
    return _apply_binary(Sub(), a, b, "sub")


class Mul(Function):
    """y = a * b (broadcasting).  Saves: a and b."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        # dy/da = b, dy/db = a
        a, b = self.a, self.b
        return (_input_grad(gy * b, a.shape, a.dtype) if self.needs_input_grad[0] else None,
                _input_grad(gy * a, b.shape, b.dtype) if self.needs_input_grad[1] else None)


def mul(a, b) -> Tensor:
    return _apply_binary(Mul(), a, b, "mul")


class Div(Function):
    """y = a / b (broadcasting).  Saves: a and b."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a / b

    def backward(self, gy):
        # dy/da = 1/b, dy/db = -a/b^2
        ga = gb = None
        g_over_b = gy / self.b
        if self.needs_input_grad[0]:
            ga = _input_grad(g_over_b, self.a.shape, self.a.dtype)
        if self.needs_input_grad[1]:
            gb = _input_grad(-g_over_b * self.a / self.b, self.b.shape, self.b.dtype)
        return ga, gb


def div(a, b) -> Tensor:
    return _apply_binary(Div(), a, b, "div")


class Neg(Function):
    """y = -x."""

    def forward(self, x):
        return -x

    def backward(self, gy):
        # dy/dx = -1
        return -gy


def neg(x: Tensor) -> Tensor:
    return Neg().apply(x)


class PowScalar(Function):
    """y = x ** p for a constant number p.  Saves: x."""

    def __init__(self, exponent: float):
        self.exponent = exponent

    def forward(self, x):
        self.x = x
        return x ** self.exponent

    def backward(self, gy):
        # dy/dx = p * x^(p-1)
        p = self.exponent
        return gy * (p * self.x ** (p - 1)).astype(gy.dtype, copy=False)


class Pow(Function):
    """y = a ** b for two tensors (broadcasting).  Saves: a, b and y."""

    def forward(self, a, b):
        self.a, self.b = a, b
        self.y = a ** b
        return self.y

    def backward(self, gy):
        # dy/da = b * a^(b-1);  dy/db = y * ln(a)
        xp = get_array_module(gy)
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = sum_to(gy * self.b * self.a ** (self.b - 1), self.a.shape)
        if self.needs_input_grad[1]:
            gb = sum_to(gy * self.y * xp.log(self.a), self.b.shape)
        return ga, gb


def pow(base, exponent) -> Tensor:  # noqa: A001  (PyTorch's name)
    """``base ** exponent``; a constant number exponent uses the cheaper :class:`PowScalar`."""
    if isinstance(base, Tensor) and isinstance(exponent, (int, float)) and not isinstance(exponent, bool):
        return PowScalar(exponent).apply(base)
    return _apply_binary(Pow(), base, exponent, "pow")


class Exp(Function):
    """y = e^x.  Saves: y."""

    def forward(self, x):
        self.y = get_array_module(x).exp(x)
        return self.y

    def backward(self, gy):
        # dy/dx = e^x = y
        return gy * self.y


def exp(x: Tensor) -> Tensor:
    return Exp().apply(x)


class Log(Function):
    """y = ln x.  Saves: x."""

    def forward(self, x):
        self.x = x
        return get_array_module(x).log(x)

    def backward(self, gy):
        # dy/dx = 1/x
        return gy / self.x


def log(x: Tensor) -> Tensor:
    return Log().apply(x)


class Sqrt(Function):
    """y = sqrt(x).  Saves: y."""

    def forward(self, x):
        self.y = get_array_module(x).sqrt(x)
        return self.y

    def backward(self, gy):
        # dy/dx = 1 / (2 sqrt(x))
        return gy / (2 * self.y)


def sqrt(x: Tensor) -> Tensor:
    return Sqrt().apply(x)


class Abs(Function):
    """y = |x| (gradient 0 at x = 0, as in PyTorch).  Saves: x."""

    def forward(self, x):
        self.x = x
        return get_array_module(x).abs(x)

    def backward(self, gy):
        # dy/dx = sign(x)
        return gy * get_array_module(gy).sign(self.x)


def abs(x: Tensor) -> Tensor:  # noqa: A001
    return Abs().apply(x)


class Maximum(Function):
    """y = max(a, b) elementwise (broadcasting); at ties each input gets half the gradient.
    Saves: a and b."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return get_array_module(a).maximum(a, b)

    def backward(self, gy):
        # dy/da = [a > b] + 0.5 [a == b];  dy/db = [b > a] + 0.5 [a == b]
        share_a = (self.a > self.b) + 0.5 * (self.a == self.b)
        share_a = share_a.astype(gy.dtype, copy=False)
        return (sum_to(gy * share_a, self.a.shape) if self.needs_input_grad[0] else None,
                sum_to(gy * (1 - share_a), self.b.shape) if self.needs_input_grad[1] else None)


def maximum(a, b) -> Tensor:
    return _apply_binary(Maximum(), a, b, "maximum")


def minimum(a, b) -> Tensor:
    """y = min(a, b) elementwise = -max(-a, -b) (ties split the gradient in half)."""
    a, b = binary_operands(a, b)
    return neg(maximum(neg(a), neg(b)))


class Clip(Function):
    """y = min(max(x, low), high); the gradient passes where low <= x <= high.  Saves: x."""

    def __init__(self, low, high):
        self.low, self.high = low, high

    def forward(self, x):
        self.x = x
        return get_array_module(x).clip(x, self.low, self.high)

    def backward(self, gy):
        # dy/dx = 1 inside [low, high], 0 outside
        inside = get_array_module(gy).ones(self.x.shape, dtype=bool)
        if self.low is not None:
            inside &= self.x >= self.low
        if self.high is not None:
            inside &= self.x <= self.high
        return gy * inside


def clip(x: Tensor, min=None, max=None) -> Tensor:  # noqa: A002  (PyTorch/NumPy names)
    if min is None and max is None:
        raise ValueError("clip: min=None and max=None; expected at least one bound")
    if min is not None and max is not None and min > max:
        raise ValueError(f"clip: min={min} is larger than max={max}")
    return Clip(min, max).apply(x)


class Where(Function):
    """y = a where cond else b (broadcasting); cond is a boolean array with no gradient.
    Saves: cond and the input shapes."""

    def __init__(self, condition):
        self.condition = condition

    def forward(self, a, b):
        self.a_shape, self.b_shape = a.shape, b.shape
        return get_array_module(a).where(self.condition, a, b)

    def backward(self, gy):
        # dy/da = [cond], dy/db = [not cond]
        xp = get_array_module(gy)
        zero = xp.zeros((), dtype=gy.dtype)
        return (sum_to(xp.where(self.condition, gy, zero), self.a_shape) if self.needs_input_grad[0] else None,
                sum_to(xp.where(self.condition, zero, gy), self.b_shape) if self.needs_input_grad[1] else None)


def where(condition, a, b) -> Tensor:
    condition = condition.data if isinstance(condition, Tensor) else condition
    if getattr(condition, "dtype", None) != np.bool_:
        raise TypeError(f"where: condition must be a boolean array/tensor, got "
                        f"{getattr(condition, 'dtype', type(condition).__name__)}")
    a, b = binary_operands(a, b)
    return Where(condition).apply(a, b)


class Cast(Function):
    """y = x converted to another dtype; the gradient is converted back."""

    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)

    def forward(self, x):
        self.input_dtype = x.dtype
        return cast_array(x, self.dtype)                 # astype (fast float16 casts on the host)

    def backward(self, gy):
        # dy/dx = 1 (in the input's dtype)
        return cast_array(gy, self.input_dtype)


def cast(x: Tensor, dtype) -> Tensor:
    if np.dtype(dtype) == x.data.dtype:
        return x
    return Cast(dtype).apply(as_tensor(x))
