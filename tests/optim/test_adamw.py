"""AdamW against hand-derived values (PyTorch's formulas), state handling and validation."""
import math

import numpy as np
import pytest

import minillm as mm
from minillm.optim import AdamW


def make_param(values, dtype=np.float64):
    return mm.tensor(np.array(values, dtype=dtype), requires_grad=True)


def test_first_step_has_closed_form():
    # From m = v = 0: m = (1-β1) g, v = (1-β2) g², so m̂ = g and v̂ = g², and the first step is
    #     p1 = p0 (1 - lr wd) - lr g / (|g| + eps)
    lr, wd, eps = 0.1, 0.2, 1e-3
    p0 = np.array([1.0, -2.0, 0.5, 3.0])
    g = np.array([0.5, -4.0, 1e-3, 0.0])   # |g| = eps gives half a step; g = 0 gives none
    p = make_param(p0)
    p.grad = g.copy()
    AdamW([p], lr=lr, betas=(0.8, 0.99), eps=eps, weight_decay=wd).step()
    expected = p0 * (1 - lr * wd) - lr * g / (np.abs(g) + eps)
    np.testing.assert_allclose(p.data, expected, rtol=1e-14, atol=1e-15)
    assert expected[2] == pytest.approx(0.5 * 0.98 - 0.05)


