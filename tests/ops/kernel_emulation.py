"""NumPy stand-ins for the fused CUDA kernels, so that the CuPy dispatch code runs on any machine.

``install(monkeypatch)`` makes host float32/float16 arrays take the fused path of every op (as
CuPy arrays do), serves ``cupy_module()`` with NumPy in the op modules, and replaces each kernel
with a NumPy function that takes the kernel's own positional arguments and writes its outputs in
place. What this checks without a GPU: every call site (argument order, shapes, dtypes, output
buffers, grids), the orchestration around the kernels, and that the kernels' math as written here
matches the ops; the CUDA source itself is checked by nvcc and, on a GPU, by test_cuda_kernels.py.
"""
from __future__ import annotations

import numpy as np

from minillm import backend
from minillm.amp import formats
from minillm.ops import _cuda, activation, attention, embedding, loss, norm
from minillm.optim import adamw

_OP_MODULES = (activation, attention, embedding, loss, norm, adamw)


def _f32(a):
    return np.asarray(a, dtype=np.float32)


def _store(out, values):
    """Write float32 ``values`` into ``out`` (rounded to its dtype), flat, in place."""
    out.reshape(-1)[...] = values.reshape(-1).astype(out.dtype)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _gelu_tanh_gate(v):
    return 0.5 * (1.0 + np.tanh(0.7978845608028654 * (v + 0.044715 * v ** 3)))


def _elementwise(name, *args):
    """The Elementwise kernels: inputs in, a new array (or a tuple) out; AdamW updates in place."""
    with np.errstate(over="ignore"):
        if name == "minillm_adamw_update":
            grad, decay, beta1, beta2, omb1, omb2, denominator_eps, step_size, param, m, v = args
            param *= decay
            m[...] = m * beta1 + grad * omb1
            v[...] = v * beta2 + grad * grad * omb2
            param += m / (np.sqrt(v) + denominator_eps) * step_size
            return None
        dtype = args[0].dtype
        x = [_f32(a) for a in args]
        if name == "minillm_gelu_tanh_forward":
            out = x[0] * _gelu_tanh_gate(x[0])
        elif name == "minillm_gelu_tanh_backward":
            u = _gelu_tanh_gate(x[0])
            slope = 0.7978845608028654 * (1.0 + 0.134145 * x[0] * x[0])
            out = x[1] * (u + 2.0 * u * (1.0 - u) * x[0] * slope)
        elif name == "minillm_gelu_erf_forward":
            out = 0.5 * x[0] * (1.0 + backend.erf(x[0] * 0.7071067811865476))
        elif name == "minillm_gelu_erf_backward":
            cdf = 0.5 * (1.0 + backend.erf(x[0] * 0.7071067811865476))
            out = x[1] * (cdf + x[0] * np.exp(-0.5 * x[0] * x[0]) * 0.3989422804014327)
        elif name == "minillm_silu_forward":
            out = x[0] * _sigmoid(x[0])
        elif name == "minillm_silu_backward":
            s = _sigmoid(x[0])
            out = x[1] * s * (1.0 + x[0] * (1.0 - s))
        elif name == "minillm_swiglu_forward":
            out = x[0] * _sigmoid(x[0]) * x[1]
        elif name in ("minillm_swiglu_backward", "minillm_swiglu_backward_a"):
            a, b, g = x
            s = _sigmoid(a)
            ga = (g * b * s * (1.0 + a * (1.0 - s))).astype(dtype)
            if name.endswith("_a"):
                return ga
            return ga, (g * a * s).astype(dtype)
        elif name == "minillm_swiglu_backward_b":
            out = x[1] * x[0] * _sigmoid(x[0])
        else:
            raise AssertionError(f"no NumPy stand-in for the elementwise kernel {name}")
        return out.astype(dtype)


def _visible(rows, width, queries, offset, causal):
    index = np.arange(rows)
    limit = np.minimum(index % queries + offset + 1, width) if causal else np.full(rows, width)
    return np.arange(width)[None, :] < limit[:, None]


