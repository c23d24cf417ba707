"""Tensor: an xp array (NumPy or CuPy) plus what autograd needs to differentiate through it.

``Tensor.data`` is the array; ``grad_fn`` is the :class:`~minillm.autograd.Function` that made
it (``None`` for leaves such as parameters and inputs); ``grad`` is filled by ``backward()``
for leaves that require gradients (and for non-leaves that called ``retain_grad()``).
Operators (``+ - * / ** @``, indexing) and methods (``sum``, ``reshape`` ...) call the ops in
:mod:`minillm.functional`, so every frame in a traceback names the op that ran.
"""
from __future__ import annotations

import weakref

import numpy as np

from minillm import autograd
from minillm.backend import (
    check_device,
    device_of,
    get_array_module,
    module_for_device,
    random_normal,
    to_device,
    to_numpy,
)
from minillm.backend import item as backend_item

_DEFAULT_FLOAT = np.float32


class Tensor:
    """An n-dimensional array that records the ops applied to it.

    Args:
        data: an xp array, a Python number or (nested) list, or another Tensor (its data).
        requires_grad: collect ``d loss / d self`` in ``.grad`` on backward (floating only).
        dtype: convert to this dtype; Python floats default to float32, ints to int64.
        device: ``"cpu"`` or ``"cuda"``; default: where ``data`` already lives (cpu for lists).
        name: a label shown in repr, errors and graphs.
    """

    __slots__ = ("data", "grad", "requires_grad", "grad_fn", "name", "_hooks", "__weakref__")
    __array_priority__ = 1000  # numpy_array * tensor -> Tensor.__rmul__, not an object array

    def __init__(self, data, requires_grad: bool = False, dtype=None, device: str | None = None,
                 name: str | None = None):
        self.data = _to_array(data, dtype, device)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"requires_grad=True needs a floating-point tensor, got dtype "
                            f"{self.data.dtype}; only floating tensors have gradients")
        self.requires_grad = bool(requires_grad)
        self.grad = None
        self.grad_fn = None
        self.name = name
        self._hooks = None

    @classmethod
    def _from_op(cls, data, grad_fn) -> "Tensor":
        """Fast constructor for op outputs (no validation: ops return well-formed arrays)."""
        t = object.__new__(cls)
        t.data = data
        t.grad = None
        t.requires_grad = grad_fn is not None
        t.grad_fn = grad_fn
        t.name = None
        t._hooks = None
        return t

    # -- array facts ----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return int(self.data.size)

    @property
    def device(self) -> str:
        return device_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    def __len__(self) -> int:
        return len(self.data)

    # -- autograd -------------------------------------------------------------------------------
    def backward(self, grad=None, retain_graph: bool = False) -> None:
        """Compute d self / d leaf for every leaf that requires grad, adding into ``leaf.grad``.

        ``grad`` is d loss / d self; it may be omitted only for a one-element tensor (then 1).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: no input of the "
                               "computation had requires_grad=True (or it ran under no_grad())")
        xp = get_array_module(self.data)
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient argument needs a one-element "
                                   f"tensor, got shape {self.shape}; pass grad= of that shape")
            grad = xp.ones(self.data.shape, dtype=self.data.dtype)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(grad=...): grad has shape {tuple(grad.shape)}, expected "
                                 f"the tensor's shape {self.shape}")
            if grad.dtype != self.data.dtype:
                raise TypeError(f"backward(grad=...): grad has dtype {grad.dtype}, expected "
                                f"{self.data.dtype}")
        autograd.run_backward(self, grad, retain_graph=retain_graph)

    def detach(self) -> "Tensor":
        """The same data with no history (shares memory, like PyTorch)."""
        return Tensor._from_op(self.data, None)

    def retain_grad(self) -> "Tensor":
        """Keep ``.grad`` for this non-leaf tensor after backward (leaves always keep it)."""
        if self.grad_fn is not None:
            self.grad_fn.retained_output = weakref.ref(self)
        return self

    def register_hook(self, hook) -> "Tensor":
        """Call ``hook(grad_tensor)`` when this tensor's gradient is computed.

        The hook may return a replacement gradient (Tensor or array) or None to keep it.
        """
        if not callable(hook):
            raise TypeError(f"register_hook: hook={hook!r} is not callable")
        if not self.requires_grad:
            raise RuntimeError("register_hook on a tensor that does not require grad")
        if self.grad_fn is None:
            self._hooks = (self._hooks or []) + [hook]
        else:
            self.grad_fn.output_hooks = (self.grad_fn.output_hooks or []) + [hook]
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # -- conversion -----------------------------------------------------------------------------
    def item(self):
        """The value of a one-element tensor as a Python number (syncs the GPU)."""
        return backend_item(self.data)

    def numpy(self) -> np.ndarray:
        """A host NumPy array with the data (a copy when the tensor is on the GPU)."""
        return to_numpy(self.data)

    def tolist(self):
        return self.data.tolist()

    def to(self, device: str) -> "Tensor":
        """A new leaf tensor on ``device`` (``"cpu"`` or ``"cuda"``), keeping requires_grad."""
        check_device(device)
        if device == self.device:
            return self
        moved = Tensor._from_op(to_device(self.data, device), None)
        moved.requires_grad = self.requires_grad
        moved.name = self.name
        return moved

    def astype(self, dtype) -> "Tensor":
        """Differentiable dtype conversion (the gradient is converted back)."""
        from minillm.ops.elementwise import cast  # noqa: PLC0415  (the ops import tensor)

        return cast(self, dtype)

    def float(self) -> "Tensor":
        return self.astype(np.float32)

    def double(self) -> "Tensor":
        return self.astype(np.float64)

    # -- repr -----------------------------------------------------------------------------------
    def __repr__(self) -> str:
        body = np.array2string(self.numpy(), separator=", ", precision=4,  # host: a copy
                               threshold=40, edgeitems=3, prefix="tensor(")
        parts = [f"tensor({body}", f"shape={self.shape}", f"dtype={self.data.dtype}"]
        if self.device != "cpu":
            parts.append(f"device='{self.device}'")
        if self.grad_fn is not None:
            parts.append(f"grad_fn=<{self.grad_fn.label()}>")
        elif self.requires_grad:
            parts.append("requires_grad=True")
        if self.name:
            parts.append(f"name={self.name!r}")
        return ", ".join(parts) + ")"

    # -- operators (the ops live in minillm.ops; imported lazily to keep layering simple) ------
    def __add__(self, other):
        return _ops().add(self, other)

    def __radd__(self, other):
        return _ops().add(other, self)

    def __sub__(self, other):
        return _ops().sub(self, other)

    def __rsub__(self, other):
        return _ops().sub(other, self)

    def __mul__(self, other):
        return _ops().mul(self, other)

    def __rmul__(self, other):
        return _ops().mul(other, self)

    def __truediv__(self, other):
        return _ops().div(self, other)

    def __rtruediv__(self, other):
        return _ops().div(other, self)

    def __neg__(self):
        return _ops().neg(self)

    def __pow__(self, exponent):
        return _ops().pow(self, exponent)

    def __rpow__(self, base):
        return _ops().pow(base, self)

    def __matmul__(self, other):
        return _ops().matmul(self, other)

    def __rmatmul__(self, other):
        return _ops().matmul(other, self)

    def __getitem__(self, index):
        return _ops().getitem(self, index)

    # Comparisons give boolean tensors without gradients (masks for where()).
    def __lt__(self, other):
        return Tensor._from_op(self.data < _data(other), None)

    def __le__(self, other):
        return Tensor._from_op(self.data <= _data(other), None)

    def __gt__(self, other):
        return Tensor._from_op(self.data > _data(other), None)

    def __ge__(self, other):
        return Tensor._from_op(self.data >= _data(other), None)

    # -- methods mirroring functional ---------------------------------------------------------
    def sum(self, axis=None, keepdims=False):
        return _ops().sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return _ops().mean(self, axis, keepdims)

    def max(self, axis=None, keepdims=False):
        return _ops().max(self, axis, keepdims)

    def var(self, axis=None, keepdims=False, correction=1):
        return _ops().var(self, axis, keepdims, correction)

    def reshape(self, *shape):
        return _ops().reshape(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _ops().transpose(self, axes or None)

    def permute(self, *axes):
        return self.transpose(*axes)

    def swapaxes(self, axis1: int, axis2: int):
        return _ops().swapaxes(self, axis1, axis2)

    @property
    def T(self):
        return _ops().transpose(self, None)

    def expand(self, *shape):
        return _ops().broadcast_to(self, shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape)

    def exp(self):
        return _ops().exp(self)

    def log(self):
        return _ops().log(self)

    def sqrt(self):
        return _ops().sqrt(self)

    def abs(self):
        return _ops().abs(self)

    def relu(self):
        return _ops().relu(self)

    def tanh(self):
        return _ops().tanh(self)

    def sigmoid(self):
        return _ops().sigmoid(self)

    def softmax(self, axis=-1):
        return _ops().softmax(self, axis)

    def log_softmax(self, axis=-1):
        return _ops().log_softmax(self, axis)

    def clip(self, min=None, max=None):  # noqa: A002  (PyTorch's names)
        return _ops().clip(self, min, max)

    def argmax(self, axis=None):
        return Tensor._from_op(self.data.argmax(axis=axis), None)


_functional = None


def _ops():
    """minillm.functional, imported on first use (functional imports this module)."""
    global _functional
    if _functional is None:
        from minillm import functional  # noqa: PLC0415  (the ops import tensor)

        _functional = functional
    return _functional


def _data(value):
    return value.data if isinstance(value, Tensor) else value


def _to_array(data, dtype, device):
    """Validate ``data`` and turn it into an xp array of ``dtype`` on ``device``."""
    if isinstance(data, Tensor):
        data = data.data
    if isinstance(data, (bool, int, float, list, tuple)) or isinstance(data, np.generic):
        array = np.asarray(data)  # host: Python numbers/lists start on the host
        if array.dtype.kind not in "biuf":
            raise TypeError(f"tensor(data=...): expected numbers, got {type(data).__name__} holding "
                            f"{array.dtype} values")
        if array.dtype.kind == "f" and dtype is None and not isinstance(data, np.generic):
            array = array.astype(_DEFAULT_FLOAT)
    elif hasattr(data, "dtype") and hasattr(data, "shape"):
        array = data
        if array.dtype.kind not in "biuf":
            raise TypeError(f"tensor(data=...): array dtype {array.dtype} is not numeric; expected a "
                            "bool, integer or floating array")
    else:
        raise TypeError(f"tensor(data=...): expected an array, a number or a list of numbers, got "
                        f"{type(data).__name__}")
    if device is not None:
        array = to_device(array, device)
    if dtype is not None and array.dtype != np.dtype(dtype):
        array = array.astype(dtype)
    return array


def tensor(data, requires_grad: bool = False, dtype=None, device: str | None = None,
           name: str | None = None) -> Tensor:
    """Make a leaf :class:`Tensor` (see its docstring for the arguments)."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device, name=name)


def zeros(shape, dtype=np.float32, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    xp = module_for_device(device)
    return Tensor(xp.zeros(shape, dtype=dtype), requires_grad=requires_grad)


def ones(shape, dtype=np.float32, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    xp = module_for_device(device)
    return Tensor(xp.ones(shape, dtype=dtype), requires_grad=requires_grad)


def randn(*shape, dtype=np.float32, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    """Standard normal samples from the global generator (seed with ``manual_seed``)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return Tensor(random_normal(shape, dtype, device), requires_grad=requires_grad)
