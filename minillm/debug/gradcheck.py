"""gradcheck: compare backward's gradients with central finite differences, in float64.

For an op f and a *random* upstream gradient g (an all-ones g would hide real bugs: softmax
rows sum to one, so a softmax backward that drops a term still passes), the scalar
L(x) = Σ f(x) ⊙ g has the gradient that ``backward(g)`` must produce. Each element is
checked against  (L(x + ε e_i) - L(x - ε e_i)) / 2ε.

``gradcheck`` is four named checks run in this order, each a function of its own so that a
failing one can be run (and stepped through) alone:

1. ``check_shapes_and_dtypes``        the output stays float64; every gradient has its input's
                                      shape and dtype.
2. ``check_no_input_mutation``        no input array was changed in place by the op.
3. ``check_repeatable``               a second backward with the same g gives the same gradients.
4. ``check_against_finite_differences`` analytic gradients equal the numeric ones, element by
                                      element, within atol + rtol·|numeric|.

The cheap side checks come first: a gradient of the wrong shape cannot be compared with finite
differences, and an op that mutates its input or is not repeatable would make the numeric
gradients (2 forwards per element) meaningless rather than wrong in an explainable way.

    case = prepare_case(fn, inputs)            # fn's name, the inputs' pristine copies
    run = forward_backward(case, seed=0)       # forward + backward(g) on fresh leaves
    analytic = check_shapes_and_dtypes(case, run)
    check_no_input_mutation(case, run)
    check_repeatable(case, run, analytic)
    check_against_finite_differences(case, run.upstream, analytic, eps=1e-6, atol=1e-5, rtol=1e-3)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from minillm.autograd import no_grad
from minillm.backend import device_of, to_device, to_numpy
from minillm.tensor import Tensor


class GradcheckError(AssertionError):
    """The analytic gradient of an op disagrees with finite differences (or a side check failed)."""


def _name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


@dataclass
class GradcheckCase:
    """A function and its inputs, ready for the checks.

    Attributes:
        fn: the function under test, Tensors in, one Tensor out.
        name: fn's name, used in every error message (``gradcheck(<name>): ...``).
        given: the caller's inputs as Tensors; watched for in-place changes.
        originals: copies of their arrays taken before fn ever ran, on the inputs' device. Every
            run starts from fresh copies of these, so one run cannot leak into the next.
        floating: indices of the floating inputs, the ones whose gradients are checked (integer
            inputs such as indices are passed through).
    """

    fn: Callable
    name: str
    given: list
    originals: list
    floating: list


@dataclass
class BackwardRun:
    """One forward and backward of ``case.fn`` on fresh leaf copies of the inputs.

    Attributes:
        leaves: the leaf Tensors fn ran on (floating ones with requires_grad); their ``.grad``
            holds the analytic gradients, None where no gradient reached the input.
        output: fn's output Tensor, any shape S.
        upstream: the upstream gradient g (shape S, the output's dtype) that backward started from.
    """

    leaves: list
    output: Tensor
    upstream: object


def prepare_case(fn, inputs) -> GradcheckCase:
    """Validate ``inputs`` and copy them: at least one floating input, every floating one float64.

    Catches: calls that cannot give a meaningful answer. With no floating input there is nothing
    to differentiate; in float32 the rounding error of f (about 1e-7·|f|) divided by 2ε swamps
    the derivative, so finite differences need float64.
    """
    name = _name(fn)
    given = [x if isinstance(x, Tensor) else Tensor(x) for x in inputs]
    floating = [i for i, t in enumerate(given) if t.dtype.kind == "f"]
    if not floating:
        raise GradcheckError(f"gradcheck({name}): no floating-point input to check")
    for i in floating:
        if given[i].dtype != np.float64:
            raise GradcheckError(
                f"gradcheck({name}): input {i} has dtype {given[i].dtype}; finite differences "
                "need float64 inputs (float32 rounding swamps eps)")
    return GradcheckCase(fn, name, given, [t.data.copy() for t in given], floating)


def random_upstream(shape, dtype, device: str, seed: int):
    """A standard-normal upstream gradient g of ``shape`` (seeded, so a failure reproduces)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return to_device(rng.standard_normal(shape).astype(dtype), device)


def forward_backward(case: GradcheckCase, upstream=None, seed: int = 0) -> BackwardRun:
    """Run ``case.fn`` on fresh leaves and ``output.backward(upstream)``; ``upstream=None``
    draws a random g from ``seed`` (see ``random_upstream``). An output that does not require
    grad (no floating input reached it) is not backpropagated: every gradient stays None."""
    leaves = [Tensor(array.copy(), requires_grad=i in case.floating) for i, array in enumerate(case.originals)]
    output = case.fn(*leaves)
    if not isinstance(output, Tensor):
        raise GradcheckError(f"gradcheck({case.name}): fn returned {type(output).__name__}, expected a Tensor")
    if upstream is None:
        upstream = random_upstream(output.shape, output.dtype, device_of(case.originals[0]), seed)
    if output.requires_grad:
        output.backward(upstream)
    return BackwardRun(leaves, output, upstream)


def check_shapes_and_dtypes(case: GradcheckCase, run: BackwardRun) -> dict[int, np.ndarray]:
    """Check that the output is float64 and that each floating input's gradient has the input's
    shape and dtype; return the analytic gradients as host arrays, ``{input index: array}``
    (zeros where no gradient reached the input: its true gradient is zero).

    Catches: an op that computes in a lower precision than its inputs (a silent float32 cast
    loses digits that training never gets back), and a gradient of the wrong shape or dtype in
    ``.grad``. The engine already checks what each op's backward returns; this checks what
    lands on the leaf, after tensor hooks (which may replace a gradient with anything).
    """
    if run.output.dtype != np.float64:
        raise GradcheckError(f"gradcheck({case.name}): output dtype is {run.output.dtype}; expected float64 "
                             "for float64 inputs (an op lost precision)")
    analytic = {}
    for i in case.floating:
        grad, original = run.leaves[i].grad, case.originals[i]
        if grad is None:
            grad = np.zeros(original.shape, dtype=np.float64)
        elif tuple(grad.shape) != tuple(original.shape) or grad.dtype != original.dtype:
            raise GradcheckError(f"gradcheck({case.name}): gradient of input {i} has shape "
                                 f"{tuple(grad.shape)} and dtype {grad.dtype}; expected "
                                 f"{tuple(original.shape)} and {original.dtype}")
        analytic[i] = to_numpy(grad)
    return analytic


def check_no_input_mutation(case: GradcheckCase, run: BackwardRun) -> None:
    """Check that neither the caller's inputs nor the leaves fn ran on differ from the copies
    taken before fn ran (element for element, exactly).

    Catches: an op that writes into its input array (``x *= s`` instead of ``y = x * s``): the
    caller's tensor changes under it, and a saved input that backward reads is no longer the
    value forward saw.
    """
    for i, original in enumerate(case.originals):
        expected = to_numpy(original)
        if not np.array_equal(to_numpy(case.given[i].data), expected) or \
                not np.array_equal(to_numpy(run.leaves[i].data), expected):
            raise GradcheckError(f"gradcheck({case.name}): input {i} was modified in place by the op")


def check_repeatable(case: GradcheckCase, run: BackwardRun, analytic: dict[int, np.ndarray]) -> None:
    """Run forward and backward again with the same upstream gradient and check that every
    gradient equals ``analytic`` (the first run's) to rtol 1e-10, atol 1e-12: the same float64
    arithmetic, so only summation order may differ.

    Catches: state kept between calls (a counter, a cache that is not invalidated, a saved array
    reused after it was overwritten, accumulation into a buffer that is never zeroed): each would
    make training depend on how many steps ran before.
    """
    again_run = forward_backward(case, run.upstream)
    for i in case.floating:
        again = again_run.leaves[i].grad
        again = np.zeros_like(analytic[i]) if again is None else to_numpy(again)
        if not np.allclose(again, analytic[i], rtol=1e-10, atol=1e-12):
            raise GradcheckError(f"gradcheck({case.name}): backward is not repeatable for input {i}: "
                                 f"max difference {np.max(np.abs(again - analytic[i])):.3e}")


def numeric_gradient(case: GradcheckCase, upstream, i: int, eps: float) -> np.ndarray:
    """The central-difference gradient of L(x) = Σ fn(x) ⊙ upstream with respect to input ``i``:
    element k is (L(x + ε e_k) − L(x − ε e_k)) / 2ε, the other inputs held at their originals.
    Costs 2 forwards per element (no graph is recorded). Returns a host float64 array of the
    input's shape; its error is O(ε²) truncation plus O(1e-16·|L| / ε) rounding."""
    def objective(arrays) -> float:
        with no_grad():
            result = case.fn(*[Tensor(a) for a in arrays])
        return float(to_numpy((result.data * upstream).sum()))

    shape = case.originals[i].shape
    numeric = np.zeros(shape, dtype=np.float64)
    arrays = [a.copy() for a in case.originals]
    for index in np.ndindex(*shape):
        base = arrays[i].copy()
        arrays[i] = base.copy()
        arrays[i][index] += eps
        plus = objective(arrays)
        arrays[i] = base.copy()
        arrays[i][index] -= eps
        minus = objective(arrays)
        arrays[i] = base
        numeric[index] = (plus - minus) / (2 * eps)
    return numeric


def check_against_finite_differences(case: GradcheckCase, upstream, analytic: dict[int, np.ndarray], *,
                                     eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3) -> None:
    """Check every element of every floating input's analytic gradient against
    ``numeric_gradient``: pass when |analytic − numeric| <= atol + rtol·|numeric|. The error
    names the input, the worst element (largest excess over its tolerance), both values, the
    tolerances and how many elements fail.

    Catches: wrong backward math — a dropped term, a flipped sign, a wrong scale (a missing 1/N
    of a mean), a backward that ignores the upstream gradient (the random g is what exposes the
    last one: with g = 1 it often looks right).
    """
    for i in case.floating:
        numeric = numeric_gradient(case, upstream, i, eps)
        difference = np.abs(analytic[i] - numeric)
        tolerance = atol + rtol * np.abs(numeric)
        if np.any(difference > tolerance):
            worst = np.unravel_index(np.argmax(difference - tolerance), numeric.shape)
            raise GradcheckError(
                f"gradcheck({case.name}): gradient of input {i} (shape {numeric.shape}) is wrong at "
                f"index {tuple(int(k) for k in worst)}: analytic {analytic[i][worst]:.8g}, numeric "
                f"{numeric[worst]:.8g}, |difference| {difference[worst]:.3g} > atol + rtol*|numeric| "
                f"= {tolerance[worst]:.3g} (atol={atol}, rtol={rtol}, eps={eps}); "
                f"{int(np.sum(difference > tolerance))} of {numeric.size} elements fail")


def gradcheck(fn, inputs, *, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              seed: int = 0) -> bool:
    """Check ``fn``'s gradients w.r.t. every floating input; raise GradcheckError if wrong.

    Runs the named checks of this module in order (see the module docstring); the first that
    fails raises.

    Args:
        fn: a function of Tensors returning one Tensor (e.g. ``lambda x, w: F.matmul(x, w)``).
        inputs: Tensors or arrays; floating ones must be float64 and are all checked, integer
            ones (indices) are passed through unchanged.
        eps: the finite-difference step. atol, rtol: pass when |analytic - numeric| <=
            atol + rtol * |numeric| for every element.
        seed: seeds the random upstream gradient.

    Returns True when every check passes.
    """
    case = prepare_case(fn, inputs)
    run = forward_backward(case, seed=seed)
    analytic = check_shapes_and_dtypes(case, run)
    check_no_input_mutation(case, run)
    check_repeatable(case, run, analytic)
    check_against_finite_differences(case, run.upstream, analytic, eps=eps, atol=atol, rtol=rtol)
    return True
