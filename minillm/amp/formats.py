"""The low-precision number formats, bit by bit: float16 and bfloat16 on NumPy and CuPy arrays.

Mixed precision (:mod:`minillm.amp`) rounds values to a format at the points where a run in that
format rounds. This module is everything that knows how:

- ``cast``: ``astype`` with NumPy's slow float16 <-> float32 conversions replaced on the host by
  vectorised, bit-identical ones (integer arithmetic on the bit patterns);
- bfloat16 (neither NumPy nor CuPy has the dtype): ``round_to_bf16``, ``float32_to_bf16_bits`` and
  ``bf16_bits_to_float32`` work on float32 bit patterns, on any array module;
- ``gpu_bfloat16`` / ``to_gpu_bfloat16``: real bfloat16 arrays on a GPU whose CuPy takes
  ``ml_dtypes.bfloat16`` (CuPy is reached through :func:`minillm.backend.cupy_module` only);
- the formats themselves, :class:`Float16Format` (``FP16``) and :class:`BFloat16Format` (``BF16``):
  how a format stores activations, packs arrays kept for backward and feeds matrix products.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from minillm.backend import cupy_module, get_array_module, is_cupy_array

# bfloat16 matmul operands on the GPU (CuPy with ml_dtypes): on unless MINILLM_BF16_GEMM=0
_bf16_gemm = os.environ.get("MINILLM_BF16_GEMM", "1").strip() not in ("0", "false", "no", "off")
_gpu_bf16: Any = None        # the bfloat16 dtype CuPy takes, False when it takes none (resolved once)
_bf16_round_kernel: Any = None


# ---------------------------------------------------------------------------------------------
# float16 casts: NumPy's are slow on the host
# ---------------------------------------------------------------------------------------------
# NumPy converts float16 <-> float32 element by element in scalar C (~2-4 ns per element), and
# float32 -> float16 takes a much slower path (~100 ns) for results in float16's subnormal range
# (|x| < 6.1e-5), where attention weights and their gradients often lie. Mixed precision casts
# every activation several times per step, so on the host ``cast`` does these two conversions
# with vectorised integer arithmetic on the bit patterns instead, in cache-sized chunks; the
# results are bit-identical to ``astype`` (round to nearest even, subnormals, inf, NaN; tested).
_CAST_CHUNK = 1 << 16        # elements per chunk: the scratch arrays stay in the L2 cache
_U32 = np.uint32


def _float32_to_float16_bits(x: np.ndarray, out: np.ndarray) -> None:
    """float16 bit patterns (uint16, into ``out``) of the flat float32 array ``x``."""
    bits = x.view(_U32)
    size = min(x.size, _CAST_CHUNK)
    a, b, m = np.empty(size, _U32), np.empty(size, _U32), np.empty(size, bool)
    f = np.empty(size, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        for start in range(0, x.size, size):
            chunk = bits[start:start + size]
            k = chunk.size
            magnitude, half, mask, fl = a[:k], b[:k], m[:k], f[:k]
            np.bitwise_and(chunk, _U32(0x7FFFFFFF), out=magnitude)       # |x|
            # normal float16 results: rebias the exponent, round to nearest even at bit 13
            np.right_shift(magnitude, _U32(13), out=half)
            half &= _U32(1)
            half += magnitude
            half += _U32((((15 - 127) << 23) + 0xFFF) & 0xFFFFFFFF)         # wraps below 2^-14 (replaced next)
            half >>= _U32(13)
            # |x| < 2^-14: float16 subnormal or zero; adding 0.5 lets the FPU round to a multiple of 2^-24
            np.copyto(fl, magnitude.view(np.float32))
            fl += np.float32(0.5)
            np.less(magnitude, _U32(113 << 23), out=mask)
            np.copyto(half, fl.view(_U32) - _U32(126 << 23), where=mask)
            np.greater_equal(magnitude, _U32(143 << 23), out=mask)        # |x| >= 65536: inf
            np.copyto(half, _U32(0x7C00), where=mask)
            np.greater(magnitude, _U32(0x7F800000), out=mask)              # NaN: a quiet NaN
            np.copyto(half, _U32(0x7E00), where=mask)
            half |= (chunk >> _U32(16)) & _U32(0x8000)                      # the sign
            out[start:start + k] = half


def _float16_to_float32_bits(h: np.ndarray, out: np.ndarray) -> None:
    """float32 values (into ``out``) of the flat float16 bit patterns ``h`` (uint16)."""
    out_bits = out.view(_U32)
    size = min(h.size, _CAST_CHUNK)
    e, m = np.empty(size, _U32), np.empty(size, bool)
    for start in range(0, h.size, size):
        chunk = h[start:start + size]
        k = chunk.size
        o, exponent, mask, fl = out_bits[start:start + k], e[:k], m[:k], out[start:start + k]
        np.bitwise_and(chunk, np.uint16(0x7FFF), out=o, casting="unsafe")
        o <<= _U32(13)                                                      # exponent and mantissa in place
        np.bitwise_and(o, _U32(0x0F800000), out=exponent)
        o += _U32(112 << 23)                                                # rebias 15 -> 127
        np.equal(exponent, _U32(0x0F800000), out=mask)                      # inf/NaN: exponent 255
        np.add(o, _U32(112 << 23), out=o, where=mask)
        np.equal(exponent, _U32(0), out=mask)                               # zero/subnormal: renormalise
        np.add(o, _U32(1 << 23), out=o, where=mask)
        np.subtract(fl, np.float32(2.0 ** -14), out=fl, where=mask)
        o |= (chunk.astype(_U32) & _U32(0x8000)) << _U32(16)                # the sign


def _host_cast(array: np.ndarray, dtype) -> np.ndarray | None:
    """float32 <-> float16 of a host array in its memory order, or None (use astype)."""
    axes = sorted(range(array.ndim), key=lambda i: -array.strides[i])     # outermost axis first
    ordered = array.transpose(axes)
    if not ordered.flags.c_contiguous:
        return None
    flat = ordered.reshape(-1)
    if dtype == np.float16:
        out = np.empty(flat.size, np.uint16)
        _float32_to_float16_bits(flat, out)
        out = out.view(np.float16)
    else:
        out = np.empty(flat.size, np.float32)
        _float16_to_float32_bits(flat.view(np.uint16), out)
    return out.reshape(ordered.shape).transpose(np.argsort(axes))


def cast(array, dtype):
    """``array.astype(dtype, copy=False)`` (memory order kept), with NumPy's slow float32 <->
    float16 conversions replaced on the host by bit-identical vectorised ones (see above)."""
    dtype = np.dtype(dtype)
    if array.dtype == dtype:
        return array
    if type(array) is np.ndarray and array.size >= 1024 and (
            (dtype == np.float16 and array.dtype == np.float32) or
            (dtype == np.float32 and array.dtype == np.float16)):
        converted = _host_cast(array, dtype)
        if converted is not None:
            return converted
    if dtype == np.float16:
        with np.errstate(over="ignore"):             # past 65504 is inf in float16, by design
            return array.astype(dtype)
    return array.astype(dtype)


# ---------------------------------------------------------------------------------------------
# bfloat16: neither NumPy nor CuPy has the dtype, so it lives on float32 bit patterns
# ---------------------------------------------------------------------------------------------
# A bfloat16 is the top 16 bits of a float32 (sign, the same 8 exponent bits, 7 mantissa bits).
# Rounding a float32 to it is integer arithmetic on the bit pattern: add 0x7FFF plus the last
# bit that is kept (bit 16), then drop the low 16 bits. That rounds to nearest with ties to even;
# a carry out of the mantissa bumps the exponent, so values past the largest bfloat16 become inf
# exactly as bfloat16 hardware rounds them. NaN is the one pattern the addition could break (a
# NaN with only low mantissa bits set would carry into inf): NaNs keep their top bits with the
# quiet bit (0x0040 in bfloat16) forced on. These work on any array module (NumPy, CuPy, strict).


def _bf16_rounded_bits(values):
    """uint32 patterns of ``values`` (as float32) rounded to bfloat16 in their top 16 bits."""
    xp = get_array_module(values)
    values = xp.ascontiguousarray(values, dtype=np.float32)
    bits = values.view(np.uint32)
    rounded = bits >> np.uint32(16)
    rounded &= np.uint32(1)                      # the last kept bit: ties go to the even pattern
    rounded += np.uint32(0x7FFF)
    rounded += bits                              # bits + 0x7FFF + lsb (wraps only for NaN patterns)
    return xp.where(xp.isnan(values), bits | np.uint32(0x00400000), rounded)


def float32_to_bf16_bits(values):
    """Round float32 ``values`` to bfloat16 (nearest, ties to even); the uint16 bit patterns."""
    return (_bf16_rounded_bits(values) >> np.uint32(16)).astype(np.uint16)


def bf16_bits_to_float32(bits):
    """Widen bfloat16 bit patterns (uint16) to float32, exactly: float32 bits = bf16 bits << 16."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def round_to_bf16(values):
    """``values`` rounded to the nearest bfloat16, as float32 (a new array): the bfloat16
    emulation that mixed precision uses; equal bit for bit to
    ``bf16_bits_to_float32(float32_to_bf16_bits(values))``."""
    rounded = _bf16_rounded_bits(values)
    rounded &= np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


