"""Reverse-mode automatic differentiation: the Function base class and the backward engine.

A differentiable op is a :class:`Function` subclass with ``forward(*arrays)`` and
``backward(gy)`` side by side, both on plain xp arrays. Calling ``Op(params).apply(*tensors)``
runs ``forward`` and, when gradients are wanted, records the op as the output's ``grad_fn``:
the graph is the chain of ``grad_fn.inputs`` links, built while the forward pass runs.

:func:`run_backward` walks that graph without recursion. Each op gets a *generation*, one more
than the newest of its inputs; a max-heap on generation (ties broken by creation order) visits
every op only after all ops that consumed its output, so reuse (``x * x``), diamonds and shared
weights receive the exact sum of their gradients. Gradients are accumulated out of place
(``a + b``, never ``a += b``) so no array handed out is ever modified afterwards.
"""
from __future__ import annotations

import contextlib
import heapq
import itertools
import traceback
import weakref
from typing import TYPE_CHECKING

from minillm.backend import device_of, get_array_module

if TYPE_CHECKING:  # pragma: no cover
    from minillm.tensor import Tensor

_grad_enabled = True
_anomaly_mode = False
_creation_counter = itertools.count()
_profiler = None             # a minillm.profiler.Profile while one records (else one check per op
                             # and per Module call)
# id(leaf) -> (weakref to the leaf, [hook, ...]): "this leaf's gradient is complete" hooks
# (register_grad_ready_hook). Empty (the usual case), backward does no extra work at all.
_grad_ready_hooks: dict = {}


def set_profiler(profiler):
    """Install (or with None remove) the op profiler; returns the previous one (minillm.profiler)."""
    global _profiler
    previous = _profiler
    _profiler = profiler
    return previous


# ---------------------------------------------------------------------------------------------
# Grad mode
# ---------------------------------------------------------------------------------------------
def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def _grad_mode(enabled: bool):
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = enabled
    try:
        yield
    finally:
        _grad_enabled = previous


def no_grad():
    """Context manager: ops inside record no graph (inference, optimizer updates)."""
    return _grad_mode(False)


def enable_grad():
    """Context manager: turn graph recording back on inside a ``no_grad`` block."""
    return _grad_mode(True)


def set_anomaly_mode(enabled: bool) -> bool:
    """Switch anomaly detection on/off; returns the previous setting (see minillm.debug)."""
    global _anomaly_mode
    previous = _anomaly_mode
    _anomaly_mode = bool(enabled)
    return previous


def is_anomaly_enabled() -> bool:
    return _anomaly_mode


class AnomalyError(FloatingPointError):
    """A NaN or Inf appeared in an op's output or gradient while anomaly detection was on."""


# ---------------------------------------------------------------------------------------------
# Function
# ---------------------------------------------------------------------------------------------
class Function:
    """Base class of every differentiable op.

    Subclasses implement ``forward(self, *arrays) -> array`` and ``backward(self, gy)`` which
    returns one gradient per forward input (a tuple, or a single array for one input; ``None``
    where ``needs_input_grad`` is False or the input is not differentiable). Values needed by
    backward are stored as attributes in ``forward``; the engine drops them after backward.

    Attributes set by :meth:`apply` when a graph is recorded:
        inputs: per input, the Tensor itself for a leaf (its gradient is stored on it), else a
            :class:`GraphInput` (the producing op, shape, dtype): the graph does not keep an
            intermediate's array alive -- only what an op saves for its backward stays.
        needs_input_grad: per input, whether its gradient is wanted.
        generation: topological depth used to order backward.
        name: optional label (``block3.attn.softmax``) shown in errors, repr and graphs.
        created_at: the user's stack frame summary (only under anomaly detection).
    """

    inputs: tuple | None = None
    needs_input_grad: tuple = ()
    generation: int = 0
    name: str | None = None
    created_at = None
    output_hooks: list | None = None     # hooks registered on the (non-leaf) output tensor
    nests_ops = False                    # True for an op that runs other ops (minillm.nn.recompute)
    retained_output = None               # weakref to the output when retain_grad() was called
    # Set by the engine just before backward: True when the graph is freed right after this
    # backward (retain_graph=False), so backward may write its result into an array it saved
    # (nothing reads it again); False for a retained graph or a direct call of backward.
    may_overwrite_saved = False

    def forward(self, *arrays):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.forward is not implemented")

    def backward(self, gy):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__}.backward is not implemented")

    def flops(self) -> tuple[int, int] | None:
        """(forward, backward) floating-point operations of the op's matrix products, from the
        shapes forward saved, for :mod:`minillm.profiler`; None (the default) where the op defines
        none. A multiply-add counts 2; backward counts only the gradients it computes
        (``needs_input_grad``), and both count what the algorithm computes, not a minimum."""
        return None

    def op_type(self) -> str:
        """The op's name in labels and profiles: its class name (an adapter names the op it runs)."""
        return type(self).__name__

    def label(self) -> str:
        return f"{self.op_type()}({self.name})" if self.name else self.op_type()

    def apply(self, *inputs: "Tensor") -> "Tensor":
        """Run ``forward`` on the inputs' arrays; record this op as the output's ``grad_fn``."""
        from minillm.tensor import Tensor  # noqa: PLC0415  (tensor imports autograd)

        arrays = [t.data for t in inputs]
        _check_same_device(self, arrays)
        needs = tuple(t.requires_grad for t in inputs) if _grad_enabled else ()
        record = any(needs)
        if record:
            self.needs_input_grad = needs
        profiler = _profiler
        if profiler is None:
            output = self.forward(*arrays)
        else:
            started = profiler.start(arrays)
            output = self.forward(*arrays)
            profiler.stop(self, "forward", started, output)
        if not record:
            return Tensor._from_op(output, None)
        self.inputs = tuple(t if t.grad_fn is None else GraphInput(t) for t in inputs)
        self.generation = max([t.grad_fn.generation for t in inputs if t.grad_fn is not None],
                              default=0) + 1
        if _anomaly_mode:
            self.created_at = _user_frame()
            _check_finite(self, output, "forward output")
        return Tensor._from_op(output, self)

    def release(self) -> None:
        """Drop the links and saved arrays once backward has used them (frees memory)."""
        self.__dict__.clear()
        self.inputs = None