def _row_kernel(name):
    """A callable ``kernel(grid, block, args)`` doing what the row kernel ``name`` does."""
    base = name.removesuffix("_cached")

    def cross_entropy_forward(grid, block, args):
        z, targets, lse, loss_out, width, ignore_index, smoothing = args
        z = _f32(z).reshape(-1, int(width))
        top = z.max(axis=1, keepdims=True)
        lse[...] = (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]
        safe = np.where(targets == ignore_index, 0, targets)
        value = lse - (1.0 - smoothing) * z[np.arange(z.shape[0]), safe]
        if smoothing:
            value -= smoothing * z.mean(axis=1)
        loss_out[...] = np.where(targets == ignore_index, 0.0, value)

    def cross_entropy_backward(grid, block, args):
        z, targets, lse, weights, grad, width, weights_stride, row_scale, ignore_index, smoothing = args
        z = _f32(z).reshape(-1, int(width))
        rows = np.arange(z.shape[0])
        w = (weights[rows * weights_stride] * row_scale) * (targets != ignore_index)
        g = (np.exp(z - lse[:, None]) - smoothing / width) * w[:, None]
        g[rows, np.where(targets == ignore_index, 0, targets)] -= (1.0 - smoothing) * w
        _store(grad, g)

    def norm_forward(grid, block, args):
        x, weight, bias, y, mean_out, rstd_out, width, eps, centered, has_bias, round_bf16 = args
        x = _f32(x).reshape(-1, int(width))
        mean = x.mean(axis=1, keepdims=True) if centered else np.zeros((x.shape[0], 1), np.float32)
        rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=1, keepdims=True) + eps)
        out = (x - mean) * rstd * weight + (bias if has_bias else 0.0)
        _store(y, formats.round_to_bf16(out) if round_bf16 else out)
        mean_out[...], rstd_out[...] = mean[:, 0], rstd[:, 0]

    def norm_backward_input(grid, block, args):
        x, gy, weight, mean, rstd, gx, width, centered = args
        x, g = _f32(x).reshape(-1, int(width)), _f32(gy).reshape(-1, int(width)) * weight
        xhat = (x - (mean[:, None] if centered else 0.0)) * rstd[:, None]
        mean_g = g.mean(axis=1, keepdims=True) if centered else 0.0
        _store(gx, rstd[:, None] * (g - mean_g - xhat * (g * xhat).mean(axis=1, keepdims=True)))

    def norm_backward_params(grid, block, args):
        x, gy, mean, rstd, weight_partial, bias_partial, rows, width, rows_per_chunk, centered, has_bias = args
        assert grid == (-(-int(width) // 32), weight_partial.shape[0]) and block == (32, 8), (grid, block)
        x, g = _f32(x).reshape(-1, int(width)), _f32(gy).reshape(-1, int(width))
        xhat = (x - (mean[:, None] if centered else 0.0)) * rstd[:, None]
        for chunk in range(weight_partial.shape[0]):
            part = slice(chunk * rows_per_chunk, min(int(rows), (chunk + 1) * rows_per_chunk))
            weight_partial[chunk] = (g[part] * xhat[part]).sum(axis=0)
            if has_bias:
                bias_partial[chunk] = g[part].sum(axis=0)

    def attention_softmax_forward(grid, block, args):
        scores, lse, width, queries, offset, scale, causal, round_bf16 = args
        s = _f32(scores).reshape(-1, int(width)) * scale
        visible = _visible(s.shape[0], int(width), int(queries), int(offset), causal)
        s = np.where(visible, s, -np.inf)
        top = s.max(axis=1, keepdims=True)
        e = np.exp(s - top)
        total = e.sum(axis=1, keepdims=True)
        a = e / total
        _store(scores, formats.round_to_bf16(a) if round_bf16 else a)
        lse.reshape(-1)[...] = (top + np.log(total))[:, 0]

    def attention_softmax_backward(grid, block, args):
        scores, grads, lse, width, queries, offset, scale, causal, round_bf16 = args
        s = _f32(scores).reshape(-1, int(width)) * scale
        visible = _visible(s.shape[0], int(width), int(queries), int(offset), causal)
        a = np.where(visible, np.exp(s - lse.reshape(-1)[:, None]), 0.0)
        da = np.where(visible, _f32(grads).reshape(-1, int(width)), 0.0)
        ds = scale * a * (da - (a * da).sum(axis=1, keepdims=True))
        if round_bf16:
            a, ds = formats.round_to_bf16(a), formats.round_to_bf16(ds)
        _store(scores, a)
        _store(grads, ds)

    def embedding_backward_sorted(grid, block, args):
        sorted_ids, order, gy, table_grad, rows, width = args
        g = _f32(gy).reshape(-1, int(width))
        total = np.zeros(table_grad.shape, np.float32)
        np.add.at(total, sorted_ids, g[order])
        touched = np.unique(sorted_ids)
        table_grad[touched] = total[touched].astype(table_grad.dtype)

    kernels = {f.__name__: f for f in (cross_entropy_forward, cross_entropy_backward, norm_forward,
                                      norm_backward_input, norm_backward_params, attention_softmax_forward,
                                      attention_softmax_backward, embedding_backward_sorted)}
    if base not in kernels:
        raise AssertionError(f"no NumPy stand-in for the row kernel {name}")
    return kernels[base]


def install(monkeypatch, ran: list | None = None) -> None:
    """Route the fused paths through the NumPy stand-ins for the rest of the test (``ran``
    collects the kernel names that were called)."""
    ran = [] if ran is None else ran

    def fusable(*arrays):
        return all(type(a) is np.ndarray and a.dtype.char in "fe" for a in arrays)

    for module in _OP_MODULES:
        if hasattr(module, "fusable"):
            monkeypatch.setattr(module, "fusable", fusable)
        if hasattr(module, "cupy_module"):
            monkeypatch.setattr(module, "cupy_module", lambda: np)
    monkeypatch.setattr(_cuda, "cupy_module", lambda: np)

    def elementwise_call(self, *args, **kwargs):
        ran.append(self.name)
        return _elementwise(self.name, *args)

    def row_get(self, name, **dtypes):
        assert set(dtypes) == set(self.slots), (name, dtypes, self.slots)
        ran.append(name)
        return _row_kernel(name)

    monkeypatch.setattr(_cuda.Elementwise, "__call__", elementwise_call)
    monkeypatch.setattr(_cuda.RowKernels, "get", row_get)