def gpu_bfloat16():
    """The bfloat16 dtype (``ml_dtypes.bfloat16``) when CuPy takes it for arrays and matrix products
    (CuPy 14 does), else None. With it, bf16 mixed precision multiplies real bfloat16 operands on
    the GPU's tensor cores (float32 accumulation) instead of float32 products of bf16 values.
    ``MINILLM_BF16_GEMM=0`` turns it off (the emulation everywhere)."""
    global _gpu_bf16
    if not _bf16_gemm:
        return None
    if _gpu_bf16 is None:
        _gpu_bf16 = False
        cp = cupy_module()
        if cp is not None:
            try:
                import ml_dtypes  # noqa: PLC0415  (optional: only the GPU's bf16 path needs it)

                dtype = np.dtype(ml_dtypes.bfloat16)
                probe = cp.ones((2, 2), dtype=np.float32).astype(dtype)
                (probe @ probe).astype(np.float32)
                _gpu_bf16 = dtype
            except Exception:  # noqa: BLE001  (no ml_dtypes, or a CuPy without bfloat16: emulate)
                _gpu_bf16 = False
    return _gpu_bf16 or None


def to_gpu_bfloat16(values):
    """A CuPy float32 array rounded to bfloat16 (nearest, ties to even, NaN kept quiet: the bits
    of :func:`float32_to_bf16_bits`), as an array of ``gpu_bfloat16()`` dtype; one pass."""
    global _bf16_round_kernel
    if _bf16_round_kernel is None:
        _bf16_round_kernel = cupy_module().ElementwiseKernel("float32 x", "uint16 y", """
            unsigned int bits = __float_as_uint(x);
            if ((bits & 0x7fffffffu) > 0x7f800000u) bits |= 0x00400000u;
            else bits += 0x7fffu + ((bits >> 16) & 1u);
            y = (unsigned short)(bits >> 16);
            """, "minillm_float32_to_bf16")
    return _bf16_round_kernel(values.astype(np.float32, copy=False)).view(gpu_bfloat16())



