"""The array backend: the ONLY module that knows NumPy and CuPy apart.

Compute code never names NumPy or CuPy directly; it asks for the array module of its data::

    xp = get_array_module(x)        # numpy for host arrays, cupy (or the strict emulation) else
    y = xp.exp(x - x.max(axis=-1, keepdims=True))

Where the two libraries differ, this module wraps the difference once:

- ``scatter_add``: ``np.add.at`` on the host, ``cupyx.scatter_add`` on the GPU;
- random numbers: drawn from one seeded host generator (PCG64) and moved to the device, so a
  seed gives the same numbers on every device and the state is a plain JSON-able dict;
- ``to_device`` / ``to_numpy`` / ``item``: explicit transfers (CuPy refuses implicit ones);
- ``synchronize``: waits for queued GPU work (timing), a no-op on the host;
- ``erf``: NumPy has none;
- ``cast``: NumPy's float16 <-> float32 casts are slow; the host gets vectorised ones;
- bfloat16 (neither library has the dtype): ``round_to_bf16``, ``float32_to_bf16_bits`` and
  ``bf16_bits_to_float32`` work on float32 bit patterns, on any array module.

Devices are named ``"cpu"`` and ``"cuda"``. Without a GPU, ``"cuda"`` can be served by the
*strict test backend* (:mod:`minillm._strict`): host arrays wrapped so that, like CuPy's, they
refuse implicit conversion to NumPy and refuse mixing with host arrays. Turn it on with
``use_strict_device(True)`` (the test suite does so with ``pytest --backend strict``).
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

DEVICES = ("cpu", "cuda")    # the device names: the host, and the GPU (CuPy or the strict emulation)
_cupy: Any = None            # the cupy module once imported; False when import failed
_strict_device = False       # serve "cuda" with the strict emulation instead of CuPy
# Fused CUDA kernels (minillm/ops/_cuda.py and the kernels beside each op) run for CuPy arrays
# unless switched off: MINILLM_FUSED=0 in the environment, or use_fused_kernels(False). Off, the
# GPU runs the same composed array code as the host (the reference the kernels are tested against).
_fused_kernels = os.environ.get("MINILLM_FUSED", "1").strip() not in ("0", "false", "no", "off")
# bfloat16 matmul operands on the GPU (CuPy with ml_dtypes): on unless MINILLM_BF16_GEMM=0
_bf16_gemm = os.environ.get("MINILLM_BF16_GEMM", "1").strip() not in ("0", "false", "no", "off")
_gpu_bf16: Any = None        # the bfloat16 dtype CuPy takes, False when it takes none (resolved once)
_bf16_round_kernel: Any = None


# ---------------------------------------------------------------------------------------------
# Modules and devices
# ---------------------------------------------------------------------------------------------
def cupy_module():
    """Import CuPy lazily; return the module or ``None`` when it is not installed/usable."""
    global _cupy
    if _cupy is None:
        try:
            import cupy  # noqa: PLC0415  (lazy on purpose: machines without a GPU never import it)

            cupy.cuda.runtime.getDeviceCount()
            _cupy = cupy
        except Exception:  # ImportError, or CUDA driver missing
            _cupy = False
    return _cupy or None


def cuda_available() -> bool:
    """True when CuPy is importable and sees a GPU."""
    return cupy_module() is not None


def use_strict_device(enabled: bool = True) -> None:
    """Serve the ``"cuda"`` device with the strict CuPy-like emulation (tests without a GPU)."""
    global _strict_device
    _strict_device = bool(enabled)


def strict_device_enabled() -> bool:
    return _strict_device


def _strict():
    from minillm import _strict as strict  # noqa: PLC0415  (only needed when emulating a GPU)

    return strict


def use_fused_kernels(enabled: bool = True) -> bool:
    """Switch the fused CUDA kernels on or off for CuPy arrays; returns the previous setting.
    (Host and strict-emulated arrays never use them.)"""
    global _fused_kernels
    previous = _fused_kernels
    _fused_kernels = bool(enabled)
    return previous


def fused_kernels_enabled() -> bool:
    return _fused_kernels


def is_cupy_array(array) -> bool:
    """True for a real ``cupy.ndarray`` (never for host or strict-emulated arrays)."""
    cp = _cupy or None
    return cp is not None and isinstance(array, cp.ndarray)


def fusable(*arrays) -> bool:
    """Whether a fused CUDA kernel may run on ``arrays``: fused kernels are on and every array is
    a float32 or float16 CuPy array (float64 and other dtypes take the composed path)."""
    if not _fused_kernels:
        return False
    for a in arrays:
        if not is_cupy_array(a) or a.dtype.char not in "fe":
            return False
    return True


def get_array_module(*arrays):
    """The array module (numpy, cupy, or the strict emulation) that owns ``arrays``.

    The fast path is a plain host array; anything else is looked at only when present.
    """
    for a in arrays:
        if type(a) is np.ndarray or a is None or isinstance(a, (int, float, np.generic)):
            continue
        if _strict_device and type(a).__name__ == "StrictArray":
            return _strict().xp
        cp = _cupy or None
        if cp is not None and isinstance(a, cp.ndarray):
            return cp
    return np


def device_of(array) -> str:
    """``"cpu"`` for host arrays, ``"cuda"`` for CuPy (or strict-emulated) arrays."""
    if type(array) is np.ndarray or isinstance(array, np.generic):
        return "cpu"
    if type(array).__name__ == "StrictArray":
        return "cuda"
    cp = _cupy or None
    if cp is not None and isinstance(array, cp.ndarray):
        return "cuda"
    raise TypeError(f"device_of: expected a numpy or cupy array, got {type(array).__name__}")


def check_device(device: str) -> str:
    """Validate a device name and make sure it can be used now."""
    if device not in DEVICES:
        raise ValueError(f"device={device!r} is not a known device; expected 'cpu' or 'cuda'")
    if device == "cuda" and not _strict_device and cupy_module() is None:
        raise RuntimeError("device='cuda' needs CuPy and an NVIDIA GPU: pip install -e '.[cuda12]' "
                           "(CUDA 12) or '.[cuda13]' (CUDA 13)")
    return device


def module_for_device(device: str):
    """The array module that creates arrays on ``device``."""
    check_device(device)
    if device == "cpu":
        return np
    return _strict().xp if _strict_device else cupy_module()


def to_device(array, device: str):
    """Move (copy) ``array`` to ``device``; returns the same object when it is already there."""
    check_device(device)
    current = device_of(array)
    if current == device:
        return array
    if device == "cpu":
        return to_numpy(array)
    if _strict_device:
        return _strict().from_host(array)
    return cupy_module().asarray(array)


def to_numpy(array) -> np.ndarray:
    """An explicit device-to-host copy (host arrays are returned as they are)."""
    if type(array) is np.ndarray:
        return array
    if isinstance(array, np.generic):
        return np.asarray(array)
    if type(array).__name__ == "StrictArray":
        return _strict().to_host(array)
    return cupy_module().asnumpy(array)


def item(array) -> float | int | bool:
    """A Python scalar from a one-element array (a device sync on the GPU)."""
    if array.size != 1:
        raise ValueError(f"item(): expected an array with one element, got shape {tuple(array.shape)}")
    return array.reshape(()).item() if type(array) is not np.ndarray else array.item()


def synchronize(device: str = "cuda") -> None:
    """Wait for all queued work on ``device`` (for honest timings); a no-op on the host."""
    if device == "cuda" and not _strict_device and cupy_module() is not None:
        cupy_module().cuda.get_current_stream().synchronize()


# ---------------------------------------------------------------------------------------------
# What differs between the libraries
# ---------------------------------------------------------------------------------------------
def scatter_add(target, indices, values) -> None:
    """``target[indices] += values`` with repeated indices accumulated (unbuffered), in place.

    ``indices`` is an integer array (or a tuple of them) indexing the leading axes of ``target``.
    NumPy's fancy ``+=`` would drop repeats; ``np.add.at`` / ``cupyx.scatter_add`` do not.
    """
    if type(target) is np.ndarray:
        if isinstance(indices, np.ndarray) and indices.ndim == 1 and indices.dtype.kind in "iu" \
                and target.ndim == 2 and values.ndim == 2:
            # Embedding-gradient fast path: sort rows once and sum each run with reduceat,
            # much faster than np.add.at for (N, C) rows; the sum order is fixed (deterministic).
            _scatter_rows_add(target, indices, values)
            return
        np.add.at(target, indices, values)
        return
    if type(target).__name__ == "StrictArray":
        _strict().scatter_add(target, indices, values)
        return
    import cupyx  # noqa: PLC0415

    cupyx.scatter_add(target, indices, values)


def _scatter_rows_add(target: np.ndarray, rows: np.ndarray, values: np.ndarray) -> None:
    """target[rows[i]] += values[i] for a 2-D target, grouped by row with one reduceat."""
    if rows.size == 0:
        return
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_rows[1:] != sorted_rows[:-1])))
    sums = np.add.reduceat(values[order], starts, axis=0)
    target[sorted_rows[starts]] += sums


def erf(x):
    """The error function, elementwise, in the dtype of ``x``."""
    xp = get_array_module(x)
    if xp is np:
        try:
            from scipy.special import erf as scipy_erf  # noqa: PLC0415  (optional, faster)

            return scipy_erf(x).astype(x.dtype, copy=False)
        except ImportError:
            return np.vectorize(math.erf, otypes=[x.dtype])(x)
    if type(x).__name__ == "StrictArray":
        return _strict().from_host(erf(_strict().to_host(x)))
    from cupyx.scipy.special import erf as cupy_erf  # noqa: PLC0415

    return cupy_erf(x)


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
# Random numbers: one seeded host generator for every device
# ---------------------------------------------------------------------------------------------
_generator = np.random.Generator(np.random.PCG64(0))


def manual_seed(seed: int) -> None:
    """Seed minillm's random numbers (initialisation, dropout, sampling)."""
    global _generator
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"manual_seed: seed={seed!r} is not a non-negative integer")
    _generator = np.random.Generator(np.random.PCG64(int(seed)))


