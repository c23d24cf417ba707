"""The fused affine map ``linear(x, W, b) = x @ W^T + b``, with W stored (out, in) like PyTorch.

Batched inputs (B, T, C) are viewed as one (B·T, C) matrix, so forward and both weight
gradients are single 2-D BLAS calls instead of a loop over the batch. ``linear_composed`` is
the reference twin built from ``matmul``, ``transpose`` and ``add``. Under ``amp.autocast``
``linear`` runs :class:`minillm.ops.lowp.linear.LinearLowPrecision` instead (see :mod:`minillm.amp`).
"""
from __future__ import annotations

from minillm import amp
from minillm.autograd import Function
from minillm.ops import elementwise as ew
from minillm.ops import linalg
from minillm.ops import shape as sh
from minillm.ops.lowp.linear import LinearLowPrecision
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

    def flops(self):
        """For the profiler: 2·N·C_in·C_out per product -- y, then dL/dx and dL/dW where wanted
        (the bias and its gradient's sum are not counted)."""
        product = 2 * self.x.size * self.weight.shape[0]        # x.size = N·C_in
        return product, product * sum(self.needs_input_grad[:2])


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
    route = amp.dispatch("linear", x)
    _check_linear(x, weight, bias, mixed=route.kind == amp.LOW)
    fn = LinearLowPrecision(route.fmt) if route.kind == amp.LOW else Linear()
    return fn.apply(x, weight) if bias is None else fn.apply(x, weight, bias)


def linear_composed(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """linear from primitives: matmul(x, transpose(W)) + b (the reference twin)."""
    _check_linear(x, weight, bias)
    y = linalg.matmul(x, sh.transpose(weight, (1, 0)))          # (..., C_in) @ (C_in, C_out)
    return y if bias is None else ew.add(y, bias)