# ---------------------------------------------------------------------------------------------
# The formats
# ---------------------------------------------------------------------------------------------
class LowPrecisionFormat:
    """A low-precision compute format: how its values are stored and multiplied.

    Attributes:
        name: "fp16" or "bf16".
        storage_dtype: the dtype of activations flowing between ops (float16; float32 holding
            bfloat16 values for the emulated bf16).
        packed_dtype: the dtype of arrays an op keeps for backward (float16; uint16 bits for bf16).
        round_bf16: whether a value stored in ``storage_dtype`` is rounded to bfloat16 first (what a
            fused kernel writing the format does: float16 stores round by themselves).

    Methods (every array argument may be any floating dtype; results are new arrays or the input):
        to_storage(x): x rounded to the format, in ``storage_dtype``.
        to_float32(x): x rounded to the format, as float32 (for float32 arithmetic).
        pack(x) / unpack(p): the compact copy kept for backward, and its float32 values.
        operand(x): x as a matmul operand: the format's values as float32 on the host (NumPy
            multiplies them with float32 BLAS), float16 on the GPU for fp16 (a float16 GEMM).
        unpack_operand(p): a packed array as a matmul operand (no second rounding).
        result(product): a product of operands ready for float arithmetic (a real bfloat16 product
            widened to float32; otherwise as it is).
        batched_operand(x) / batched_unpack_operand(p): the same for batched (3-D and up) products.
        matmul(a, b): operand(a) @ operand(b): the format's values, float32 accumulation; the
            result is float32, or float16 from a GPU GEMM: pass it to ``to_storage``.
    """

    name: str
    storage_dtype: np.dtype
    packed_dtype: np.dtype
    round_bf16: bool

    def __repr__(self) -> str:
        return f"LowPrecisionFormat({self.name!r})"