def generator() -> np.random.Generator:
    """The global host generator (for host-side sampling such as data loading or tests)."""
    return _generator


def get_rng_state() -> dict:
    """The global generator's state as a JSON-serialisable dict (checkpoints store it)."""
    state = _generator.bit_generator.state
    return {"bit_generator": state["bit_generator"],
            "state": {"state": int(state["state"]["state"]), "inc": int(state["state"]["inc"])},
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}


def set_rng_state(state: dict) -> None:
    """Restore a state produced by :func:`get_rng_state`."""
    if not isinstance(state, dict) or state.get("bit_generator") != "PCG64":
        raise ValueError(f"set_rng_state: expected a PCG64 state dict, got {state!r:.200}")
    _generator.bit_generator.state = state


def random_normal(shape, dtype, device: str = "cpu", std: float = 1.0):
    """Normal(0, std²) samples of ``shape`` on ``device``, drawn from the global generator."""
    host = _generator.standard_normal(size=shape, dtype=np.float64 if np.dtype(dtype) == np.float64 else np.float32)
    if std != 1.0:
        host *= std
    return to_device(host.astype(dtype, copy=False), device)


def random_uniform(shape, dtype, device: str = "cpu"):
    """Uniform[0, 1) samples of ``shape`` on ``device``, drawn from the global generator."""
    host = _generator.random(size=shape, dtype=np.float64 if np.dtype(dtype) == np.float64 else np.float32)
    return to_device(host.astype(dtype, copy=False), device)


def dropout_keep_mask(shape, keep_prob: float, dtype, device: str = "cpu"):
    """A mask of 0 and 1/keep_prob (inverted dropout), so the expectation is unchanged."""
    keep = _generator.random(size=shape, dtype=np.float32) < keep_prob
    mask = keep.astype(dtype) * np.asarray(1.0 / keep_prob, dtype=dtype)
    return to_device(mask, device)
