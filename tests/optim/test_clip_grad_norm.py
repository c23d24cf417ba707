"""clip_grad_norm_: the global L2 norm, out-of-place scaling, non-finite norms, validation."""
import math

import numpy as np
import pytest

import minillm as mm
from minillm.optim import clip_grad_norm_


def params_with_grads(*grads, dtype=np.float32):
    params = []
    for g in grads:
        p = mm.tensor(np.zeros(np.shape(g), dtype=dtype), requires_grad=True)
        p.grad = None if g is None else np.array(g, dtype=dtype)
        params.append(p)
    return params


def test_norm_spans_all_parameters_and_scales_them_together():
    # grads (3, 4) and (12): norm = sqrt(9 + 16 + 144) = 13; max_norm 6.5 -> factor 6.5 / (13 + eps)
    a, b = params_with_grads([3.0, 4.0], [[12.0]])
    old_a, old_b = a.grad, b.grad
    norm = clip_grad_norm_([a, b], max_norm=6.5)
    assert type(norm) is float and norm == pytest.approx(13.0, rel=1e-7)
    factor = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(a.grad, [3.0 * factor, 4.0 * factor], rtol=1e-6)
    np.testing.assert_allclose(b.grad, [[12.0 * factor]], rtol=1e-6)
    assert a.grad.dtype == np.float32
    # Out of place: new arrays, the old ones untouched (they may be shared with other tensors).
    assert a.grad is not old_a and b.grad is not old_b
    np.testing.assert_array_equal(old_a, [3.0, 4.0])
    np.testing.assert_array_equal(old_b, [[12.0]])


def test_norm_below_the_limit_leaves_grads_alone():
    (p,) = params_with_grads([0.6, 0.8])
    before = p.grad
    assert clip_grad_norm_([p], max_norm=1.5) == pytest.approx(1.0, rel=1e-7)
    assert p.grad is before


def test_parameters_without_grad_are_ignored():
    a, b = params_with_grads([1.0, 2.0, 2.0], None)
    assert clip_grad_norm_(iter([a, b]), max_norm=1.0) == pytest.approx(3.0, rel=1e-7)
    assert b.grad is None
    assert clip_grad_norm_([b], max_norm=1.0) == 0.0


def test_a_single_tensor_is_accepted():
    (p,) = params_with_grads([[6.0, 8.0]])
    assert clip_grad_norm_(p, 5.0, eps=0.0) == pytest.approx(10.0, rel=1e-7)
    np.testing.assert_allclose(p.grad, [[3.0, 4.0]], rtol=1e-6)


def test_infinite_max_norm_only_measures():
    (p,) = params_with_grads([1e3, 1e3])
    before = p.grad
    assert clip_grad_norm_([p], float("inf")) == pytest.approx(math.sqrt(2e6), rel=1e-7)
    assert p.grad is before


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_norm_is_returned_without_scaling(bad):
    a, b = params_with_grads([1.0, bad], [2.0])
    old_a, old_b = a.grad, b.grad
    norm = clip_grad_norm_([a, b], max_norm=1.0)
    assert (math.isnan(norm) if math.isnan(bad) else norm == math.inf)
    assert a.grad is old_a and b.grad is old_b


def test_half_precision_grads_do_not_overflow():
    # 300² = 90000 overflows float16 (max 65504); the squares are taken in float32.
    (p,) = params_with_grads([300.0, 400.0], dtype=np.float16)
    assert clip_grad_norm_([p], max_norm=50.0) == pytest.approx(500.0, rel=1e-6)
    assert p.grad.dtype == np.float16
    np.testing.assert_allclose(p.grad.astype(np.float32), [30.0, 40.0], rtol=1e-3)


def test_float32_accumulation_is_accurate_for_many_elements():
    # 2**20 elements of 0.1: norm = 0.1 * 2**10 = 102.4 exactly in real arithmetic.
    (p,) = params_with_grads(np.full(2 ** 20, 0.1))
    assert clip_grad_norm_([p], float("inf")) == pytest.approx(102.4, rel=1e-6)


@pytest.mark.parametrize("max_norm, error", [
    (0.0, ValueError), (-1.0, ValueError), (float("nan"), ValueError), ("1", TypeError),
    (None, TypeError), (True, TypeError),
])
def test_bad_max_norm_raises(max_norm, error):
    (p,) = params_with_grads([1.0])
    with pytest.raises(error, match="max_norm="):
        clip_grad_norm_([p], max_norm)


def test_bad_eps_and_items_raise():
    (p,) = params_with_grads([1.0])
    with pytest.raises(ValueError, match="eps=-1.0"):
        clip_grad_norm_([p], 1.0, eps=-1.0)
    with pytest.raises(TypeError, match="item 1 is a ndarray"):
        clip_grad_norm_([p, np.ones(2)], 1.0)