class Float16Format(LowPrecisionFormat):
    """IEEE half precision, a real dtype on both devices."""

    name = "fp16"
    storage_dtype = np.dtype(np.float16)
    packed_dtype = np.dtype(np.float16)
    round_bf16 = False

    # cast is astype with fast host conversions (NumPy's float16 casts are slow)
    def to_storage(self, x):
        return cast(x, np.float16)

    def to_float32(self, x):
        return cast(cast(x, np.float16), np.float32)   # rounded first (past 65504: inf)

    def pack(self, x):
        return cast(x, np.float16)

    def unpack(self, packed):
        return cast(packed, np.float32)

    def operand(self, x):
        if get_array_module(x) is np:
            return self.to_float32(x)      # host: NumPy has no float16 BLAS; float32 products of fp16 values
        return self.to_storage(x)          # GPU: float16 GEMM operands (tensor cores, float32 accumulation)

    def unpack_operand(self, packed):
        return cast(packed, np.float32) if get_array_module(packed) is np else packed

    def result(self, product):
        """A product of operands, as it is (float32 on the host, a float16 GEMM's float16 on a GPU)."""
        return product

    def batched_operand(self, x):
        """An operand of a batched (3-D and up) product: as :meth:`operand`."""
        return self.operand(x)

    def batched_unpack_operand(self, packed):
        return self.unpack_operand(packed)

    def matmul(self, a, b):
        return self.operand(a) @ self.operand(b)


class BFloat16Format(LowPrecisionFormat):
    """bfloat16, emulated on float32 (no NumPy dtype): values rounded to bf16, float32 arrays.
    On a GPU whose CuPy takes ``ml_dtypes.bfloat16`` (:func:`gpu_bfloat16`), matrix
    product operands are real bfloat16 arrays (tensor cores, float32 accumulation, a bfloat16
    result): the same values, rounded by the same rule; storage stays float32."""
    name = "bf16"
    storage_dtype = np.dtype(np.float32)
    packed_dtype = np.dtype(np.uint16)
    round_bf16 = True

    def to_storage(self, x):
        if x.dtype.char == "E":                # a real bfloat16 product: widening is exact
            return x.astype(np.float32)
        return round_to_bf16(x)

    def to_float32(self, x):
        return self.to_storage(x)

    def pack(self, x):
        return float32_to_bf16_bits(x)

    def unpack(self, packed):
        return bf16_bits_to_float32(packed)

    def operand(self, x):
        if is_cupy_array(x) and gpu_bfloat16() is not None:
            return x if x.dtype.char == "E" else to_gpu_bfloat16(x)   # bfloat16 GEMM operands
        return round_to_bf16(x)            # float32 products of bf16 values

    def unpack_operand(self, packed):
        if is_cupy_array(packed) and gpu_bfloat16() is not None:
            return packed.view(gpu_bfloat16())             # the bits are bfloat16 already
        return bf16_bits_to_float32(packed)

    def result(self, product):
        """A product of operands as a float32 array for more arithmetic (bias, scale): exact."""
        return product.astype(np.float32) if product.dtype.char == "E" else product

    def batched_operand(self, x):
        """An operand of a batched (3-D and up) product: bf16-rounded float32 everywhere (CuPy 14.2's
        batched matmul refuses the bfloat16 dtype; its 2-D products take it)."""
        return round_to_bf16(x)

    def batched_unpack_operand(self, packed):
        return bf16_bits_to_float32(packed)

    def matmul(self, a, b):
        return round_to_bf16(a) @ round_to_bf16(b)


FP16 = Float16Format()
BF16 = BFloat16Format()
