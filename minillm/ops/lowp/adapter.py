"""Compute in float32, round once: the one adapter between a float32 op and low-precision arrays.

The float32 ops hold only the math. Where the policy of :mod:`minillm.amp` wants one of them in
float32 on float16 inputs, or its result rounded to a format (:func:`minillm.amp.dispatch`
answers IN_FLOAT32), the wrapper runs the op inside :class:`InFloat32` instead of on its own:

    op = adapt(LayerNorm(eps), amp.dispatch("layer_norm", x))     # LayerNorm, or InFloat32(LayerNorm)
    y = op.apply(x, weight, bias)

The norms under autocast (the result stored in the format), softmax, log_softmax and
cross_entropy of float16 inputs under autocast (a float32 result), and GELU, SiLU, SwiGLU and RoPE
of float16 inputs (rounded back to float16) all take this one path.
"""
from __future__ import annotations

import numpy as np

from minillm import amp
from minillm.amp.formats import cast
from minillm.autograd import Function
from minillm.backend import get_array_module

_BLOCK = 1 << 18             # elements per block (blocks=True): 1 MiB float32 copies, in cache


class InFloat32(Function):
    """``op``, a float32 Function, computed in float32 on low-precision inputs and rounded once.

    Forward: every float16 input is widened to float32 (the others go as they are), ``op.forward``
    runs on them, and its result is rounded once to ``fmt``: its storage dtype (float16; float32
    holding bfloat16 values for bf16), or left as computed when ``fmt`` is None (a float32 result).
    Backward: dL/dy widened to float32, ``op.backward``, each gradient rounded once to its input's
    dtype.

    Memory: every float32 copy of an input that the op saved is swapped for the input itself after
    forward (the graph holds that array anyway) and widened again in backward, so the graph keeps
    the float16 arrays, never a float32 copy. ``blocks=True``, for elementwise ops that save
    nothing but their inputs (GELU tanh, SwiGLU), runs both passes block by block of the flattened
    arrays, so a float32 copy exists for one block at a time (the result is C-contiguous).

    Fused kernels: an op whose CUDA kernel reads float16 and rounds its own result has
    ``kernel_forward(*arrays, out_dtype=None, round_bf16=False)``, which runs the kernel (writing
    the result in ``out_dtype``, rounded to bfloat16 first when asked) or returns None where it
    does not run. Where it runs, the inputs go to it as they are -- no float32 copy -- and the
    op's own backward follows (its kernels return each gradient in its input's dtype).

    Shapes: the op's.
    Saves: what the op saves, with its inputs kept as the graph's own (float16) arrays; the
    inputs' shapes and dtypes.
    """

    kernel_ran = False

    def __init__(self, op: Function, fmt, blocks: bool = False):
        self.op, self.fmt, self.blocks = op, fmt, blocks

    def op_type(self) -> str:
        return f"InFloat32({self.op.op_type()})"

    def _round(self, y):
        """The op's float32 result rounded once to the format (or as it is, without one)."""
        return y if self.fmt is None else self.fmt.to_storage(y)

    def forward(self, *arrays):
        op, fmt = self.op, self.fmt
        self.shapes, self.dtypes = [a.shape for a in arrays], [a.dtype for a in arrays]
        kernel = getattr(op, "kernel_forward", None)
        if kernel is not None:
            y = kernel(*arrays, out_dtype=np.dtype(np.float32) if fmt is None else fmt.storage_dtype,
                       round_bf16=fmt is not None and fmt.round_bf16)
            if y is not None:                            # the kernel read the inputs and rounded y itself
                self.kernel_ran = True
                return y
        if self.blocks:
            return self._forward_blocks(arrays)
        wide = [_widen(a) for a in arrays]
        y = op.forward(*wide)
        self.saved = _keep_inputs(op, wide, arrays)
        return self._round(y)

    def backward(self, gy):
        op = self.op
        op.needs_input_grad = self.needs_input_grad
        if self.kernel_ran:
            return op.backward(gy)
        if self.blocks:
            return self._backward_blocks(gy)
        inputs = {name: getattr(op, name) for name in self.saved}
        for name, array in inputs.items():
            setattr(op, name, _widen(array))
        try:
            grads = op.backward(_widen(gy))
        finally:
            for name, array in inputs.items():           # the graph's arrays again (retain_graph)
                setattr(op, name, array)
        grads = grads if type(grads) is tuple else (grads,)
        return tuple(None if g is None else cast(g, dtype) for g, dtype in zip(grads, self.dtypes))

    # -- blocks=True: elementwise ops, one block of float32 copies at a time ---------------------
    def _forward_blocks(self, arrays):
        xp = get_array_module(*arrays)
        flat = [a.reshape(-1) for a in arrays]
        y = None
        for block in _blocks(flat[0].size) or [slice(0, 0)]:     # an empty input: once, for the dtype
            wide = [_widen(a[block]) for a in flat]
            part = self._round(self.op.forward(*wide))
            if y is None:
                y = xp.empty(flat[0].size, dtype=part.dtype)
            y[block] = part
        self.saved = _keep_inputs(self.op, wide, arrays)     # the last block's copies -> the whole inputs
        return y.reshape(arrays[0].shape)

    def _backward_blocks(self, gy):
        op, needs = self.op, self.needs_input_grad
        xp = get_array_module(gy)
        inputs = {name: getattr(op, name) for name in self.saved}
        flat = {name: array.reshape(-1) for name, array in inputs.items()}
        grads = [xp.empty(shape, dtype=dtype) if need else None
                 for shape, dtype, need in zip(self.shapes, self.dtypes, needs)]
        gy_flat = gy.reshape(-1)
        try:
            for block in _blocks(gy_flat.size):
                for name, array in flat.items():
                    setattr(op, name, _widen(array[block]))
                parts = op.backward(_widen(gy_flat[block]))
                parts = parts if type(parts) is tuple else (parts,)
                for g, part in zip(grads, parts):
                    if g is not None:
                        g.reshape(-1)[block] = cast(part, g.dtype)
        finally:
            for name, array in inputs.items():
                setattr(op, name, array)
        return tuple(grads)


def adapt(op: Function, route, blocks: bool = False) -> Function:
    """``op`` itself, or ``InFloat32(op, ...)`` where ``route`` (:func:`minillm.amp.dispatch`) says
    IN_FLOAT32. ``blocks``: see :class:`InFloat32`."""
    return InFloat32(op, route.fmt, blocks) if route.kind == amp.IN_FLOAT32 else op


def _widen(array):
    """A float16 array as float32 (a new array); any other array as it is."""
    return cast(array, np.float32) if array.dtype == np.float16 else array


def _keep_inputs(op: Function, wide: list, arrays) -> dict:
    """Point every attribute of ``op`` that holds one of the float32 copies ``wide`` at the input it
    was made from (``arrays``); returns {attribute name: input index}."""
    copies = {id(w): i for i, (w, a) in enumerate(zip(wide, arrays)) if w is not a}
    saved = {name: copies[id(value)] for name, value in vars(op).items() if id(value) in copies}
    for name, i in saved.items():
        setattr(op, name, arrays[i])
    return saved


def _blocks(size: int) -> list:
    """Slices of a flat array of ``size`` elements, ``_BLOCK`` at a time."""
    return [slice(i, min(i + _BLOCK, size)) for i in range(0, size, _BLOCK)]