class GraphInput:
    """What the graph keeps of a non-leaf input: its producing op (``grad_fn``), its ``shape``
    and ``dtype`` (to check the gradient backward returns) and its ``name`` -- not its array,
    which lives only as long as the user or an op's saved values hold it."""

    __slots__ = ("grad_fn", "shape", "dtype", "name")

    def __init__(self, tensor: "Tensor"):
        self.grad_fn, self.name = tensor.grad_fn, tensor.name
        self.shape, self.dtype = tensor.data.shape, tensor.data.dtype

    requires_grad = True                # a non-leaf input is part of a recorded graph


def _check_same_device(fn: Function, arrays) -> None:
    # Fast path: every operand is a host array.
    if all(type(a).__module__ == "numpy" for a in arrays):
        return
    devices = [device_of(a) for a in arrays]
    if len(set(devices)) > 1:
        described = ", ".join(f"input {i} on {d!r}" for i, d in enumerate(devices))
        raise RuntimeError(f"{fn.label()}: inputs are on different devices ({described}); "
                           "move them with tensor.to(device) first")


def _user_frame():
    """The innermost stack frame outside minillm: the user's line that created the op."""
    frames = traceback.extract_stack()[:-2]
    for frame in reversed(frames):
        if "/minillm/" not in frame.filename.replace("\\", "/"):
            return frame
    return frames[-1] if frames else None


def _check_finite(fn: Function, array, what: str) -> None:
    xp = get_array_module(array)
    if array.dtype.kind == "f" and not bool(xp.isfinite(array).all()):
        where = ""
        if fn.created_at is not None:
            frame = fn.created_at
            where = f"\n  the op was created at {frame.filename}:{frame.lineno}: {frame.line}"
        raise AnomalyError(f"{fn.label()} produced NaN/Inf in its {what}{where}")


# ---------------------------------------------------------------------------------------------
# Gradient-ready hooks
# ---------------------------------------------------------------------------------------------
class _ReadyHookHandle:
    """What :func:`register_grad_ready_hook` returns: ``remove()`` takes the hook off again."""

    def __init__(self, key: int, hook):
        self.key, self.hook = key, hook

    def remove(self) -> None:
        entry = _grad_ready_hooks.get(self.key)
        if entry is None:
            return
        hooks = entry[1]
        if self.hook in hooks:
            hooks.remove(self.hook)
        if not hooks:
            del _grad_ready_hooks[self.key]


def register_grad_ready_hook(leaf: "Tensor", hook) -> _ReadyHookHandle:
    """Call ``hook(leaf)`` during a backward pass as soon as ``leaf.grad`` holds its last
    contribution of that pass (data-parallel training starts communicating it then).

    A leaf used k times in the graph (a tied weight, a reused parameter) receives k gradient
    contributions; the engine counts them before it starts (one walk over the graph, done only
    while some hook is registered) and fires the hook after the k-th. A leaf whose op returned
    no gradient for some use is fired at the end of the pass; a leaf the graph never reaches is
    not fired. Returns a handle whose ``remove()`` unregisters the hook.
    """
    if leaf.grad_fn is not None:
        raise ValueError("register_grad_ready_hook: the tensor is not a leaf (it has a grad_fn); "
                         "gradient-ready hooks are for parameters")
    key = id(leaf)
    entry = _grad_ready_hooks.get(key)
    if entry is None or entry[0]() is not leaf:          # a new leaf (or a dead one's reused id)
        entry = _grad_ready_hooks[key] = (weakref.ref(leaf, lambda _, key=key: _forget_ready(key)), [])
    entry[1].append(hook)
    return _ReadyHookHandle(key, hook)


def _forget_ready(key: int) -> None:
    """The leaf died: drop its entry (unless the id was reused by a live leaf already)."""
    entry = _grad_ready_hooks.get(key)
    if entry is not None and entry[0]() is None:
        del _grad_ready_hooks[key]


