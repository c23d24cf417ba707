"""gradcheck must fail on deliberately broken ops, with a message that locates the error."""
import numpy as np
import pytest

import minillm as mm
from minillm.autograd import Function
from minillm.backend import get_array_module


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
