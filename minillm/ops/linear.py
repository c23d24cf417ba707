"""The fused affine map ``linear(x, W, b) = x @ W^T + b``, with W stored (out, in) like PyTorch.

Batched inputs (B, T, C) are viewed as one (B·T, C) matrix, so forward and both weight
gradients are single 2-D BLAS calls instead of a loop over the batch. ``linear_composed`` is
the reference twin built from ``matmul``, ``transpose`` and ``add``. Under ``amp.autocast``
``linear`` runs :class:`LinearLowPrecision` instead (see :mod:`minillm.amp`).
"""
from __future__ import annotations

import numpy as np

from minillm import amp
from minillm.autograd import Function
from minillm.amp.formats import cast
from minillm.backend import get_array_module
from minillm.ops import elementwise as ew
from minillm.ops import linalg
from minillm.ops import shape as sh
from minillm.tensor import Tensor


class Linear(Function):
    """y = x W^T + b.

    Shapes: x (..., C_in), W (C_out, C_in), b (C_out,) or absent -> y (..., C_out).
    Saves: x and W (both alive anyway as inputs of the graph; nothing new is kept).
    """

    def forward(self, x, weight, bias=None):
        c_in = x.shape[-1]
        c_out = weight.shape[0]
        self.x, self.weight = x, weight
        x2 = x.reshape(-1, c_in)                                # (N, C_in), N = prod(leading)
        y = x2 @ weight.T                                       # (N, C_in) @ (C_in, C_out) -> (N, C_out)
        if bias is not None:
            y += bias                                           # fresh output: add in place
        return y.reshape(x.shape[:-1] + (c_out,))               # (..., C_out)

    def backward(self, gy):
        # dL/dx = gy W,  dL/dW = gy^T x,  dL/db = sum of gy over every leading axis
        x, weight = self.x, self.weight
        c_in, c_out = weight.shape[1], weight.shape[0]
        gy2 = gy.reshape(-1, c_out)                             # (N, C_out)
        gx = gw = gb = None
        if self.needs_input_grad[0]:
            gx = (gy2 @ weight).reshape(x.shape)                # (N, C_out) @ (C_out, C_in) -> (..., C_in)
        if self.needs_input_grad[1]:
            gw = gy2.T @ x.reshape(-1, c_in)                    # (C_out, N) @ (N, C_in) -> (C_out, C_in)
        if len(self.needs_input_grad) > 2 and self.needs_input_grad[2]:
            gb = gy2.sum(axis=0)                                # (C_out,)
        return (gx, gw) if len(self.needs_input_grad) == 2 else (gx, gw, gb)


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

    Shapes: as :class:`Linear`.
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


def _check_linear(x: Tensor, weight: Tensor, bias: Tensor | None, mixed: bool = False) -> None:
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise TypeError(f"linear: x and weight must be Tensors, got {type(x).__name__} and "
                        f"{type(weight).__name__}")
    if weight.ndim != 2:
        raise ValueError(f"linear: weight has shape {weight.shape}; expected 2 dims (out_features, "
                         "in_features)")
    if x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"linear: x has shape {x.shape} but weight has shape {weight.shape}; "
                         f"expected x's last dim to equal in_features={weight.shape[1]}")
    if x.dtype != weight.dtype and not (mixed and x.dtype.kind == "f"):
        raise TypeError(f"linear: x has dtype {x.dtype} but weight has dtype {weight.dtype}; "
                        "expected equal dtypes")
    if bias is not None:
        if not isinstance(bias, Tensor):
            raise TypeError(f"linear: bias must be a Tensor or None, got {type(bias).__name__}")
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"linear: bias has shape {bias.shape}; expected ({weight.shape[0]},) "
                             "(out_features,)")
        if bias.dtype != weight.dtype:
            raise TypeError(f"linear: bias has dtype {bias.dtype}; expected the weight's {weight.dtype}")


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x @ weight.T + bias (PyTorch's ``F.linear``); see :class:`Linear` (and
    :class:`LinearLowPrecision` under ``amp.autocast``)."""
    fmt = amp.active_format()
    _check_linear(x, weight, bias, mixed=fmt is not None)
    if fmt is not None:
        fn = LinearLowPrecision(fmt)
        return fn.apply(x, weight) if bias is None else fn.apply(x, weight, bias)
    if bias is None:
        return Linear().apply(x, weight)
    return Linear().apply(x, weight, bias)


def linear_composed(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """linear from primitives: matmul(x, transpose(W)) + b (the reference twin)."""
    _check_linear(x, weight, bias)
    y = linalg.matmul(x, sh.transpose(weight, (1, 0)))          # (..., C_in) @ (C_in, C_out)
    return y if bias is None else ew.add(y, bias)