def _count_ready_leaf_uses(start: Function) -> dict:
    """id(leaf) -> how many gradient contributions each hooked leaf gets in a backward from
    ``start`` (one walk over the recorded graph)."""
    counts: dict = {}
    seen = {start}
    stack = [start]
    while stack:
        fn = stack.pop()
        if fn.inputs is None:
            continue
        for tensor, needed in zip(fn.inputs, fn.needs_input_grad):
            if not needed:
                continue
            producer = tensor.grad_fn
            if producer is None:
                if id(tensor) in _grad_ready_hooks:
                    counts[id(tensor)] = counts.get(id(tensor), 0) + 1
            elif producer not in seen:
                seen.add(producer)
                stack.append(producer)
    return counts


def _fire_ready(key: int) -> None:
    entry = _grad_ready_hooks.get(key)
    if entry is None:
        return
    leaf = entry[0]()
    if leaf is not None:
        for hook in list(entry[1]):
            hook(leaf)


# ---------------------------------------------------------------------------------------------
# The backward engine
# ---------------------------------------------------------------------------------------------
def run_backward(root: "Tensor", grad, retain_graph: bool = False) -> None:
    """Back-propagate ``grad`` (d loss / d root) to every leaf that requires grad.

    Iterative: a heap of pending ops keyed by (-generation, creation tie counter). Gradients
    for an op's output are summed in ``pending`` until the op is popped; by then every consumer
    has contributed, because consumers always have a higher generation.
    """
    if root.grad_fn is None:
        _accumulate_leaf(root, grad)
        return
    start = root.grad_fn
    if start.inputs is None:
        raise RuntimeError(
            f"backward through {start.label()} a second time: the graph was freed after the first "
            "backward; call backward(retain_graph=True) the first time to keep it")
    ready_counts = _count_ready_leaf_uses(start) if _grad_ready_hooks else None
    pending = {start: grad}
    tie = itertools.count()
    heap = [(-start.generation, next(tie), start)]
    while heap:
        _, _, fn = heapq.heappop(heap)
        gy = pending.pop(fn)
        if fn.output_hooks:
            for hook in fn.output_hooks:
                gy = _apply_hook(hook, gy)
        if fn.retained_output is not None:
            out = fn.retained_output()
            if out is not None:
                out.grad = gy if out.grad is None else out.grad + gy
        if fn.inputs is None:
            raise RuntimeError(
                f"backward through {fn.label()} a second time: the graph was freed after the "
                "first backward; call backward(retain_graph=True) the first time to keep it")
        fn.may_overwrite_saved = not retain_graph
        profiler = _profiler
        if profiler is None:
            grads = fn.backward(gy)
        else:
            started = profiler.start((gy,))
            grads = fn.backward(gy)
            profiler.stop(fn, "backward", started, grads)
        if type(grads) is not tuple:
            grads = (grads,)
        inputs = fn.inputs
        if len(grads) != len(inputs):
            raise RuntimeError(f"{fn.label()}.backward returned {len(grads)} gradients for "
                               f"{len(inputs)} inputs")
        for index, (tensor, gx, needed) in enumerate(zip(inputs, grads, fn.needs_input_grad)):
            if not needed or gx is None:
                continue
            if gx.shape != tensor.shape or gx.dtype != tensor.dtype:
                raise RuntimeError(
                    f"{fn.label()}.backward returned a gradient of shape {tuple(gx.shape)} and dtype "
                    f"{gx.dtype} for input {index}, which has shape {tuple(tensor.shape)} and dtype "
                    f"{tensor.dtype}")
            if _anomaly_mode:
                _check_finite(fn, gx, f"gradient for input {index}")
            producer = tensor.grad_fn
            if producer is None:
                _accumulate_leaf(tensor, gx)
                if ready_counts and id(tensor) in ready_counts:
                    ready_counts[id(tensor)] -= 1
                    if ready_counts[id(tensor)] == 0:
                        del ready_counts[id(tensor)]
                        _fire_ready(id(tensor))
            elif producer in pending:
                pending[producer] = pending[producer] + gx
            else:
                pending[producer] = gx
                heapq.heappush(heap, (-producer.generation, next(tie), producer))
        if not retain_graph:
            fn.release()
    if ready_counts:                      # leaves an op gave no gradient for some use: complete now
        for key in list(ready_counts):
            _fire_ready(key)


def _apply_hook(hook, gradient):
    """Call a tensor hook with the gradient as a Tensor; it may return a replacement (a Tensor
    or an array) or None to keep the gradient."""
    from minillm.tensor import Tensor  # noqa: PLC0415  (tensor imports autograd)

    replaced = hook(Tensor(gradient))
    if replaced is None:
        return gradient
    return replaced.data if isinstance(replaced, Tensor) else replaced


def _accumulate_leaf(tensor: "Tensor", gx) -> None:
    if tensor._hooks:
        for hook in tensor._hooks:
            gx = _apply_hook(hook, gx)
    tensor.grad = gx if tensor.grad is None else tensor.grad + gx
