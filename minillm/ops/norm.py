"""Normalisation over the last axis: ``layer_norm`` and ``rms_norm``, fused.

Both normalise each row x (C values) to x̂ and then scale it elementwise by a learned weight
(LayerNorm also shifts by a bias). The backward formulas come from differentiating through the
row statistics once, by hand, so no (N, C) intermediate of the composed graph is kept:
forward saves only the per-row statistics (mean and/or 1/σ, shape (..., 1)); backward rebuilds
x̂ from the input, which the graph holds anyway. ``*_composed`` twins use primitive ops.

Under ``amp.autocast`` (:mod:`minillm.amp`) the ``*LowPrecision`` subclasses run: statistics and
x̂ in float32, the output rounded to the format's storage dtype.
"""
from __future__ import annotations

import numpy as np

from minillm import amp
from minillm.autograd import Function
from minillm.backend import cast, get_array_module
from minillm.ops import elementwise as ew
from minillm.ops import reduce as rd
from minillm.tensor import Tensor


def _sum_rows(a, c: int):
    """Sum a (..., C) array over every leading axis -> (C,)."""
    return a.reshape(-1, c).sum(axis=0)                          # (N, C) -> (C,)


def _row_dot(a, b):
    """Σ_c a[..., c] b[..., c] -> (..., 1), without an (..., C) temporary (einsum)."""
    xp = get_array_module(a)
    return xp.einsum("...c,...c->...", a, b)[..., None]          # (..., 1)


def _column_dot(a, b):
    """Σ over every leading axis of a ⊙ b -> (C,), without an (N, C) temporary (einsum)."""
    xp = get_array_module(a)
    c = a.shape[-1]
    return xp.einsum("nc,nc->c", a.reshape(-1, c), b.reshape(-1, c))   # (N, C) -> (C,)


class LayerNorm(Function):
    """y = x̂ · w + b,  x̂ = (x - μ) / sqrt(σ² + eps),  μ, σ² the mean and (biased) variance of
    each row over the last axis.

    Shapes: x (..., C), w (C,), b (C,) or absent -> y (..., C).
    Saves: x (an input), w, μ and r = 1/sqrt(σ² + eps) of shape (..., 1).
    """

    def __init__(self, eps: float):
        self.eps = eps

    def forward(self, x, weight, bias=None):
        xp = get_array_module(x)
        c = x.shape[-1]
        mu = x.mean(axis=-1, keepdims=True)                      # (..., 1)
        y = x - mu                                               # (..., C), x - μ
        var = _row_dot(y, y)                                     # (..., 1) Σ (x - μ)²
        var *= 1.0 / c
        var += self.eps
        rstd = xp.sqrt(var, out=var)
        xp.reciprocal(rstd, out=rstd)                            # r = 1/sqrt(σ² + eps)
        y *= rstd                                                # x̂
        y *= weight
        if bias is not None:
            y += bias
        self.x, self.weight, self.mu, self.rstd = x, weight, mu, rstd
        return y

    def backward(self, gy):
        # With ĝ = gy · w (the gradient reaching x̂), per row of C values:
        #   dL/dx = r · (ĝ - mean(ĝ) - x̂ · mean(ĝ · x̂)),  dL/dw = Σ_rows gy · x̂,  dL/db = Σ_rows gy
        c = self.x.shape[-1]
        xhat = self.x - self.mu
        xhat *= self.rstd                                        # (..., C)
        needs = self.needs_input_grad
        gw = gb = gx = None
        if needs[1]:
            gw = _column_dot(gy, xhat)                           # (C,)
        if len(needs) > 2 and needs[2]:
            gb = _sum_rows(gy, c)                                # (C,)
        if needs[0]:
            g = gy * self.weight                                 # ĝ (..., C)
            proj = _row_dot(g, xhat)                             # (..., 1)
            proj *= 1.0 / c
            xhat *= proj
            gx = g
            gx -= g.mean(axis=-1, keepdims=True)
            gx -= xhat
            gx *= self.rstd
        return (gx, gw) if len(needs) == 2 else (gx, gw, gb)


class LayerNormLowPrecision(LayerNorm):
    """:class:`LayerNorm` under ``amp.autocast``: μ, σ², x̂ and the affine map in float32 (x may be
    float32 or float16), the output rounded to the format's storage dtype: its consumers are
    matmuls, which round it to the format anyway, and the graph keeps it at half the size in fp16.
    Saves: x (as given), w, μ and r (float32)."""

    def __init__(self, eps: float, fmt):
        super().__init__(eps)
        self.fmt = fmt

    def forward(self, x, weight, bias=None):
        y = super().forward(cast(x, np.float32), weight, bias)
        self.x = x                                       # the graph's array, not a float32 copy
        return self.fmt.to_storage(y)

    def backward(self, gy):
        # the float32 backward (dL/dx, dL/dw, dL/db), dL/dx returned in x's dtype
        x = self.x
        self.x = cast(x, np.float32)
        grads = super().backward(cast(gy, np.float32))
        gx = None if grads[0] is None else cast(grads[0], x.dtype)
        return (gx,) + tuple(grads[1:])


