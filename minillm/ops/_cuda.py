"""Plumbing for the fused CUDA kernels of the CuPy path (the kernels themselves live beside the
op they speed up: activation.py, norm.py, loss.py, attention.py, optim/adamw.py).

Why fused kernels: on a GPU every CuPy call is one kernel launch that reads and writes whole
arrays. The NumPy-shaped code of an op (GELU is seven passes forward and ten backward; layer
norm, softmax and cross-entropy a dozen each) is memory-bound on the GPU and launches thousands
of small kernels per training step. A fused kernel reads its inputs once and writes its outputs
once. The NumPy path is untouched: a kernel runs only for CuPy arrays
(:func:`minillm.backend.fusable`), and the composed array code stays the reference that every
kernel is tested against (``tests/ops/test_cuda_kernels.py`` under ``pytest --backend cupy``).

Nothing here imports CuPy: kernels are compiled on first use through
:func:`minillm.backend.cupy_module`, so machines without a GPU never compile anything.

Two kinds of kernel:

- :class:`Elementwise` -- a lazily built ``cupy.ElementwiseKernel`` (one thread per element;
  CuPy handles shapes, strides and broadcasting). Written with the type placeholder ``T``; the
  arithmetic runs in float32 (``float(x)``), so float16 inputs are widened once and the result is
  rounded once.
- :class:`RowKernels` -- a CUDA C source compiled with ``cupy.RawModule`` once per combination of
  storage dtypes, for row-wise work (norms, softmax, cross-entropy: one thread block per row,
  block-wide sums). Each array argument belongs to a *slot* (``X``, ``Y``, ``G`` ...); for a
  slot the source sees the macros ``X_T`` (the C storage type: ``float``, or ``unsigned short``
  holding float16 or bfloat16 bits), ``LOAD_X(p, i)`` (element i as a float) and ``STORE_X(p, i, v)``
  (store the float v, rounded to the slot's dtype). float16 conversions use the PTX ``cvt``
  instructions directly, so no CUDA header is needed at run time.
"""
from __future__ import annotations

import numpy as np

from minillm.backend import cupy_module

# Shared device code: float16 <-> float32 conversion, bfloat16 rounding, block reductions.
DEVICE_HELPERS = r"""
#define MINILLM_NEG_INF __int_as_float(0xff800000)
__device__ __forceinline__ float minillm_h2f(unsigned short h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ unsigned short minillm_f2h(float f) {
    unsigned short h;
    asm("{ cvt.rn.f16.f32 %0, %1; }" : "=h"(h) : "f"(f));
    return h;
}
// Round a float32 to the nearest bfloat16 (ties to even), returned as float32: the same bit
// arithmetic as minillm.amp.formats.round_to_bf16 (NaNs stay NaN with the quiet bit set).
__device__ __forceinline__ float minillm_round_bf16(float f) {
    unsigned int bits = __float_as_uint(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        return __uint_as_float((bits | 0x00400000u) & 0xffff0000u);
    }
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return __uint_as_float(bits & 0xffff0000u);
}
__device__ __forceinline__ float minillm_warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}
__device__ __forceinline__ float minillm_warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}
// Block-wide sum / max (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` is a __shared__ float[32]; the first __syncthreads lets a previous call's readers
// finish before it is reused.
__device__ float minillm_block_sum(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = minillm_warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? scratch[lane] : 0.0f;
        v = minillm_warp_sum(v);
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    return scratch[0];
}
__device__ float minillm_block_max(float v, float* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = minillm_warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < warps ? scratch[lane] : MINILLM_NEG_INF;
        v = minillm_warp_max(v);
        if (lane == 0) scratch[0] = v;
    }
    __syncthreads();
    return scratch[0];
}
"""

_SLOT_MACROS = {
    "float32": ("float", "((float)((p)[(i)]))", "((p)[(i)] = (v))"),
    "float16": ("unsigned short", "minillm_h2f((p)[(i)])", "((p)[(i)] = minillm_f2h(v))"),
    # bfloat16 (ml_dtypes on CuPy): the top half of a float32; stores round to nearest even
    "bfloat16": ("unsigned short", "__uint_as_float(((unsigned int)(p)[(i)]) << 16)",
                 "((p)[(i)] = (unsigned short)(__float_as_uint(minillm_round_bf16(v)) >> 16))"),
}


def _slot_defines(slots: dict) -> str:
    """``#define X_T``, ``LOAD_X`` and ``STORE_X`` for every slot's dtype."""
    lines = []
    for slot, dtype in slots.items():
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        if name not in _SLOT_MACROS:
            raise TypeError(f"CUDA row kernels: slot {slot} has dtype {name}; expected float32, float16 or bfloat16")
        c_type, load, store = _SLOT_MACROS[name]
        lines += [f"#define {slot}_T {c_type}", f"#define LOAD_{slot}(p, i) {load}",
                  f"#define STORE_{slot}(p, i, v) {store}"]
    return "\n".join(lines) + "\n"


class Elementwise:
    """A ``cupy.ElementwiseKernel`` built on its first call (arguments as CuPy's)."""

    def __init__(self, in_params: str, out_params: str, operation: str, name: str, preamble: str = ""):
        self.in_params, self.out_params, self.operation = in_params, out_params, operation
        self.name, self.preamble = name, preamble
        self._kernel = None

    def __call__(self, *args, **kwargs):
        if self._kernel is None:
            self._kernel = cupy_module().ElementwiseKernel(
                self.in_params, self.out_params, self.operation, self.name, preamble=self.preamble)
        return self._kernel(*args, **kwargs)


class RowKernels:
    """CUDA C source with ``extern "C"`` kernels, compiled once per assignment of dtypes to its
    slots (see the module docstring); ``get(name, X=np.float32, ...)`` returns a RawKernel."""

    def __init__(self, source: str, slots: tuple[str, ...]):
        self.source, self.slots = source, slots
        self._modules: dict = {}

    def get(self, name: str, **dtypes):
        if set(dtypes) != set(self.slots):
            raise TypeError(f"RowKernels.get({name!r}): slots {sorted(dtypes)} given, expected {sorted(self.slots)}")
        key = tuple(np.dtype(dtypes[s]).name for s in self.slots)      # "bfloat16" for ml_dtypes' type
        module = self._modules.get(key)
        if module is None:
            code = _slot_defines({s: dtypes[s] for s in self.slots}) + DEVICE_HELPERS + self.source
            module = self._modules[key] = cupy_module().RawModule(code=code)
        return module.get_function(name)


def row_threads(width: int) -> int:
    """Threads per block for a row of ``width`` values: about 4 values per thread, a multiple of
    32, between 32 and 1024."""
    warps = min(32, max(1, -(-width // 128)))
    return 32 * warps


def i64(value) -> np.int64:
    """A ``long long`` kernel argument (RawKernel arguments need exact NumPy scalar types)."""
    return np.int64(value)


def f32(value) -> np.float32:
    """A ``float`` kernel argument."""
    return np.float32(value)


def contiguous(array):
    """``array`` as a C-contiguous CuPy array (a copy only when it is not one already)."""
    return array if array.flags.c_contiguous else cupy_module().ascontiguousarray(array)
