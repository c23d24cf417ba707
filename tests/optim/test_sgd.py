"""SGD against hand-derived values (PyTorch's formulas): plain, decay, momentum, Nesterov."""
import numpy as np
import pytest

import minillm as mm
from minillm.optim import SGD

GRADS = [np.array([0.5, -1.0]), np.array([0.25, 2.0]), np.array([-1.0, 0.5])]
P0 = np.array([1.0, -2.0])


def run_sgd(steps=3, **kwargs):
    p = mm.tensor(P0.copy(), requires_grad=True)
    opt = SGD([p], **kwargs)
    for g in GRADS[:steps]:
        p.grad = g.copy()
        opt.step()
    return p, opt


def test_plain_sgd_steps_against_the_gradient():
    p, opt = run_sgd(lr=0.1)
    np.testing.assert_allclose(p.data, P0 - 0.1 * (GRADS[0] + GRADS[1] + GRADS[2]), rtol=1e-15)
    assert "momentum_buffer" not in opt.state[0]


def test_weight_decay_is_added_to_the_gradient():
    # p1 = p0 - lr (g1 + wd p0)
    p, _ = run_sgd(steps=1, lr=0.1, weight_decay=0.5)
    np.testing.assert_allclose(p.data, P0 - 0.1 * (GRADS[0] + 0.5 * P0), rtol=1e-15)


def test_momentum_buffer_starts_at_the_first_gradient():
    # b1 = g1, b2 = μ b1 + g2, b3 = μ b2 + g3;  p3 = p0 - lr (b1 + b2 + b3)
    mu, lr = 0.9, 0.1
    b1 = GRADS[0]
    b2 = mu * b1 + GRADS[1]
    b3 = mu * b2 + GRADS[2]
    p, opt = run_sgd(lr=lr, momentum=mu)
    np.testing.assert_allclose(p.data, P0 - lr * (b1 + b2 + b3), rtol=1e-14)
    np.testing.assert_allclose(opt.state[0]["momentum_buffer"], b3, rtol=1e-14)


def test_dampening_scales_new_gradients_after_the_first():
    # b1 = g1 (no dampening on the first step, as in PyTorch), b2 = μ b1 + (1 - d) g2
    mu, d, lr = 0.9, 0.25, 0.1
    b1 = GRADS[0]
    b2 = mu * b1 + (1 - d) * GRADS[1]
    p, _ = run_sgd(steps=2, lr=lr, momentum=mu, dampening=d)
    np.testing.assert_allclose(p.data, P0 - lr * (b1 + b2), rtol=1e-14)


def test_nesterov_looks_ahead_along_the_buffer():
    # b1 = g1, p1 = p0 - lr (g1 + μ b1);  b2 = μ b1 + g2, p2 = p1 - lr (g2 + μ b2)
    mu, lr = 0.9, 0.1
    b1 = GRADS[0]
    p1 = P0 - lr * (GRADS[0] + mu * b1)
    b2 = mu * b1 + GRADS[1]
    p2 = p1 - lr * (GRADS[1] + mu * b2)
    p, _ = run_sgd(steps=2, lr=lr, momentum=mu, nesterov=True)
    np.testing.assert_allclose(p.data, p2, rtol=1e-14)


def test_nesterov_with_weight_decay():
    # d1 = g1 + wd p0, b1 = d1, p1 = p0 - lr (d1 + μ b1);  d2 = g2 + wd p1, b2 = μ b1 + d2, ...
    mu, lr, wd = 0.5, 0.2, 0.1
    d1 = GRADS[0] + wd * P0
    p1 = P0 - lr * (d1 + mu * d1)
    d2 = GRADS[1] + wd * p1
    b2 = mu * d1 + d2
    p2 = p1 - lr * (d2 + mu * b2)
    p, _ = run_sgd(steps=2, lr=lr, momentum=mu, nesterov=True, weight_decay=wd)
    np.testing.assert_allclose(p.data, p2, rtol=1e-14)


def test_momentum_buffer_is_a_copy_and_grads_are_not_written():
    g = np.array([1.0, 2.0])
    p = mm.tensor(P0.copy(), requires_grad=True)
    opt = SGD([p], lr=0.1, momentum=0.9, weight_decay=0.1)
    p.grad = g
    opt.step()
    opt.step()
    assert opt.state[0]["momentum_buffer"] is not g
    np.testing.assert_array_equal(g, [1.0, 2.0])


def test_momentum_switched_on_later_creates_the_buffer_then():
    p = mm.tensor(P0.copy(), requires_grad=True)
    opt = SGD([p], lr=0.1)
    p.grad = GRADS[0].copy()
    opt.step()
    opt.param_groups[0]["momentum"] = 0.9
    opt.load_state_dict(opt.state_dict())    # a state saved in between still loads
    p.grad = GRADS[1].copy()
    opt.step()
    np.testing.assert_allclose(opt.state[0]["momentum_buffer"], GRADS[1], rtol=1e-15)


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"lr": -0.1}, ValueError, "lr=-0.1"),
    ({"lr": 0.1, "momentum": -0.5}, ValueError, "momentum=-0.5"),
    ({"lr": 0.1, "weight_decay": -1}, ValueError, "weight_decay=-1.0"),
    ({"lr": 0.1, "dampening": 1.5}, ValueError, "dampening=1.5"),
    ({"lr": 0.1, "nesterov": True}, ValueError, "momentum=0.0"),
    ({"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}, ValueError, "dampening=0.1"),
    ({"lr": 0.1, "nesterov": 1}, TypeError, "nesterov=1"),
])
def test_bad_hyperparameters_raise_naming_the_argument(kwargs, error, fragment):
    with pytest.raises(error, match="SGD") as info:
        SGD([mm.tensor(P0.copy(), requires_grad=True)], **kwargs)
    assert fragment in str(info.value)
