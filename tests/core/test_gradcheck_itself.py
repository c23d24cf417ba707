"""gradcheck must fail on deliberately broken ops, with a message that locates the error; each
of its named checks catches the breakage it is named for, and the checks before it do not."""
import numpy as np
import pytest

import minillm as mm
from minillm.autograd import Function
from minillm.backend import get_array_module, to_numpy
from minillm.debug import (
    check_against_finite_differences,
    check_no_input_mutation,
    check_repeatable,
    check_shapes_and_dtypes,
    forward_backward,
    prepare_case,
)


class GoodExp(Function):
    def forward(self, x):
        self.y = get_array_module(x).exp(x)
        return self.y

    def backward(self, gy):
        return gy * self.y


class ZeroBackward(GoodExp):
    def backward(self, gy):
        return gy * 0


class IgnoresUpstream(GoodExp):
    def backward(self, gy):
        return self.y.copy()          # as if gy were all ones


class FlippedSign(GoodExp):
    def backward(self, gy):
        return -gy * self.y


class MutatesInput(GoodExp):
    def forward(self, x):
        y = super().forward(x)
        x *= 1.0001
        return y


class NotRepeatable(GoodExp):
    calls = 0

    def backward(self, gy):
        NotRepeatable.calls += 1
        return gy * self.y * (1 + NotRepeatable.calls)


class LosesPrecision(GoodExp):
    """Computes in float32 for float64 inputs; backward hands float64 back, so the engine's
    per-op gradient check passes and only the output's dtype shows the lost digits."""

    def forward(self, x):
        self.y = get_array_module(x).exp(x.astype(np.float32))
        return self.y

    def backward(self, gy):
        return (gy * self.y).astype(np.float64)


def exp_with_hook(replace):
    """exp whose input carries a tensor hook that swaps its gradient for ``replace(gradient)``:
    hooks run after the engine's shape/dtype check, so only gradcheck can see the result."""
    return lambda x: GoodExp().apply(x.register_hook(lambda g: replace(g.data)))


class SoftmaxMissingTerm(Function):
    """softmax whose backward forgets to multiply by y: gy - Σ(gy·y). With an all-ones upstream
    gradient it returns 1 - Σy = 0, the right answer (rows sum to one); a random one exposes it."""

    def forward(self, x):
        xp = get_array_module(x)
        e = xp.exp(x - x.max(axis=-1, keepdims=True))
        self.y = e / e.sum(axis=-1, keepdims=True)
        return self.y

    def backward(self, gy):
        return gy - (gy * self.y).sum(axis=-1, keepdims=True)


def _x():
    return mm.tensor(np.random.default_rng(0).standard_normal((3, 4)))


def test_a_correct_op_passes():
    assert mm.gradcheck(lambda x: GoodExp().apply(x), [_x()])


@pytest.mark.parametrize("broken, message", [
    (LosesPrecision, "output dtype is float32"),
    (ZeroBackward, "gradient of input 0"),
    (IgnoresUpstream, "gradient of input 0"),
    (FlippedSign, "gradient of input 0"),
    (SoftmaxMissingTerm, "gradient of input 0"),
    (MutatesInput, "modified in place"),
    (NotRepeatable, "not repeatable"),
])
def test_broken_ops_fail(broken, message):
    with pytest.raises(mm.GradcheckError, match=message):
        mm.gradcheck(lambda x: broken().apply(x), [_x()])


def test_the_failure_names_index_values_and_tolerances():
    with pytest.raises(mm.GradcheckError) as info:
        mm.gradcheck(lambda x: FlippedSign().apply(x), [_x()])
    text = str(info.value)
    for word in ("index (", "analytic", "numeric", "atol=", "rtol=", "elements fail"):
        assert word in text


def test_float32_inputs_are_refused():
    with pytest.raises(mm.GradcheckError, match="float32"):
        mm.gradcheck(lambda x: GoodExp().apply(x), [_x().astype(np.float32).detach()])


def test_integer_inputs_are_passed_through_and_not_checked():
    idx = mm.tensor(np.array([2, 0, 2]))
    assert mm.gradcheck(lambda x, i: x[i], [_x(), idx])


def test_the_missing_term_bug_hides_under_an_all_ones_upstream_gradient():
    x = _x()
    leaf = mm.tensor(x.numpy(), requires_grad=True)
    SoftmaxMissingTerm().apply(leaf).backward(np.ones((3, 4)))
    np.testing.assert_allclose(leaf.grad, 0.0, atol=1e-12)   # looks right ...
    with pytest.raises(mm.GradcheckError):                  # ... but is not
        mm.gradcheck(lambda t: SoftmaxMissingTerm().apply(t), [x])


def test_gradient_shape_and_dtype_are_checked_on_the_leaf():
    with pytest.raises(mm.GradcheckError, match=r"gradient of input 0 has shape \(4,\) and dtype float64; "
                                                r"expected \(3, 4\) and float64"):
        mm.gradcheck(exp_with_hook(lambda g: g.sum(axis=0)), [_x()])
    with pytest.raises(mm.GradcheckError, match=r"shape \(3, 4\) and dtype float32; expected \(3, 4\) and float64"):
        mm.gradcheck(exp_with_hook(lambda g: g.astype(np.float32)), [_x()])


# The named checks in gradcheck's order, each called the way gradcheck calls it.
NAMED_CHECKS = [
    ("shapes and dtypes", lambda case, run, analytic: check_shapes_and_dtypes(case, run)),
    ("no input mutation", lambda case, run, analytic: check_no_input_mutation(case, run)),
    ("repeatable", lambda case, run, analytic: check_repeatable(case, run, analytic)),
    ("finite differences", lambda case, run, analytic: check_against_finite_differences(case, run.upstream, analytic)),
]


@pytest.mark.parametrize("fn, catching_check, message", [
    (lambda x: LosesPrecision().apply(x), "shapes and dtypes", "output dtype is float32"),
    (exp_with_hook(lambda g: g.sum(axis=0)), "shapes and dtypes", "gradient of input 0 has shape"),
    (lambda x: MutatesInput().apply(x), "no input mutation", "input 0 was modified in place"),
    (lambda x: NotRepeatable().apply(x), "repeatable", "backward is not repeatable for input 0"),
    (lambda x: FlippedSign().apply(x), "finite differences", "gradient of input 0 .* is wrong at index"),
    (lambda x: IgnoresUpstream().apply(x), "finite differences", "gradient of input 0 .* is wrong at index"),
], ids=["float32-output", "hook-shape", "mutates", "not-repeatable", "flipped-sign", "ignores-upstream"])
def test_each_named_check_catches_its_broken_op_and_the_earlier_ones_pass_it(fn, catching_check, message):
    case = prepare_case(fn, [_x()])
    run = forward_backward(case, seed=0)
    analytic = None
    for name, check in NAMED_CHECKS:
        if name == catching_check:
            with pytest.raises(mm.GradcheckError, match=message):
                check(case, run, analytic)
            return
        result = check(case, run, analytic)    # an earlier check: must not object
        if name == "shapes and dtypes":
            analytic = result
    raise AssertionError(f"no named check is called {catching_check!r}")


def test_a_correct_op_passes_every_named_check_and_gets_host_gradients():
    case = prepare_case(lambda x: GoodExp().apply(x), [_x()])
    run = forward_backward(case, seed=0)
    analytic = check_shapes_and_dtypes(case, run)
    np.testing.assert_allclose(analytic[0], np.exp(_x().numpy()) * to_numpy(run.upstream))
    check_no_input_mutation(case, run)
    check_repeatable(case, run, analytic)
    check_against_finite_differences(case, run.upstream, analytic)
