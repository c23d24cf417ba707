"""gradcheck: compare backward's gradients with central finite differences, in float64.

For an op f and a *random* upstream gradient g (an all-ones g would hide real bugs: softmax
rows sum to one, so a softmax backward that drops a term still passes), the scalar
L(x) = Σ f(x) ⊙ g has the gradient that ``backward(g)`` must produce. Each element is
checked against  (L(x + ε e_i) - L(x - ε e_i)) / 2ε.  On the side it checks that gradients
have their input's shape and dtype, that a second backward gives the same gradients, and that
no input was modified.
"""
from __future__ import annotations

import numpy as np

from minillm.autograd import no_grad
from minillm.backend import device_of, to_device, to_numpy
from minillm.tensor import Tensor


class GradcheckError(AssertionError):
    """The analytic gradient of an op disagrees with finite differences (or a side check failed)."""


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


def gradcheck(fn, inputs, *, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              seed: int = 0) -> bool:
    """Check ``fn``'s gradients w.r.t. every floating input; raise GradcheckError if wrong.

    Args:
        fn: a function of Tensors returning one Tensor (e.g. ``lambda x, w: F.matmul(x, w)``).
        inputs: Tensors or arrays; floating ones must be float64 and are all checked, integer
            ones (indices) are passed through unchanged.
        eps: the finite-difference step. atol, rtol: pass when |analytic - numeric| <=
            atol + rtol * |numeric| for every element.
        seed: seeds the random upstream gradient.

    Returns True when every check passes.
    """
    name = _name(fn)
    tensors = [x if isinstance(x, Tensor) else Tensor(x) for x in inputs]
    floating = [i for i, t in enumerate(tensors) if t.dtype.kind == "f"]
    if not floating:
        raise GradcheckError(f"gradcheck({name}): no floating-point input to check")
    for i in floating:
        if tensors[i].dtype != np.float64:
            raise GradcheckError(
                f"gradcheck({name}): input {i} has dtype {tensors[i].dtype}; finite differences "
                "need float64 inputs (float32 rounding swamps eps)")
    originals = [t.data.copy() for t in tensors]
    device = device_of(originals[0])

    def run_backward(upstream):
        leaves = [Tensor(a.copy(), requires_grad=i in floating) for i, a in enumerate(originals)]
        out = fn(*leaves)
        if not isinstance(out, Tensor):
            raise GradcheckError(f"gradcheck({name}): fn returned {type(out).__name__}, expected a Tensor")
        if upstream is None:
            rng = np.random.Generator(np.random.PCG64(seed))
            upstream = to_device(rng.standard_normal(out.shape).astype(out.dtype), device)
        if out.requires_grad:
            out.backward(upstream)
        return leaves, out, upstream

    leaves, out, upstream = run_backward(None)
    if out.dtype != np.float64:
        raise GradcheckError(f"gradcheck({name}): output dtype is {out.dtype}; expected float64 "
                             "for float64 inputs (an op lost precision)")
    analytic = {}
    for i in floating:
        grad = leaves[i].grad
        if grad is None:
            grad = np.zeros(originals[i].shape, dtype=np.float64)
        elif tuple(grad.shape) != tuple(originals[i].shape) or grad.dtype != originals[i].dtype:
            raise GradcheckError(f"gradcheck({name}): gradient of input {i} has shape "
                                 f"{tuple(grad.shape)} and dtype {grad.dtype}; expected "
                                 f"{tuple(originals[i].shape)} and {originals[i].dtype}")
        analytic[i] = to_numpy(grad)

    for i, t in enumerate(tensors):
        if not np.array_equal(to_numpy(t.data), to_numpy(originals[i])) or \
                not np.array_equal(to_numpy(leaves[i].data), to_numpy(originals[i])):
            raise GradcheckError(f"gradcheck({name}): input {i} was modified in place by the op")

    repeat_leaves, _, _ = run_backward(upstream)
    for i in floating:
        again = repeat_leaves[i].grad
        again = np.zeros_like(analytic[i]) if again is None else to_numpy(again)
        if not np.allclose(again, analytic[i], rtol=1e-10, atol=1e-12):
            raise GradcheckError(f"gradcheck({name}): backward is not repeatable for input {i}: "
                                 f"max difference {np.max(np.abs(again - analytic[i])):.3e}")

    def objective(arrays) -> float:
        with no_grad():
            result = fn(*[Tensor(a) for a in arrays])
        return float(to_numpy((result.data * upstream).sum()))

    for i in floating:
        numeric = np.zeros(originals[i].shape, dtype=np.float64)
        arrays = [a.copy() for a in originals]
        for index in np.ndindex(*originals[i].shape):
            base = arrays[i].copy()
            arrays[i] = base.copy()
            arrays[i][index] += eps
            plus = objective(arrays)
            arrays[i] = base.copy()
            arrays[i][index] -= eps
            minus = objective(arrays)
            arrays[i] = base
            numeric[index] = (plus - minus) / (2 * eps)
        difference = np.abs(analytic[i] - numeric)
        tolerance = atol + rtol * np.abs(numeric)
        if np.any(difference > tolerance):
            worst = np.unravel_index(np.argmax(difference - tolerance), numeric.shape)
            raise GradcheckError(
                f"gradcheck({name}): gradient of input {i} (shape {numeric.shape}) is wrong at "
                f"index {tuple(int(k) for k in worst)}: analytic {analytic[i][worst]:.8g}, numeric "
                f"{numeric[worst]:.8g}, |difference| {difference[worst]:.3g} > atol + rtol*|numeric| "
                f"= {tolerance[worst]:.3g} (atol={atol}, rtol={rtol}, eps={eps}); "
                f"{int(np.sum(difference > tolerance))} of {numeric.size} elements fail")
    return True
