"""``matmul`` under ``amp.autocast``: the low-precision algorithm of :class:`minillm.ops.linalg.MatMul`
(see :mod:`minillm.ops.lowp` and the policy in :mod:`minillm.amp`)."""
from __future__ import annotations

from minillm.amp.formats import cast
from minillm.autograd import Function
from minillm.backend import get_array_module
from minillm.ops._util import matmul_flops, sum_to


class MatMulLowPrecision(Function):
    """y = a @ b in a low-precision format (``amp.autocast``): a and b enter the product as the
    format's values, sums in float32, y rounded to the format (its storage dtype). Gradients are
    rounded products too, returned in each input's dtype.
    Shapes: as :class:`minillm.ops.linalg.MatMul`.  Saves: a and b."""

    def __init__(self, fmt):
        self.fmt = fmt

    def forward(self, a, b):
        self.a, self.b = a, b
        return self.fmt.to_storage(self.fmt.matmul(a, b))

    def backward(self, gy):
        # dL/da = gy @ b^T,  dL/db = a^T @ gy   (summed over broadcast batch axes)
        xp = get_array_module(gy)
        fmt, a, b = self.fmt, self.a, self.b
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = sum_to(fmt.matmul(gy, xp.swapaxes(b, -1, -2)), a.shape)   # broadcast sums before rounding
            ga = cast(fmt.to_storage(ga), a.dtype)
        if self.needs_input_grad[1]:
            gb = sum_to(fmt.matmul(xp.swapaxes(a, -1, -2), gy), b.shape)
            gb = cast(fmt.to_storage(gb), b.dtype)
        return ga, gb

    def flops(self):
        """For the profiler, as MatMul's (:func:`minillm.ops._util.matmul_flops`)."""
        return matmul_flops(self.a.shape, self.b.shape, self.needs_input_grad)
