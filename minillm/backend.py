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
- ``erf``: NumPy has none.

The low-precision formats (float16 casts, bfloat16 bits) live in :mod:`minillm.amp.formats`.

Devices are named ``"cpu"`` and ``"cuda"``. Without a GPU, ``"cuda"`` can be served by the
*strict test backend* (:mod:`minillm._strict`): host arrays wrapped so that, like CuPy's, they
refuse implicit conversion to NumPy and refuse mixing with host arrays. Turn it on with
``use_strict_device(True)`` (the test suite does so with ``pytest --backend strict``).
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any

import numpy as np

from minillm.errors import DeviceUnavailableError

DEVICES = ("cpu", "cuda")    # the device names: the host, and the GPU (CuPy or the strict emulation)
_cupy: Any = None            # the cupy module once imported; False when import failed
_strict_device = False       # serve "cuda" with the strict emulation instead of CuPy
# Fused CUDA kernels (minillm/ops/_cuda.py and the kernels beside each op) run for CuPy arrays
# unless switched off: MINILLM_FUSED=0 in the environment, or use_fused_kernels(False). Off, the
# GPU runs the same composed array code as the host (the reference the kernels are tested against).
_fused_kernels = os.environ.get("MINILLM_FUSED", "1").strip() not in ("0", "false", "no", "off")


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


def nccl_module():
    """CuPy's NCCL bindings (``cupy.cuda.nccl``), for the data-parallel NCCL transport; raises
    RuntimeError saying what is missing where CuPy or its NCCL library is not usable."""
    cupy = cupy_module()
    if cupy is None:
        raise RuntimeError("the NCCL transport needs CuPy and a GPU (pip install -e '.[cuda13]' or '.[cuda12]')")
    try:
        from cupy.cuda import nccl  # noqa: PLC0415  (GPU only)
    except ImportError as error:
        raise RuntimeError(f"CuPy has no usable NCCL here ({error}); install NCCL for CuPy (pip install "
                           "nvidia-nccl-cu12 or the CUDA 13 one)") from error
    return nccl


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


def is_host_array(array) -> bool:
    """True for a plain NumPy array (the host path; never for CuPy or strict-emulated arrays)."""
    return type(array) is np.ndarray


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
        raise DeviceUnavailableError("device='cuda' needs CuPy and an NVIDIA GPU, and this machine has no usable "
                                     "one; use --device cpu, or install CuPy: pip install -e '.[cuda12]' "
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
    import cupyx  # noqa: PLC0415  (only reached with CuPy arrays)

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
    from cupyx.scipy.special import erf as cupy_erf  # noqa: PLC0415  (only reached with CuPy arrays)

    return cupy_erf(x)


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


_skip_random_init = False     # set by skip_random_init(): allocate without drawing


@contextlib.contextmanager
def skip_random_init():
    """Inside this block, :func:`random_normal` and :func:`random_uniform` return uninitialised
    arrays of the right shape, dtype and device and draw nothing: for building a model whose
    every weight a load overwrites next (``GPT.from_pretrained``). It saves drawing hundreds of
    millions of numbers, and it leaves the global generator where it was, so loading a model does
    not shift a seeded run's random stream. Not thread-safe (a module-level flag)."""
    global _skip_random_init
    previous, _skip_random_init = _skip_random_init, True
    try:
        yield
    finally:
        _skip_random_init = previous


def random_init_skipped() -> bool:
    """Whether a :func:`skip_random_init` block is running (initialisers then skip their arithmetic
    on the uninitialised arrays too: it would only touch memory the load is about to replace)."""
    return _skip_random_init


def random_normal(shape, dtype, device: str = "cpu", std: float = 1.0):
    """Normal(0, std²) samples of ``shape`` on ``device``, drawn from the global generator."""
    if _skip_random_init:
        return module_for_device(device).empty(shape, dtype=dtype)
    host = _generator.standard_normal(size=shape, dtype=np.float64 if np.dtype(dtype) == np.float64 else np.float32)
    if std != 1.0:
        host *= std
    return to_device(host.astype(dtype, copy=False), device)


def random_uniform(shape, dtype, device: str = "cpu"):
    """Uniform[0, 1) samples of ``shape`` on ``device``, drawn from the global generator."""
    if _skip_random_init:
        return module_for_device(device).empty(shape, dtype=dtype)
    host = _generator.random(size=shape, dtype=np.float64 if np.dtype(dtype) == np.float64 else np.float32)
    return to_device(host.astype(dtype, copy=False), device)


def dropout_keep_mask(shape, keep_prob: float, dtype, device: str = "cpu"):
    """A mask of 0 and 1/keep_prob (inverted dropout), so the expectation is unchanged."""
    keep = _generator.random(size=shape, dtype=np.float32) < keep_prob
    mask = keep.astype(dtype) * np.asarray(1.0 / keep_prob, dtype=dtype)
    return to_device(mask, device)
