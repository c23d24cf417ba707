"""The strict test backend: host arrays that behave like CuPy's where it matters.

CI has no GPU, yet the CuPy code path must be proven. A :class:`StrictArray` wraps a NumPy
array and, like a ``cupy.ndarray``:

- refuses implicit conversion to a host array (``np.asarray(a)`` raises ``TypeError``);
- refuses to be mixed with host arrays in any operation (``a + np.ones(3)`` raises);
- returns 0-d arrays, not NumPy scalars, from reductions;
- has no ``ufunc.at`` (scatter-add goes through ``backend.scatter_add``).

:data:`xp` is the matching array module: ``xp.zeros(...)`` makes a StrictArray, ``xp.asarray``
accepts host arrays (an explicit transfer, as ``cupy.asarray`` does), every other function
refuses host arrays. Only :mod:`minillm.backend` imports this module, and only when the strict
device is switched on.
"""
from __future__ import annotations

import types

import numpy as np
from numpy.lib.mixins import NDArrayOperatorsMixin


class StrictDeviceError(TypeError):
    """A host array met a (strict) device array, or a device array was implicitly copied to host."""


def _unwrap(value, allow_host: bool = False):
    """Strip StrictArray wrappers from ``value`` (recursing into lists/tuples/dicts)."""
    if type(value) is StrictArray:
        return value._array
    if type(value) is np.ndarray:
        if allow_host:
            return value
        raise StrictDeviceError(
            f"a host numpy array (shape {value.shape}, dtype {value.dtype}) was mixed with a device "
            "array; move it explicitly with backend.to_device(array, 'cuda') or create it with xp")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, allow_host) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, allow_host) for k, v in value.items()}
    return value


def _wrap(value):
    """Wrap every array (and NumPy scalar, as CuPy returns 0-d arrays) in a result."""
    if type(value) is np.ndarray:
        return StrictArray(value)
    if isinstance(value, np.generic):
        return StrictArray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


class StrictArray(NDArrayOperatorsMixin):
    """A host array that acts like a device array (see the module docstring)."""

    __slots__ = ("_array",)
    __array_priority__ = 1000

    def __init__(self, array: np.ndarray):
        self._array = array

    # -- refusing implicit host conversion ------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise StrictDeviceError(
            "implicit conversion of a device array to a host numpy array is not allowed "
            "(as in CuPy); use backend.to_numpy(array)")

    def get(self) -> np.ndarray:
        """An explicit device-to-host copy, like ``cupy.ndarray.get``."""
        return self._array.copy()

    # -- NumPy protocols ------------------------------------------------------------------------
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        if method == "at":
            raise StrictDeviceError(f"{ufunc.__name__}.at is not available on device arrays; "
                                    "use backend.scatter_add")
        inputs = _unwrap(inputs)
        if "out" in kwargs:
            kwargs["out"] = _unwrap(kwargs["out"])
        result = getattr(ufunc, method)(*inputs, **kwargs)
        return _wrap(result)

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    # -- attributes and methods -----------------------------------------------------------------
    shape = property(lambda self: self._array.shape)
    dtype = property(lambda self: self._array.dtype)
    ndim = property(lambda self: self._array.ndim)
    size = property(lambda self: self._array.size)
    nbytes = property(lambda self: self._array.nbytes)
    itemsize = property(lambda self: self._array.itemsize)
    strides = property(lambda self: self._array.strides)
    flags = property(lambda self: self._array.flags)
    T = property(lambda self: StrictArray(self._array.T))

    def __getattr__(self, name):
        if name.startswith("__"):
            # __array_interface__, __array_struct__, buffer protocol...: forwarding these would
            # let NumPy read the host memory behind our back, which CuPy arrays never allow.
            raise AttributeError(name)
        attribute = getattr(self._array, name)
        if not callable(attribute):
            return _wrap(attribute)

        def method(*args, **kwargs):
            return _wrap(attribute(*_unwrap(args), **_unwrap(kwargs)))

        return method

    def item(self):
        return self._array.item()

    def tolist(self):
        return self._array.tolist()

    def __getitem__(self, key):
        return _wrap(self._array[_unwrap(key)])

    def __setitem__(self, key, value):
        self._array[_unwrap(key)] = _unwrap(value)

    def __len__(self):
        return len(self._array)

    def __iter__(self):
        return (_wrap(row) for row in self._array)

    def __bool__(self):
        return bool(self._array)

    def __float__(self):
        return float(self._array)

    def __int__(self):
        return int(self._array)

    def __index__(self):
        return self._array.__index__()

    def __repr__(self):
        return f"StrictArray({np.array2string(self._array, threshold=20)}, dtype={self._array.dtype})"


class _UfuncProxy:
    """``xp.exp`` etc.: call like the ufunc; ``.reduce``/``.accumulate`` work; ``.at`` refuses."""

    def __init__(self, ufunc):
        self._ufunc = ufunc

    def __call__(self, *args, **kwargs):
        return self._ufunc(*args, **kwargs) if any(type(a) is StrictArray for a in args) else \
            _wrap(self._ufunc(*_unwrap(args), **_unwrap(kwargs)))

    def __getattr__(self, name):
        if name == "at":
            raise StrictDeviceError(f"{self._ufunc.__name__}.at is not available on device arrays; "
                                    "use backend.scatter_add")
        attribute = getattr(self._ufunc, name)
        if not callable(attribute):
            return attribute

        def method(*args, **kwargs):
            return _wrap(attribute(*_unwrap(args), **_unwrap(kwargs)))

        return method


class _StrictModule:
    """The array module of StrictArrays: numpy's names, device-array results."""

    _TRANSFERS = {"asarray", "array", "ascontiguousarray", "asanyarray"}

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        if name == "ndarray":
            return StrictArray
        attribute = getattr(self._module, name)
        if isinstance(attribute, np.ufunc):
            return _UfuncProxy(attribute)
        if isinstance(attribute, types.ModuleType):
            return _StrictModule(attribute)
        if isinstance(attribute, type) or not callable(attribute):
            return attribute  # dtypes, constants (xp.float32, xp.pi, xp.newaxis)
        allow_host = name in self._TRANSFERS

        def function(*args, **kwargs):
            return _wrap(attribute(*_unwrap(args, allow_host), **_unwrap(kwargs, allow_host)))

        function.__name__ = name
        return function


xp = _StrictModule(np)


def from_host(array) -> StrictArray:
    """Copy a host array onto the emulated device."""
    return StrictArray(np.array(array, copy=True))


def to_host(array: StrictArray) -> np.ndarray:
    """Copy an emulated device array to the host."""
    return array._array.copy()


def scatter_add(target: StrictArray, indices, values) -> None:
    """``target[indices] += values`` with repeats accumulated, on the emulated device."""
    np.add.at(target._array, _unwrap(indices), _unwrap(values))
