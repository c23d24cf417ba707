"""Normalisation over the last axis: ``layer_norm`` and ``rms_norm``, fused.

Both normalise each row x (C values) to x̂ and then scale it elementwise by a learned weight
(LayerNorm also shifts by a bias). The backward formulas come from differentiating through the
row statistics once, by hand, so no (N, C) intermediate of the composed graph is kept:
forward saves only the per-row statistics (mean and/or 1/σ, shape (..., 1)); backward rebuilds
x̂ from the input, which the graph holds anyway. ``*_composed`` twins use primitive ops.

Under ``amp.autocast`` (:mod:`minillm.amp`) both run inside ``InFloat32``
(:mod:`minillm.ops.lowp.adapter`): statistics and x̂ in float32, the output rounded to the format's
storage dtype (on a GPU the kernel writes it so).

On a GPU (CuPy arrays: x float32 or float16, float32 weight and bias) fused kernels run instead
of the array code, one thread block per row: forward reads the row for the mean, again for the
variance (from cache) and writes y (and μ, r); backward reads x and dL/dy once for the two row
sums and once more to write dL/dx; dL/dw and dL/db are column sums computed in row chunks (partial
sums per chunk, then a small sum over the chunks). LayerNorm and RMSNorm share these kernels
(``centered`` = subtract the mean or not).
"""
from __future__ import annotations

import numpy as np

