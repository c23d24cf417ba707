"""Linear algebra: batched matrix multiplication with broadcasting over batch axes (in a
low-precision format under ``amp.autocast``: :class:`minillm.ops.lowp.matmul.MatMulLowPrecision`)."""
from __future__ import annotations

from minillm import amp
from minillm.autograd import Function
from minillm.backend import get_array_module
from minillm.ops._util import binary_operands, matmul_flops, sum_to
from minillm.ops.lowp.matmul import MatMulLowPrecision
from minillm.ops.shape import reshape
from minillm.tensor import Tensor


class MatMul(Function):
    """y = a @ b.  Shapes: a (..., N, K), b (..., K, M) -> y (..., N, M); batch axes broadcast.
    Saves: a and b."""

    def forward(self, a, b):
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        # dL/da = gy @ b^T,  dL/db = a^T @ gy   (then summed over broadcast batch axes)
        xp = get_array_module(gy)
        a, b = self.a, self.b
        ga = gb = None
        if self.needs_input_grad[0]:
            ga = sum_to(gy @ xp.swapaxes(b, -1, -2), a.shape)
        if self.needs_input_grad[1]:
            if b.ndim == 2 and a.ndim > 2:
                # A shared 2-D weight: fold the batch axes into one matrix product (one BLAS call)
                k, m = b.shape
                gb = a.reshape(-1, k).T @ gy.reshape(-1, m)             # (K, M)
            else:
                gb = sum_to(xp.swapaxes(a, -1, -2) @ gy, b.shape)
        return ga, gb

    def flops(self):
        return matmul_flops(self.a.shape, self.b.shape, self.needs_input_grad)


def matmul(a, b) -> Tensor:
    """Matrix product with NumPy's rules; a 1-D operand is treated as a row/column vector."""
    a, b = binary_operands(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands must have at least 1 dim, got shapes {a.shape} and {b.shape}")
    if a.ndim == 1:
        out = matmul(reshape(a, (1, a.shape[0])), b)
        return reshape(out, out.shape[:-2] + out.shape[-1:])
    if b.ndim == 1:
        out = matmul(a, reshape(b, (b.shape[0], 1)))
        return reshape(out, out.shape[:-1])
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: shapes {a.shape} and {b.shape} do not match: a's last dim "
                         f"{a.shape[-1]} must equal b's second-to-last dim {b.shape[-2]}")
    route = amp.dispatch("matmul", a, b)
    try:
        return (MatMulLowPrecision(route.fmt) if route.kind == amp.LOW else MatMul()).apply(a, b)
    except ValueError as error:
        raise ValueError(f"matmul: batch axes of shapes {a.shape} and {b.shape} do not broadcast: "
                         f"{error}") from None