def test_two_steps_worked_by_hand():
    # lr 0.1, betas (0.9, 0.999), eps 1e-8, wd 0.1; p0 = 1, g1 = 0.5, g2 = -0.25.
    # step 1: p = 1 * (1 - 0.01) = 0.99;  m = 0.05, v = 0.001 * 0.25 = 0.00025
    #         m̂ = 0.05 / 0.1 = 0.5, v̂ = 0.00025 / 0.001 = 0.25, √v̂ = 0.5
    #         p = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8)
    p1 = 0.99 - 0.1 * 0.5 / (0.5 + 1e-8)
    # step 2: p = p1 * 0.99;  m = 0.9 * 0.05 + 0.1 * (-0.25) = 0.02
    #         v = 0.999 * 0.00025 + 0.001 * 0.0625 = 0.00031225
    #         1 - β1² = 0.19, 1 - β2² = 0.001999
    p2 = p1 * 0.99 - 0.1 * (0.02 / 0.19) / (math.sqrt(0.00031225 / 0.001999) + 1e-8)
    p = make_param([1.0])
    opt = AdamW([p], lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    p.grad = np.array([0.5])
    opt.step()
    assert p.data[0] == pytest.approx(p1, rel=1e-14)
    p.grad = np.array([-0.25])
    opt.step()
    assert p.data[0] == pytest.approx(p2, rel=1e-13)
    assert opt.state[0]["exp_avg"][0] == pytest.approx(0.02, rel=1e-14)
    assert opt.state[0]["exp_avg_sq"][0] == pytest.approx(0.00031225, rel=1e-13)
    assert opt.state[0]["step"] == 2


def test_constant_gradient_moves_lr_per_step_thanks_to_bias_correction():
    # With a constant g: m_t = (1 - β1^t) g and v_t = (1 - β2^t) g², so m̂ = g and v̂ = g² at
    # every step: each step moves by lr g / (|g| + eps) exactly (wd = 0).
    p0, g, lr, eps = np.array([0.3, -0.7]), np.array([2.0, -0.5]), 0.01, 1e-8
    p = make_param(p0)
    opt = AdamW([p], lr=lr, betas=(0.9, 0.95), eps=eps, weight_decay=0.0)
    for _ in range(7):
        p.grad = g.copy()
        opt.step()
    np.testing.assert_allclose(p.data, p0 - 7 * lr * g / (np.abs(g) + eps), rtol=1e-12)


def test_weight_decay_is_decoupled_from_the_moments():
    # A zero gradient leaves m = v = 0, so only the decoupled decay acts: p_k = p0 (1 - lr wd)^k.
    # (L2-style decay, g + wd p, would feed the moments and move p by about lr per step.)
    p0 = np.array([1.0, -3.0])
    p = make_param(p0)
    opt = AdamW([p], lr=0.05, weight_decay=0.5)
    for _ in range(4):
        p.grad = np.zeros(2)
        opt.step()
    np.testing.assert_allclose(p.data, p0 * (1 - 0.05 * 0.5) ** 4, rtol=1e-14)
    assert not opt.state[0]["exp_avg"].any() and not opt.state[0]["exp_avg_sq"].any()


def test_parameters_without_grad_are_skipped_and_keep_their_own_step_count():
    a, b = make_param([1.0]), make_param([2.0])
    opt = AdamW([a, b], lr=0.1, eps=1e-8, weight_decay=0.0)
    a.grad = np.array([1.0])
    opt.step()                          # b has no grad: untouched, no state
    assert b.data[0] == 2.0 and 1 not in opt.state
    a.grad, b.grad = np.array([1.0]), np.array([-3.0])
    opt.step()
    # b's first update uses t = 1 (the first-step closed form), not t = 2.
    assert b.data[0] == pytest.approx(2.0 + 0.1 * 3.0 / (3.0 + 1e-8), rel=1e-14)
    assert opt.state[0]["step"] == 2 and opt.state[1]["step"] == 1


def test_zero_lr_changes_nothing_but_advances_the_state():
    p = make_param([1.0, 2.0])
    opt = AdamW([p], lr=0.0, weight_decay=0.1)
    p.grad = np.array([1.0, 1.0])
    opt.step()
    np.testing.assert_array_equal(p.data, [1.0, 2.0])
    assert opt.state[0]["step"] == 1 and opt.state[0]["exp_avg"][0] == pytest.approx(0.1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameters_and_state_keep_their_dtype(dtype):
    p = make_param([[1.0, 2.0], [3.0, 4.0]], dtype=dtype)
    data_before = p.data
    opt = AdamW([p], lr=1e-2)
    for _ in range(2):
        p.grad = np.full((2, 2), 0.5, dtype=dtype)
        opt.step()
    assert p.data is data_before and p.data.dtype == dtype      # updated in place
    assert opt.state[0]["exp_avg"].dtype == dtype and opt.state[0]["exp_avg_sq"].dtype == dtype


def test_grads_are_never_written_to_even_when_shared():
    # The engine may give two tensors the same gradient array; the step must only read it.
    shared = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    frozen = shared.copy()
    a, b = make_param([1.0, 1.0, 1.0], np.float32), make_param([1.0, 1.0, 1.0], np.float32)
    a.grad = b.grad = shared
    opt = AdamW([a, b], lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.step()
    np.testing.assert_array_equal(shared, frozen)
    assert a.grad is shared and b.grad is shared
    np.testing.assert_array_equal(a.data, b.data)
    assert opt.state[0]["exp_avg"] is not opt.state[1]["exp_avg"]


def test_matches_after_real_backward():
    # Gradients produced by the engine (not assigned by hand) drive the same update.
    w = make_param([[1.0, -1.0], [0.5, 2.0]])
    x = mm.tensor(np.array([[1.0, 2.0]]))
    (x @ w).sum().backward()
    g = w.grad.copy()                                   # d/dw sum(x @ w) = x^T 1
    np.testing.assert_array_equal(g, [[1.0, 1.0], [2.0, 2.0]])
    AdamW([w], lr=0.1, eps=1e-8, weight_decay=0.0).step()
    np.testing.assert_allclose(w.data, [[0.9, -1.1], [0.4, 1.9]], rtol=1e-7)


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"lr": -1e-3}, ValueError, "lr=-0.001"),
    ({"lr": float("nan")}, ValueError, "lr=nan"),
    ({"lr": float("inf")}, ValueError, "lr=inf"),
    ({"lr": "0.1"}, TypeError, "lr='0.1'"),
    ({"lr": True}, TypeError, "lr=True"),
    ({"betas": (1.0, 0.999)}, ValueError, "betas[0]=1.0"),
    ({"betas": (0.9, -0.1)}, ValueError, "betas[1]=-0.1"),
    ({"betas": (0.9,)}, ValueError, "betas=(0.9,)"),
    ({"betas": 0.9}, ValueError, "betas=0.9"),
    ({"eps": 0.0}, ValueError, "eps=0.0"),
    ({"weight_decay": -0.01}, ValueError, "weight_decay=-0.01"),
])
def test_bad_hyperparameters_raise_naming_the_argument(kwargs, error, fragment):
    with pytest.raises(error, match="AdamW") as info:
        AdamW([make_param([1.0])], **kwargs)
    assert fragment in str(info.value)


def test_bad_hyperparameter_in_a_param_group_raises():
    with pytest.raises(ValueError, match=r"weight_decay=-1\.0"):
        AdamW([{"params": [make_param([1.0])], "weight_decay": -1.0}])


def test_numpy_scalar_hyperparameters_become_python_floats():
    # float32 scalars would make float64 params compute in float32 under NumPy 2 rules, and
    # would not serialise to JSON; they are converted once.
    opt = AdamW([make_param([1.0])], lr=np.float32(0.5), betas=(np.float64(0.9), 0.99))
    group = opt.param_groups[0]
    assert type(group["lr"]) is float and group["lr"] == 0.5
    assert group["betas"] == (0.9, 0.99) and type(group["betas"][0]) is float