from minillm import amp
from minillm.autograd import Function
from minillm.backend import cupy_module, fusable, get_array_module
from minillm.ops import _cuda
from minillm.ops import elementwise as ew
from minillm.ops import reduce as rd
from minillm.ops._util import for_rows
from minillm.ops.lowp.adapter import adapt
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
    Saves: x (an input), w, μ and r = 1/sqrt(σ² + eps) of shape (..., 1) (flat (N,) when the fused
    CUDA kernel ran).
    """

    fused = False                # set by a forward that ran the CUDA kernel

    def __init__(self, eps: float):
        self.eps = eps

    def forward(self, x, weight, bias=None):
        y = self.kernel_forward(x, weight, bias)
        if y is not None:                                        # CuPy arrays: the fused kernel ran
            return y
        xp = get_array_module(x)
        c = x.shape[-1]
        x2 = x.reshape(-1, c)                                    # (N, C)
        y = xp.empty(x.shape, dtype=x.dtype)
        y2 = y.reshape(-1, c)
        mu = xp.empty(x.shape[:-1] + (1,), dtype=x.dtype)        # (..., 1)
        rstd = xp.empty(x.shape[:-1] + (1,), dtype=x.dtype)      # (..., 1)
        mu2, rstd2 = mu.reshape(-1, 1), rstd.reshape(-1, 1)

        def rows(start, stop):
            xs, ys, r = x2[start:stop], y2[start:stop], rstd2[start:stop]
            m = xp.mean(xs, axis=-1, keepdims=True, out=mu2[start:stop])   # μ
            xp.subtract(xs, m, out=ys)                           # x - μ
            r[...] = _row_dot(ys, ys)                            # Σ (x - μ)²
            r *= 1.0 / c
            r += self.eps
            xp.sqrt(r, out=r)
            xp.reciprocal(r, out=r)                              # r = 1/sqrt(σ² + eps)
            ys *= r                                              # x̂
            ys *= weight
            if bias is not None:
                ys += bias

        for_rows(rows, x2.shape[0], c, x)
        self.x, self.weight, self.mu, self.rstd = x, weight, mu, rstd
        return y

    def backward(self, gy):
        # With ĝ = gy · w (the gradient reaching x̂), per row of C values:
        #   dL/dx = r · (ĝ - mean(ĝ) - x̂ · mean(ĝ · x̂)),  dL/dw = Σ_rows gy · x̂,  dL/db = Σ_rows gy
        needs = self.needs_input_grad
        if self.fused:                                           # the fused forward ran (flat μ, r)
            return _norm_backward_cuda(self.x, gy, self.weight, self.mu, self.rstd, True, needs)
        return _norm_backward_host(self.x, gy, self.weight, self.mu, self.rstd, True, needs)

    def kernel_forward(self, x, weight, bias=None, out_dtype=None, round_bf16=False):
        """The fused CUDA forward, or None where it does not run (:func:`_fused_norm`): x float32 or
        float16, float32 inside, y written in ``out_dtype`` (x's by default), rounded to bfloat16
        first with ``round_bf16`` (what ``InFloat32`` asks for under autocast)."""
        if not _fused_norm(x, weight, bias):
            return None
        self.x, self.weight, self.fused = x, weight, True
        y, self.mu, self.rstd = _norm_forward_cuda(x, weight, bias, self.eps, True,
                                                   x.dtype if out_dtype is None else out_dtype, round_bf16)
        return y


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
    """Layer normalisation over the last axis (see :class:`LayerNorm`; in float32 under
    ``amp.autocast``, the output stored in the format)."""
    route = amp.dispatch("layer_norm", x)
    _check_norm(x, weight, bias, eps, "layer_norm", mixed=route.kind != amp.AS_IS)
    fn = adapt(LayerNorm(float(eps)), route)
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
    Saves: x (an input), w and r = 1/sqrt(mean(x²) + eps) of shape (..., 1) (flat (N,) when the
    fused CUDA kernel ran).
    """

    fused = False                # set by a forward that ran the CUDA kernel

    def __init__(self, eps: float):
        self.eps = eps

    def forward(self, x, weight):
        y = self.kernel_forward(x, weight)
        if y is not None:                                        # CuPy arrays: the fused kernel ran
            return y
        xp = get_array_module(x)
        c = x.shape[-1]
        x2 = x.reshape(-1, c)                                    # (N, C)
        y = xp.empty(x.shape, dtype=x.dtype)
        y2 = y.reshape(-1, c)
        rstd = xp.empty(x.shape[:-1] + (1,), dtype=x.dtype)      # (..., 1)
        rstd2 = rstd.reshape(-1, 1)

        def rows(start, stop):
            xs, r = x2[start:stop], rstd2[start:stop]
            r[...] = _row_dot(xs, xs)                            # Σ x²
            r *= 1.0 / c
            r += self.eps
            xp.sqrt(r, out=r)
            xp.reciprocal(r, out=r)                              # r
            ys = xp.multiply(xs, r, out=y2[start:stop])          # x̂
            ys *= weight

        for_rows(rows, x2.shape[0], c, x)
        self.x, self.weight, self.rstd = x, weight, rstd
        return y

    def backward(self, gy):
        # With ĝ = gy · w:  dL/dx = r · (ĝ - x̂ · mean(ĝ · x̂)),  dL/dw = Σ_rows gy · x̂
        if self.fused:                                           # the fused forward ran
            return _norm_backward_cuda(self.x, gy, self.weight, None, self.rstd, False, self.needs_input_grad)
        return _norm_backward_host(self.x, gy, self.weight, None, self.rstd, False, self.needs_input_grad)

    def kernel_forward(self, x, weight, out_dtype=None, round_bf16=False):
        """The fused CUDA forward, or None where it does not run: as :meth:`LayerNorm.kernel_forward`."""
        if not _fused_norm(x, weight, None):
            return None
        self.x, self.weight, self.fused = x, weight, True
        y, _, self.rstd = _norm_forward_cuda(x, weight, None, self.eps, False,
                                             x.dtype if out_dtype is None else out_dtype, round_bf16)
        return y


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """RMS normalisation over the last axis (see :class:`RMSNorm`; in float32 under
    ``amp.autocast``, the output stored in the format)."""
    route = amp.dispatch("rms_norm", x)
    _check_norm(x, weight, None, eps, "rms_norm", mixed=route.kind != amp.AS_IS)
    return adapt(RMSNorm(float(eps)), route).apply(x, weight)


def rms_norm_composed(x: Tensor, weight: Tensor, eps: float = 1e-5) -> Tensor:
    """rms_norm from primitives: x / sqrt(mean(x²) + eps) * w."""
    _check_norm(x, weight, None, eps, "rms_norm_composed")
    mean_square = rd.mean(ew.mul(x, x), axis=-1, keepdims=True)
    return ew.mul(ew.div(x, ew.sqrt(ew.add(mean_square, float(eps)))), weight)


# ---------------------------------------------------------------------------------------------
# CUDA kernels (CuPy arrays): see the module docstring
# ---------------------------------------------------------------------------------------------
def _fused_norm(x, weight, bias) -> bool:
    """The kernels take x in float32/float16 and a float32 weight (and bias)."""
    return (fusable(x) and fusable(weight) and weight.dtype == np.float32
            and (bias is None or (fusable(bias) and bias.dtype == np.float32)))


_NORM_FORWARD = _cuda.RowKernels(r"""
// One block per row of C values x: (centered) mean, r = 1/sqrt(mean((x - mean)^2) + eps),
// y = (x - mean) * r * w (+ b), optionally rounded to bfloat16; writes mean and r per row.
extern "C" __global__ void norm_forward(
        const X_T* x, const float* weight, const float* bias, Y_T* y, float* mean_out, float* rstd_out,
        long long width, float eps, int centered, int has_bias, int round_bf16) {
    __shared__ float scratch[32];
    long long row = blockIdx.x, base = row * width;
    float mean = 0.0f;
    if (centered) {
        float s = 0.0f;
        for (long long j = threadIdx.x; j < width; j += blockDim.x) s += LOAD_X(x, base + j);
        mean = minillm_block_sum(s, scratch) / (float)width;
    }
    float ss = 0.0f;
    for (long long j = threadIdx.x; j < width; j += blockDim.x) {
        float d = LOAD_X(x, base + j) - mean;
        ss += d * d;
    }
    float rstd = 1.0f / sqrtf(minillm_block_sum(ss, scratch) / (float)width + eps);
    for (long long j = threadIdx.x; j < width; j += blockDim.x) {
        float v = (LOAD_X(x, base + j) - mean) * rstd * weight[j];
        if (has_bias) v += bias[j];
        if (round_bf16) v = minillm_round_bf16(v);
        STORE_Y(y, base + j, v);
    }
    if (threadIdx.x == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
}
""", ("X", "Y"))

_NORM_BACKWARD = _cuda.RowKernels(r"""
// dL/dx per row, with g = dL/dy * w and xhat = (x - mean) * r:
//   dx = r * (g - mean(g) - xhat * mean(g * xhat))      (centered; RMSNorm drops mean(g))
extern "C" __global__ void norm_backward_input(
        const X_T* x, const G_T* gy, const float* weight, const float* mean, const float* rstd, X_T* gx,
        long long width, int centered) {
    __shared__ float scratch[32];
    long long row = blockIdx.x, base = row * width;
    float mu = centered ? mean[row] : 0.0f, r = rstd[row];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (long long j = threadIdx.x; j < width; j += blockDim.x) {
        float g = LOAD_G(gy, base + j) * weight[j];
        sum_g += g;
        sum_gx += g * (LOAD_X(x, base + j) - mu) * r;
    }
    sum_g = minillm_block_sum(sum_g, scratch);
    sum_gx = minillm_block_sum(sum_gx, scratch);
    float mean_g = centered ? sum_g / (float)width : 0.0f, mean_gx = sum_gx / (float)width;
    for (long long j = threadIdx.x; j < width; j += blockDim.x) {
        float g = LOAD_G(gy, base + j) * weight[j];
        float xhat = (LOAD_X(x, base + j) - mu) * r;
        STORE_X(gx, base + j, r * (g - mean_g - xhat * mean_gx));
    }
}

// Partial column sums of dL/dy * xhat (-> dL/dw) and dL/dy (-> dL/db) over one chunk of rows:
// block (32, 8) covers 32 columns; grid (ceil(C / 32), chunks); out: (chunks, C) each.
extern "C" __global__ void norm_backward_params(
        const X_T* x, const G_T* gy, const float* mean, const float* rstd, float* weight_partial,
        float* bias_partial, long long rows, long long width, long long rows_per_chunk, int centered,
        int has_bias) {
    __shared__ float part_w[8][33];
    __shared__ float part_b[8][33];
    long long col = (long long)blockIdx.x * 32 + threadIdx.x;
    long long start = (long long)blockIdx.y * rows_per_chunk;
    long long stop = start + rows_per_chunk;
    if (stop > rows) stop = rows;
    float acc_w = 0.0f, acc_b = 0.0f;
    if (col < width) {
        for (long long r = start + threadIdx.y; r < stop; r += blockDim.y) {
            float g = LOAD_G(gy, r * width + col);
            float xhat = (LOAD_X(x, r * width + col) - (centered ? mean[r] : 0.0f)) * rstd[r];
            acc_w += g * xhat;
            acc_b += g;
        }
    }
    part_w[threadIdx.y][threadIdx.x] = acc_w;
    part_b[threadIdx.y][threadIdx.x] = acc_b;
    __syncthreads();
    if (threadIdx.y == 0 && col < width) {
        float sum_w = 0.0f, sum_b = 0.0f;
        for (int k = 0; k < blockDim.y; ++k) {
            sum_w += part_w[k][threadIdx.x];
            sum_b += part_b[k][threadIdx.x];
        }
        weight_partial[(long long)blockIdx.y * width + col] = sum_w;
        if (has_bias) bias_partial[(long long)blockIdx.y * width + col] = sum_b;
    }
}
""", ("X", "G"))

_PARAM_CHUNK_ROWS = 64           # rows per partial column sum (dL/dw, dL/db)


def _norm_forward_cuda(x, weight, bias, eps: float, centered: bool, out_dtype, round_bf16: bool):
    """y (x's shape, ``out_dtype``), mean (N,) and r (N,) float32 of the fused forward."""
    cp = cupy_module()
    c = x.shape[-1]
    x2 = _cuda.contiguous(x)
    n = x2.size // c if c else 0
    y = cp.empty(x.shape, dtype=out_dtype)
    mean = cp.empty(n, dtype=cp.float32)
    rstd = cp.empty(n, dtype=cp.float32)
    if n:
        kernel = _NORM_FORWARD.get("norm_forward", X=x2.dtype, Y=out_dtype)
        kernel((n,), (_cuda.row_threads(c),),
               (x2, _cuda.contiguous(weight), _cuda.contiguous(weight if bias is None else bias), y, mean, rstd,
                _cuda.i64(c), _cuda.f32(eps), np.int32(centered), np.int32(bias is not None),
                np.int32(round_bf16)))
    return y, mean, rstd


def _norm_backward_host(x, gy, weight, mean, rstd, centered: bool, needs):
    """The array backward of LayerNorm (``centered``: x̂ = (x - μ)·r, with a bias) and RMSNorm
    (x̂ = x·r), the host twin of :func:`_norm_backward_cuda`. With ĝ = gy · w, per row of C values:

        dL/dx = r · (ĝ - [mean(ĝ)] - x̂ · mean(ĝ · x̂))    ([..] only when centered)
        dL/dw = Σ_rows gy · x̂,   dL/db = Σ_rows gy        (db only when needs has a third entry)

    x̂ is rebuilt from the saved μ and r (not stored by forward) and the row work is split across
    the host threads (each row's arithmetic is the same for any thread count)."""
    xp = get_array_module(gy)
    c = x.shape[-1]
    x2, gy2, rstd2 = x.reshape(-1, c), gy.reshape(-1, c), rstd.reshape(-1, 1)   # (N, C), (N, C), (N, 1)
    mean2 = mean.reshape(-1, 1) if centered else None
    xhat = xp.empty(x2.shape, dtype=gy.dtype)                    # (N, C) x̂, then x̂ · mean(ĝ · x̂)
    gx = xp.empty(x2.shape, dtype=gy.dtype) if needs[0] else None

    def rebuild_xhat(start, stop):
        xs = xhat[start:stop]
        if centered:
            xp.subtract(x2[start:stop], mean2[start:stop], out=xs)
            xs *= rstd2[start:stop]
        else:
            xp.multiply(x2[start:stop], rstd2[start:stop], out=xs)

    def input_gradient(start, stop):
        xs, g = xhat[start:stop], gx[start:stop]
        xp.multiply(gy2[start:stop], weight, out=g)             # ĝ
        proj = _row_dot(g, xs)                                   # (rows, 1)
        proj *= 1.0 / c
        xs *= proj
        if centered:
            g -= g.mean(axis=-1, keepdims=True)
        g -= xs
        g *= rstd2[start:stop]

    n = x2.shape[0]
    for_rows(rebuild_xhat, n, c, gy)
    gw = _column_dot(gy2, xhat) if needs[1] else None            # (C,)
    if needs[0]:
        for_rows(input_gradient, n, c, gy)
        gx = gx.reshape(x.shape)
    if len(needs) == 2:
        return gx, gw
    return gx, gw, (_sum_rows(gy2, c) if needs[2] else None)      # (C,)


def _norm_backward_cuda(x, gy, weight, mean, rstd, centered: bool, needs):
    """(dL/dx, dL/dw[, dL/db]) of the fused norm; dL/dx in x's dtype, the rest float32."""
    cp = cupy_module()
    c = x.shape[-1]
    x2 = _cuda.contiguous(x)
    g2 = _cuda.contiguous(gy)
    n = x2.size // c if c else 0
    mean_arg = rstd if mean is None else mean
    has_bias = len(needs) > 2
    gx = gw = gb = None
    if needs[0]:
        gx = cp.empty(x.shape, dtype=x.dtype)
        if n:
            kernel = _NORM_BACKWARD.get("norm_backward_input", X=x2.dtype, G=g2.dtype)
            kernel((n,), (_cuda.row_threads(c),), (x2, g2, _cuda.contiguous(weight), mean_arg, rstd, gx,
                                                   _cuda.i64(c), np.int32(centered)))
    if needs[1] or (has_bias and needs[2]):
        chunks = max(1, -(-n // _PARAM_CHUNK_ROWS))
        weight_partial = cp.empty((chunks, c), dtype=cp.float32)
        bias_partial = cp.empty((chunks, c), dtype=cp.float32) if has_bias else weight_partial
        if n:
            kernel = _NORM_BACKWARD.get("norm_backward_params", X=x2.dtype, G=g2.dtype)
            kernel((-(-c // 32), chunks), (32, 8),
                   (x2, g2, mean_arg, rstd, weight_partial, bias_partial, _cuda.i64(n), _cuda.i64(c),
                    _cuda.i64(_PARAM_CHUNK_ROWS), np.int32(centered), np.int32(has_bias)))
        else:
            weight_partial.fill(0)
            bias_partial.fill(0)
        if needs[1]:
            gw = weight_partial.sum(axis=0).astype(weight.dtype, copy=False)       # (C,)
        if has_bias and needs[2]:
            gb = bias_partial.sum(axis=0).astype(weight.dtype, copy=False)         # (C,)
    return (gx, gw) if not has_bias else (gx, gw, gb)