def _check_norm(x: Tensor, weight: Tensor, bias: Tensor | None, eps: float, op: str,
                mixed: bool = False) -> None:
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise TypeError(f"{op}: x and weight must be Tensors, got {type(x).__name__} and "
                        f"{type(weight).__name__}")
    if x.ndim < 1 or weight.shape != (x.shape[-1],):
        raise ValueError(f"{op}: weight has shape {weight.shape} for x of shape {x.shape}; expected "
                         "(C,) with C the last dim of x")
    if bias is not None and bias.shape != weight.shape:
        raise ValueError(f"{op}: bias has shape {bias.shape}; expected {weight.shape}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and t.dtype != x.dtype and not (mixed and x.dtype.kind == "f"):
            raise TypeError(f"{op}: {name} has dtype {t.dtype} but x has {x.dtype}; expected equal dtypes")
    if not isinstance(eps, (int, float)) or eps <= 0:
        raise ValueError(f"{op}: eps={eps!r}; expected a positive number")


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """Layer normalisation over the last axis (see :class:`LayerNorm`; under ``amp.autocast``
    :class:`LayerNormLowPrecision`)."""
    fmt = amp.active_format()
    _check_norm(x, weight, bias, eps, "layer_norm", mixed=fmt is not None)
    fn = LayerNorm(float(eps)) if fmt is None else LayerNormLowPrecision(float(eps), fmt)
    if bias is None:
        return fn.apply(x, weight)
    return fn.apply(x, weight, bias)


def layer_norm_composed(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                        eps: float = 1e-5) -> Tensor:
    """layer_norm from primitives: (x - mean) / sqrt(var + eps) * w + b."""
    _check_norm(x, weight, bias, eps, "layer_norm_composed")
    centered = ew.sub(x, rd.mean(x, axis=-1, keepdims=True))
    variance = rd.mean(ew.mul(centered, centered), axis=-1, keepdims=True)
    y = ew.mul(ew.div(centered, ew.sqrt(ew.add(variance, float(eps)))), weight)
    return y if bias is None else ew.add(y, bias)


class RMSNorm(Function):
    """y = x̂ · w,  x̂ = x / sqrt(mean(x²) + eps) over the last axis (Zhang & Sennrich 2019).

    Shapes: x (..., C), w (C,) -> y (..., C).
    Saves: x (an input), w and r = 1/sqrt(mean(x²) + eps) of shape (..., 1).
    """

    def __init__(self, eps: float):
        self.eps = eps

    def forward(self, x, weight):
        xp = get_array_module(x)
        ms = _row_dot(x, x)                                      # (..., 1) Σ x²
        ms *= 1.0 / x.shape[-1]
        ms += self.eps
        rstd = xp.sqrt(ms, out=ms)
        xp.reciprocal(rstd, out=rstd)                            # r
        y = x * rstd                                             # x̂ (..., C)
        y *= weight
        self.x, self.weight, self.rstd = x, weight, rstd
        return y

    def backward(self, gy):
        # With ĝ = gy · w:  dL/dx = r · (ĝ - x̂ · mean(ĝ · x̂)),  dL/dw = Σ_rows gy · x̂
        c = self.x.shape[-1]
        xhat = self.x * self.rstd                                # (..., C)
        gx = gw = None
        if self.needs_input_grad[1]:
            gw = _column_dot(gy, xhat)                           # (C,)
        if self.needs_input_grad[0]:
            g = gy * self.weight                                 # ĝ
            proj = _row_dot(g, xhat)                             # (..., 1)
            proj *= 1.0 / c
            xhat *= proj
            gx = g
            gx -= xhat
            gx *= self.rstd
        return gx, gw


class RMSNormLowPrecision(RMSNorm):
    """:class:`RMSNorm` under ``amp.autocast``: as :class:`LayerNormLowPrecision` (float32 inside,
    output rounded to the format's storage dtype).  Saves: x (as given), w and r (float32)."""

    def __init__(self, eps: float, fmt):
        super().__init__(eps)
        self.fmt = fmt

    def forward(self, x, weight):
        y = super().forward(cast(x, np.float32), weight)
        self.x = x
        return self.fmt.to_storage(y)

    def backward(self, gy):
        x = self.x
        self.x = cast(x, np.float32)
        gx, gw = super().backward(cast(gy, np.float32))
        return (None if gx is None else cast(gx, x.dtype)), gw


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """RMS normalisation over the last axis (see :class:`RMSNorm`; under ``amp.autocast``
    :class:`RMSNormLowPrecision`)."""
    fmt = amp.active_format()
    _check_norm(x, weight, None, eps, "rms_norm", mixed=fmt is not None)
    if fmt is not None:
        return RMSNormLowPrecision(float(eps), fmt).apply(x, weight)
    return RMSNorm(float(eps)).apply(x, weight)


def rms_norm_composed(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """rms_norm from primitives: x / sqrt(mean(x²) + eps) * w."""
    _check_norm(x, weight, None, eps, "rms_norm_composed")
    mean_square = rd.mean(ew.mul(x, x), axis=-1, keepdims=True)
    return ew.mul(ew.div(x, ew.sqrt(ew.add(mean_square, float(eps)))), weight)
