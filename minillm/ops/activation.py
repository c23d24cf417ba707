"""Activations and (log-)softmax.

``gelu``, ``silu``, ``swiglu``, ``softmax`` and ``log_softmax`` are fused: one Function with a
hand-derived backward that saves as little as possible. Each keeps a ``*_composed`` twin built
from primitive ops (exp, tanh, mul, ...); tests check that both agree, values and gradients.

float16 inputs (mixed precision, :mod:`minillm.amp`): ``gelu``, ``silu`` and ``swiglu`` compute in
float32 and round the result once to float16 (inside ``InFloat32``, :mod:`minillm.ops.lowp.adapter`:
NumPy has no fast float16 arithmetic, and one rounding is more accurate than one per step); under
``amp.autocast``, ``softmax`` and ``log_softmax`` of a float16 input run in float32 and return
float32 (the same adapter, no rounding).

On a GPU (CuPy arrays, float32 or float16) GELU, SiLU and SwiGLU run as one fused elementwise
kernel each way (see the end of this module): float32 arithmetic, one read of the inputs, one
write of the result, and only the inputs saved for backward.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from minillm import amp
from minillm.autograd import Function
from minillm.backend import erf, fusable, get_array_module, is_host_array
from minillm.host import parallel_for
from minillm.ops import _cuda
from minillm.ops import elementwise as ew
from minillm.ops import reduce as rd
from minillm.ops import shape as sh
from minillm.ops.lowp.adapter import adapt
from minillm.tensor import Tensor

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_CUBIC = 0.044715
_ELEMENTWISE_BLOCK = 1 << 18     # elements per block of a multi-pass backward (1 MiB in float32)


class ReLU(Function):
    """y = max(x, 0).  Saves: the mask x > 0."""

    def forward(self, x):
        self.positive = x > 0
        return x * self.positive

    def backward(self, gy):
        # dy/dx = [x > 0]
        return gy * self.positive


def relu(x: Tensor) -> Tensor:
    return ReLU().apply(x)


class Tanh(Function):
    """y = tanh x.  Saves: y."""

    def forward(self, x):
        self.y = get_array_module(x).tanh(x)
        return self.y

    def backward(self, gy):
        # dy/dx = 1 - tanh^2 x
        return gy * (1 - self.y * self.y)


def tanh(x: Tensor) -> Tensor:
    return Tanh().apply(x)


class Sigmoid(Function):
    """y = 1 / (1 + e^-x), computed as (1 + tanh(x/2)) / 2, which never overflows.  Saves: y."""

    def forward(self, x):
        y = get_array_module(x).tanh(x * 0.5)
        y += 1
        y *= 0.5
        self.y = y
        return y

    def backward(self, gy):
        # dy/dx = y (1 - y)
        return gy * self.y * (1 - self.y)


def sigmoid(x: Tensor) -> Tensor:
    return Sigmoid().apply(x)


class LogSigmoid(Function):
    """y = log σ(x) = -log(1 + e^{-x}), computed as min(x, 0) - log1p(e^{-|x|}).

    The exponent -|x| is never positive, so nothing overflows: log σ(-1000) = -1000 and
    log σ(1000) = 0 exactly, where the naive log(1/(1 + e^{-x})) gives -inf and NaN gradients
    (the DPO loss is -log σ of a reward margin).
    Shapes: any -> same. Saves: x and y.
    """

    def forward(self, x):
        xp = get_array_module(x)
        y = xp.minimum(x, 0)
        y -= xp.log1p(xp.exp(-xp.abs(x)))
        self.x, self.y = x, y
        return y

    def backward(self, gy):
        # dy/dx = 1 - σ(x) = σ(-x) = exp(log σ(-x)) = exp(y - x), since log σ(-x) = log σ(x) - x.
        # y - x <= 0 never overflows, and unlike (1 - tanh(x/2))/2 it keeps the relative
        # precision of tiny gradients (σ(-50) = 2e-22, not 0).
        xp = get_array_module(gy)
        s = self.y - self.x
        xp.exp(s, out=s)
        s *= gy
        return s


def logsigmoid(x: Tensor) -> Tensor:
    """log σ(x), numerically stable for any x (see :class:`LogSigmoid`)."""
    if not isinstance(x, Tensor) or x.dtype.kind != "f":
        raise TypeError(f"logsigmoid: x must be a floating Tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    return LogSigmoid().apply(x)


def logsigmoid_composed(x: Tensor) -> Tensor:
    """log σ(x) from primitives: log σ(x) = log(e^x / (e^0 + e^x)) = log_softmax([0, x])[1]."""
    zero = Tensor(get_array_module(x.data).zeros(x.shape, dtype=x.dtype))
    pair = sh.stack([zero, x], axis=-1)                               # (..., 2)
    return sh.getitem(log_softmax_composed(pair, axis=-1), (Ellipsis, 1))   # (...)


class GELU(Function):
    """Gaussian Error Linear Unit.

    approximate="tanh" (GPT-2):  y = x · u,  u = (1 + tanh(√(2/π) (x + 0.044715 x³))) / 2
    approximate="none" (exact):  y = x · Φ(x) = x/2 · (1 + erf(x/√2))
    Saves: for "tanh" x, and with ``gate_from_output`` the output y too, never a third
    (N, 4C) array: the feed-forward activation is the largest per-layer array. Backward needs the
    gate u: with ``gate_from_output`` it reads it back as u = y / x (u = 1/2 where |x| < 1e-30;
    within an ulp or two of the forward's u), a division instead of the tanh and its six passes
    (a quarter of the time); the output costs no memory there because the next layer keeps it
    anyway as its input. Without (the default, and for float16 results, where y / x would carry
    float16's rounding), u is recomputed from x. x and erf(x/√2) for "none".
    """

    def __init__(self, approximate: str = "tanh", gate_from_output: bool = False):
        self.approximate = approximate
        self.gate_from_output = gate_from_output and approximate == "tanh"

    def forward(self, x):
        y = self.kernel_forward(x)
        if y is not None:                                # CuPy arrays: the fused kernel ran
            return y
        self.x = x
        if self.approximate == "tanh":
            y = _gelu_tanh_forward(x)
            if self.gate_from_output:
                self.y = y
            return y
        self.t = erf(x * (1 / math.sqrt(2.0)))           # erf(x/√2) = 2Φ(x) - 1
        y = self.t + 1
        y *= x
        y *= 0.5
        return y

    def backward(self, gy):
        x = self.x
        if fusable(x, gy):
            return (_GELU_TANH_BACKWARD if self.approximate == "tanh" else _GELU_ERF_BACKWARD)(x, gy)
        if self.approximate == "tanh":
            if not self.gate_from_output:
                return _gelu_tanh_backward(x, gy)
            # The gradient may go into y's own memory when nothing else can read y again: the graph
            # is freed after this backward and no Tensor, view or other op holds y any more (the
            # next layer, which kept it, has run its backward already). Then backward allocates no
            # (N, 4C) array, as when u was recomputed and y was freed before this backward.
            reuse = (self.may_overwrite_saved and is_host_array(self.y) and self.y.dtype == gy.dtype
                     and self.y.flags.c_contiguous and _reference_count(self.y) <= _SOLE_REFERENCE_COUNT)
            y = self.y
            if reuse:
                self.y = None                            # its memory becomes the gradient
            return _gelu_tanh_backward(x, gy, y, out=y if reuse else None)
        # dy/dx = Φ(x) + x φ(x),  φ(x) = e^{-x²/2} / √(2π)
        xp = get_array_module(gy)
        density = xp.exp(-0.5 * x * x) * (1 / math.sqrt(2 * math.pi))
        return gy * (0.5 * (1 + self.t) + x * density)

    def kernel_forward(self, x, out_dtype=None, round_bf16=False):
        """The fused CUDA kernel, or None where it does not run (see :func:`_kernel_runs`)."""
        if not _kernel_runs((x,), out_dtype, round_bf16):
            return None
        self.x = x
        return (_GELU_TANH_FORWARD if self.approximate == "tanh" else _GELU_ERF_FORWARD)(x)


def _kernel_runs(arrays, out_dtype, round_bf16) -> bool:
    """Whether an elementwise kernel below runs: CuPy float32/float16 inputs (``fusable``), and the
    result asked for in their own dtype (the only one the kernels write: float32 arithmetic inside,
    one rounding to that dtype)."""
    return fusable(*arrays) and not round_bf16 and (out_dtype is None or out_dtype == arrays[0].dtype)


def _gelu_tanh_forward(x):
    """y = x · u(x) (a new array): on the host in one contiguous range per thread (see
    :func:`minillm.host.parallel_for`; elementwise, so bit-identical for any thread count)."""
    xp = get_array_module(x)
    if not is_host_array(x):
        y = _gelu_gate(x)
        y *= x
        return y
    x = xp.ascontiguousarray(x)
    y = xp.empty_like(x)
    xf, yf = x.reshape(-1), y.reshape(-1)

    def part(start, stop):
        for lo in range(start, stop, _ELEMENTWISE_BLOCK):
            hi = min(stop, lo + _ELEMENTWISE_BLOCK)
            u = _gelu_gate(xf[lo:hi], out=yf[lo:hi])
            u *= xf[lo:hi]

    parallel_for(part, xf.size)
    return y


_TINY_GELU_INPUT = 1e-30         # below this |x| the gate u is 1/2 (y / x would lose its digits)


def _gelu_gate_from_output(xs, ys, u, scratch) -> None:
    """u = y / x, the gate of y = x · u read back from the forward's output, 1/2 where
    |x| < _TINY_GELU_INPUT (there u(x) = 1/2 to working precision, and y / x would be 0/0 or a
    subnormal quotient). Four passes; ``scratch`` is a float buffer of x's size."""
    xp = get_array_module(xs)
    with np.errstate(divide="ignore", invalid="ignore"):  # x = 0: replaced just below
        xp.divide(ys, xs, out=u)
    xp.abs(xs, out=scratch)
    xp.copyto(u, 0.5, where=scratch < _TINY_GELU_INPUT)


def _reference_count(array) -> int:
    """sys.getrefcount of an array passed as ``_reference_count(holder.attribute)``."""
    return sys.getrefcount(array)


class _OneHolder:
    """An object holding a fresh object (the count is the same for an array) in one attribute:
    to measure the count that means "no one else"."""

    def __init__(self):
        self.array = object()


def _sole_reference_count() -> int:
    """What _reference_count(holder.attribute) gives when that attribute is the array's only
    reference, measured the same way (so it includes whatever the interpreter counts for the
    call itself, which differs between Python versions)."""
    holder = _OneHolder()
    return _reference_count(holder.array)


_SOLE_REFERENCE_COUNT = _sole_reference_count()


def _gelu_tanh_backward(x, gy, y=None, out=None):
    """dL/dx of the tanh GELU for saved x and upstream gy (a new array in gy's dtype, or ``out``,
    which may be y itself: each block's gate is read before the block is overwritten); with the
    forward's output y the gate is read back from it (:func:`_gelu_gate_from_output`), else
    recomputed from x."""
    # With t = tanh(a), a = √(2/π)(x + 0.044715 x³), u = (1 + t)/2, 1 - t² = 4u(1 - u):
    #   dy/dx = u + x · (1 - t²)/2 · da/dx = u + 2 u (1 - u) · x √(2/π)(1 + 3·0.044715 x²)
    xp = get_array_module(gy)
    g = xp.empty(x.shape, dtype=gy.dtype) if out is None else out
    xf, gyf, gf = x.reshape(-1), gy.reshape(-1), g.reshape(-1)   # flat (gy may be copied)
    yf = None if y is None else y.reshape(-1)

    # In blocks: the two scratch arrays stay small (in cache, never page-faulted anew) and only
    # the returned gradient is a full-size allocation. On the host each thread takes a range.
    def part(start, stop):
        size = max(1, min(stop - start, _ELEMENTWISE_BLOCK))     # an empty x loops zero times
        u_buf = xp.empty(size, dtype=gy.dtype)
        w_buf = xp.empty(size, dtype=gy.dtype)
        for lo in range(start, stop, size):
            xs, gs = xf[lo:lo + size], gf[lo:lo + size]
            u, w = u_buf[:xs.size], w_buf[:xs.size]
            if yf is None:
                _gelu_gate(xs, out=u)
            else:
                _gelu_gate_from_output(xs, yf[lo:lo + size], u, w)
            xp.multiply(xs, xs, out=gs)
            gs *= 6 * _SQRT_2_OVER_PI * _GELU_CUBIC
            gs += 2 * _SQRT_2_OVER_PI
            gs *= xs                                 # 2 x da/dx
            xp.subtract(1, u, out=w)
            w *= u                                   # u (1 - u)
            gs *= w
            gs += u
            gs *= gyf[lo:lo + size]

    if is_host_array(g):
        parallel_for(part, xf.size)
    else:
        part(0, xf.size)
    return g


def _gelu_gate(x, out=None):
    """u = (1 + tanh(√(2/π)(x + 0.044715 x³))) / 2 in ``out`` or a fresh array (7 passes)."""
    xp = get_array_module(x)
    u = xp.multiply(x, x, out=out)
    u *= _SQRT_2_OVER_PI * _GELU_CUBIC
    u += _SQRT_2_OVER_PI
    u *= x                                               # √(2/π) (x + 0.044715 x³)
    xp.tanh(u, out=u)
    u *= 0.5
    u += 0.5
    return u


def gelu(x: Tensor, approximate: str = "tanh") -> Tensor:
    if approximate not in ("tanh", "none"):
        raise ValueError(f"gelu: approximate={approximate!r}; expected 'tanh' or 'none'")
    # tanh: in float32 block by block for a float16 x (the erf form keeps a full-size erf(x/√2) anyway)
    route = amp.dispatch("gelu", x)
    # the gate read back from the output only where that output is float32 or float64 (see GELU)
    from_output = route.kind == amp.AS_IS and x.dtype.kind == "f" and x.dtype.itemsize >= 4
    return adapt(GELU(approximate, gate_from_output=from_output), route, blocks=approximate == "tanh").apply(x)


def gelu_composed(x: Tensor, approximate: str = "tanh") -> Tensor:
    """GELU from primitive ops (the reference twin of the fused :func:`gelu`)."""
    if approximate == "tanh":
        inner = ew.mul(ew.add(x, ew.mul(ew.pow(x, 3), _GELU_CUBIC)), _SQRT_2_OVER_PI)
        return ew.mul(ew.mul(x, 0.5), ew.add(tanh(inner), 1.0))
    raise ValueError("gelu_composed: only approximate='tanh' has a composed twin (erf is not a "
                     "primitive op)")


class SiLU(Function):
    """y = x · σ(x) (also called swish).  Saves: x and σ(x)."""

    def forward(self, x):
        y = self.kernel_forward(x)
        if y is not None:                                # CuPy arrays: the fused kernel ran
            return y
        s = get_array_module(x).tanh(x * 0.5)
        s += 1
        s *= 0.5
        self.x, self.s = x, s
        return x * s

    def backward(self, gy):
        # dy/dx = σ + x σ (1 - σ) = σ (1 + x (1 - σ))
        if fusable(self.x, gy):
            return _SILU_BACKWARD(self.x, gy)
        d = 1 - self.s
        d *= self.x
        d += 1
        d *= self.s
        return gy * d

    def kernel_forward(self, x, out_dtype=None, round_bf16=False):
        """The fused CUDA kernel, or None where it does not run (see :func:`_kernel_runs`)."""
        if not _kernel_runs((x,), out_dtype, round_bf16):
            return None
        self.x = x
        return _SILU_FORWARD(x)


def silu(x: Tensor) -> Tensor:
    return adapt(SiLU(), amp.dispatch("silu", x)).apply(x)


def silu_composed(x: Tensor) -> Tensor:
    """SiLU from primitive ops: x · σ(x)."""
    return ew.mul(x, sigmoid(x))


def _sigmoid_via_tanh(x):
    """σ(x) = (1 + tanh(x/2)) / 2 in a fresh array (no overflow for large |x|)."""
    s = get_array_module(x).tanh(x * 0.5)
    s += 1
    s *= 0.5
    return s


class SwiGLU(Function):
    """y = silu(a) · b = a σ(a) b (Shazeer 2020, "GLU Variants Improve Transformer"): the gated
    unit of the Llama feed-forward, a = x W_gate^T and b = x W_up^T.

    Shapes: a, b (..., H) -> y (..., H).
    Saves: a and b (inputs of the graph anyway); σ(a) is recomputed in backward, which costs
    one tanh but keeps no extra (..., H) array alive between forward and backward.
    """

    def forward(self, a, b):
        y = self.kernel_forward(a, b)
        if y is not None:                                # CuPy arrays: the fused kernel ran
            return y
        self.a, self.b = a, b
        if not (is_host_array(a) and a.flags.c_contiguous and b.flags.c_contiguous):
            y = _sigmoid_via_tanh(a)
            y *= a
            y *= b
            return y
        y = get_array_module(a).empty_like(a)
        af, bf, yf = a.reshape(-1), b.reshape(-1), y.reshape(-1)

        def part(start, stop):                           # one range per host thread, same arithmetic
            ys = _sigmoid_via_tanh(af[start:stop])
            ys *= af[start:stop]
            ys *= bf[start:stop]
            yf[start:stop] = ys

        parallel_for(part, af.size, cost_per_item=4)     # tanh and three passes an element
        return y

    def backward(self, gy):
        a, b, needs = self.a, self.b, self.needs_input_grad
        if fusable(a, b, gy):
            return _swiglu_backward_cuda(a, b, gy, needs)
        if not (is_host_array(gy) and all(x.flags.c_contiguous for x in (a, b, gy))):
            return _swiglu_backward(a, b, gy, needs)
        xp = get_array_module(gy)
        ga = xp.empty_like(a) if needs[0] else None
        gb = xp.empty_like(b) if needs[1] else None
        flat = [x.reshape(-1) for x in (a, b, gy)]

        def part(start, stop):                           # one range per host thread, same arithmetic
            parts = _swiglu_backward(*(x[start:stop] for x in flat), needs)
            for out, value in zip((ga, gb), parts):
                if out is not None:
                    out.reshape(-1)[start:stop] = value

        parallel_for(part, a.size, cost_per_item=6)
        return ga, gb

    def kernel_forward(self, a, b, out_dtype=None, round_bf16=False):
        """The fused CUDA kernel, or None where it does not run (see :func:`_kernel_runs`)."""
        if not _kernel_runs((a, b), out_dtype, round_bf16):
            return None
        self.a, self.b = a, b
        return _SWIGLU_FORWARD(a, b)


def _swiglu_backward(a, b, gy, needs):
    """(dL/da, dL/db) of y = silu(a) · b (None where not needed)."""
    # dy/da = b · σ(a) (1 + a (1 - σ(a))),  dy/db = a σ(a) = silu(a)
    s = _sigmoid_via_tanh(a)
    ga = gb = None
    if needs[1]:
        gb = a * s
        gb *= gy
    if needs[0]:
        ga = 1 - s
        ga *= a
        ga += 1
        ga *= s
        ga *= b
        ga *= gy
    return ga, gb


def swiglu(a: Tensor, b: Tensor) -> Tensor:
    """silu(a) * b, fused (see :class:`SwiGLU`); a is the gate, b the up projection."""
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"swiglu: a and b must be Tensors, got {type(a).__name__} and {type(b).__name__}")
    if a.shape != b.shape:
        raise ValueError(f"swiglu: gate a has shape {a.shape} and b has {b.shape}; expected equal shapes")
    if a.dtype != b.dtype:
        raise TypeError(f"swiglu: a has dtype {a.dtype} and b has {b.dtype}; expected equal dtypes")
    return adapt(SwiGLU(), amp.dispatch("swiglu", a, b), blocks=True).apply(a, b)


def swiglu_composed(a: Tensor, b: Tensor) -> Tensor:
    """SwiGLU from primitive ops: silu_composed(a) * b."""
    return ew.mul(silu_composed(a), b)


class Softmax(Function):
    """y_i = e^{x_i - m} / Σ_j e^{x_j - m} along ``axis`` (m = max, so nothing overflows).
    Shapes: y like x.  Saves: y."""

    def __init__(self, axis: int = -1):
        self.axis = axis

    def forward(self, x):
        xp = get_array_module(x)
        y = x - x.max(axis=self.axis, keepdims=True)
        xp.exp(y, out=y)
        y /= y.sum(axis=self.axis, keepdims=True)
        self.y = y
        return y

    def backward(self, gy):
        # dy_i/dx_j = y_i (δ_ij - y_j)  =>  gx = y ⊙ (gy - Σ_j gy_j y_j)
        y = self.y
        dot = (gy * y).sum(axis=self.axis, keepdims=True)
        gx = gy - dot
        gx *= y
        return gx


def softmax(x: Tensor, axis: int = -1) -> Tensor:
    _check_axis(x, axis, "softmax")
    return adapt(Softmax(axis), amp.dispatch("softmax", x)).apply(x)


def softmax_composed(x: Tensor, axis: int = -1) -> Tensor:
    """Softmax from primitives: exp(x - max) / sum(exp(x - max))."""
    shifted = ew.sub(x, rd.max(x, axis=axis, keepdims=True).detach())
    e = ew.exp(shifted)
    return ew.div(e, rd.sum(e, axis=axis, keepdims=True))


class LogSoftmax(Function):
    """y_i = x_i - m - ln Σ_j e^{x_j - m} along ``axis``.  Saves: y."""

    def __init__(self, axis: int = -1):
        self.axis = axis

    def forward(self, x):
        xp = get_array_module(x)
        y = x - x.max(axis=self.axis, keepdims=True)
        y -= xp.log(xp.exp(y).sum(axis=self.axis, keepdims=True))
        self.y = y
        return y

    def backward(self, gy):
        # dy_i/dx_j = δ_ij - softmax_j  =>  gx = gy - softmax ⊙ Σ_j gy_j
        xp = get_array_module(gy)
        gx = xp.exp(self.y)
        gx *= -gy.sum(axis=self.axis, keepdims=True)
        gx += gy
        return gx


def log_softmax(x: Tensor, axis: int = -1) -> Tensor:
    _check_axis(x, axis, "log_softmax")
    return adapt(LogSoftmax(axis), amp.dispatch("log_softmax", x)).apply(x)


def log_softmax_composed(x: Tensor, axis: int = -1) -> Tensor:
    """log_softmax from primitives: (x - max) - log(sum(exp(x - max)))."""
    shifted = ew.sub(x, rd.max(x, axis=axis, keepdims=True).detach())
    return ew.sub(shifted, ew.log(rd.sum(ew.exp(shifted), axis=axis, keepdims=True)))


def _check_axis(x: Tensor, axis: int, op: str) -> None:
    if not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis={axis!r} is out of range for a tensor of shape {x.shape}")


# ---------------------------------------------------------------------------------------------
# CUDA kernels (CuPy arrays, float32 or float16): one pass each way, float32 arithmetic inside
# ---------------------------------------------------------------------------------------------
_GELU_TANH_FORWARD = _cuda.Elementwise("T x", "T y", """
    float v = (float)x;
    float u = 0.5f * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    y = (T)(v * u);
""", "minillm_gelu_tanh_forward")

_GELU_TANH_BACKWARD = _cuda.Elementwise("T x, T gy", "T gx", """
    // dy/dx = u + 2 u (1 - u) x sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    float v = (float)x;
    float u = 0.5f * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    float slope = 0.7978845608028654f * (1.0f + 0.134145f * v * v);
    gx = (T)((float)gy * (u + 2.0f * u * (1.0f - u) * v * slope));
""", "minillm_gelu_tanh_backward")

_GELU_ERF_FORWARD = _cuda.Elementwise("T x", "T y", """
    float v = (float)x;
    y = (T)(0.5f * v * (1.0f + erff(v * 0.7071067811865476f)));
""", "minillm_gelu_erf_forward")

_GELU_ERF_BACKWARD = _cuda.Elementwise("T x, T gy", "T gx", """
    // dy/dx = Phi(x) + x phi(x)
    float v = (float)x;
    float cdf = 0.5f * (1.0f + erff(v * 0.7071067811865476f));
    float pdf = expf(-0.5f * v * v) * 0.3989422804014327f;
    gx = (T)((float)gy * (cdf + v * pdf));
""", "minillm_gelu_erf_backward")

_SILU_FORWARD = _cuda.Elementwise("T x", "T y", """
    float v = (float)x;
    y = (T)(v / (1.0f + expf(-v)));
""", "minillm_silu_forward")

_SILU_BACKWARD = _cuda.Elementwise("T x, T gy", "T gx", """
    // dy/dx = s (1 + x (1 - s)),  s = sigmoid(x)
    float v = (float)x;
    float s = 1.0f / (1.0f + expf(-v));
    gx = (T)((float)gy * s * (1.0f + v * (1.0f - s)));
""", "minillm_silu_backward")

_SWIGLU_FORWARD = _cuda.Elementwise("T a, T b", "T y", """
    float va = (float)a;
    y = (T)(va / (1.0f + expf(-va)) * (float)b);
""", "minillm_swiglu_forward")

_SWIGLU_BACKWARD = _cuda.Elementwise("T a, T b, T gy", "T ga, T gb", """
    // dy/da = b s (1 + a (1 - s)),  dy/db = a s,  s = sigmoid(a)
    float va = (float)a, g = (float)gy;
    float s = 1.0f / (1.0f + expf(-va));
    ga = (T)(g * (float)b * s * (1.0f + va * (1.0f - s)));
    gb = (T)(g * va * s);
""", "minillm_swiglu_backward")

_SWIGLU_BACKWARD_A = _cuda.Elementwise("T a, T b, T gy", "T ga", """
    float va = (float)a;
    float s = 1.0f / (1.0f + expf(-va));
    ga = (T)((float)gy * (float)b * s * (1.0f + va * (1.0f - s)));
""", "minillm_swiglu_backward_a")

_SWIGLU_BACKWARD_B = _cuda.Elementwise("T a, T gy", "T gb", """
    float va = (float)a;
    gb = (T)((float)gy * va / (1.0f + expf(-va)));
""", "minillm_swiglu_backward_b")


def _swiglu_backward_cuda(a, b, gy, needs):
    """(dL/da, dL/db) of the fused SwiGLU (None where not needed), one kernel."""
    if needs[0] and needs[1]:
        return _SWIGLU_BACKWARD(a, b, gy)
    if needs[0]:
        return _SWIGLU_BACKWARD_A(a, b, gy), None
    return None, _SWIGLU_BACKWARD_B(a, gy)
