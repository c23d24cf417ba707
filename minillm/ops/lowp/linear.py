"""``linear`` under ``amp.autocast``: the low-precision algorithm of :class:`minillm.ops.linear.Linear`
(see :mod:`minillm.ops.lowp` and the policy in :mod:`minillm.amp`)."""
from __future__ import annotations

import numpy as np

from minillm.amp.formats import cast
from minillm.autograd import Function
from minillm.backend import get_array_module

_HOST_BLOCK_ELEMENTS = 1 << 20   # low precision on the host: rows per block so a float32 slab is ~4 MiB


def _row_blocks(xp, n: int, width: int) -> list:
    """Slices of n rows: blocks of ~_HOST_BLOCK_ELEMENTS values on the host, where the format's
    values are widened to float32 for BLAS (the float32 copies stay small); one block on a GPU."""
    size = n if xp is not np else max(1, min(n, _HOST_BLOCK_ELEMENTS // max(width, 1)))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class LinearLowPrecision(Function):
    """y = x W^T + b in a low-precision format (``amp.autocast``): x and W enter the product as
    values of the format, the sums run in float32 (float32 BLAS on rounded values on the host; a
    float16 GEMM with float32 accumulation on the GPU), y = round(x W^T + b) is in the format's
    storage dtype (float16 for fp16). On the host the rows go in blocks, so the float32 copies of
    x, y and dL/dy never exist at full size.

    Shapes: as :class:`minillm.ops.linear.Linear`.
    Saves: x (an input of the graph, already in the format) and W (the float32 master weight:
    it is rounded again in backward rather than keeping a rounded copy alive).
    """

    def __init__(self, fmt):
        self.fmt = fmt

    def forward(self, x, weight, bias=None):
        xp = get_array_module(x)
        fmt = self.fmt
        c_in, c_out = x.shape[-1], weight.shape[0]
        self.x, self.weight = x, weight
        x2 = x.reshape(-1, c_in)                                # (N, C_in)
        w_t = fmt.operand(weight).T                             # (C_in, C_out) in the format
        y = xp.empty((x2.shape[0], c_out), dtype=fmt.storage_dtype)
        for rows in _row_blocks(xp, x2.shape[0], max(c_in, c_out)):
            yb = fmt.result(fmt.operand(x2[rows]) @ w_t)        # (r, C_in) @ (C_in, C_out) -> (r, C_out)
            if bias is not None:
                yb += bias                                      # before the one rounding, as a GEMM epilogue
            y[rows] = fmt.to_storage(yb)
        return y.reshape(x.shape[:-1] + (c_out,))               # (..., C_out)

    def backward(self, gy):
        # dL/dx = gy W,  dL/dW = gy^T x,  dL/db = Σ gy; float32 sums, every product rounded to the
        # format, then returned in its input's dtype (float32 for the master weight and bias)
        xp = get_array_module(gy)
        fmt, x, weight = self.fmt, self.x, self.weight
        c_in, c_out = weight.shape[1], weight.shape[0]
        gy2 = gy.reshape(-1, c_out)                             # (N, C_out)
        x2 = x.reshape(-1, c_in)                                # (N, C_in)
        needs = self.needs_input_grad
        w = fmt.operand(weight) if needs[0] else None           # (C_out, C_in)
        gx = xp.empty(x2.shape, dtype=x.dtype) if needs[0] else None
        gw = None
        for rows in _row_blocks(xp, gy2.shape[0], max(c_in, c_out)):
            g = fmt.operand(gy2[rows])                          # (r, C_out)
            if needs[0]:
                gx[rows] = fmt.to_storage(g @ w)                # (r, C_out) @ (C_out, C_in) -> (r, C_in)
            if needs[1]:
                part = (g.T @ fmt.operand(x2[rows])).astype(np.float32, copy=False)   # (C_out, r) @ (r, C_in)
                if gw is None:
                    gw = part
                else:
                    gw += part                                  # float32 sum over the row blocks
        if needs[0]:
            gx = gx.reshape(x.shape)
        if needs[1]:
            gw = cast(fmt.to_storage(gw), weight.dtype)          # rounded once, widened for the master weight
        gb = None
        if len(needs) > 2 and needs[2]:
            gb = gy2.sum(axis=0, dtype=np.float32).astype(weight.dtype, copy=False)   # (C_out,), float32 sums
        return (gx, gw) if len(needs) == 2 else (gx, gw, gb)

    def flops(self):
        """For the profiler, as Linear's: 2·N·C_in·C_out per product -- y, then dL/dx and dL/dW
        where wanted (the bias and its gradient's sum are not counted)."""
        product = 2 * self.x.size * self.weight.shape[0]        # x.size = N·C_in
        return product, product * sum(self.needs_input_grad[:2])
