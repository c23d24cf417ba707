"""layer_norm and rms_norm: gradcheck, agreement with the composed twins, dtypes, bad input."""
import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from tests.ops.twins import assert_keeps_dtype, assert_twins_agree


def _inputs(rng, shape, bias=True):
    c = shape[-1]
    arrays = [rng.standard_normal(shape) * 2 + 0.5, rng.standard_normal(c)]
    if bias:
        arrays.append(rng.standard_normal(c))
    return arrays


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_gradcheck(shape, bias, rng, device):
    tensors = [mm.tensor(a, device=device) for a in _inputs(rng, shape, bias)]
    assert mm.gradcheck(lambda *t: F.layer_norm(*t, eps=1e-5), tensors)
    assert mm.gradcheck(lambda *t: F.layer_norm_composed(*t, eps=1e-5), tensors)


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5)])
def test_rms_norm_gradcheck(shape, rng, device):
    tensors = [mm.tensor(a, device=device) for a in _inputs(rng, shape, bias=False)]
    assert mm.gradcheck(lambda x, w: F.rms_norm(x, w), tensors)
    assert mm.gradcheck(lambda x, w: F.rms_norm_composed(x, w), tensors)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_agrees_with_composed(bias, rng, device):
    assert_twins_agree(F.layer_norm, F.layer_norm_composed, _inputs(rng, (3, 4, 8), bias), device)


def test_rms_norm_agrees_with_composed(rng, device):
    assert_twins_agree(F.rms_norm, F.rms_norm_composed, _inputs(rng, (3, 4, 8), False), device)


def test_layer_norm_normalises_rows(rng):
    x = rng.standard_normal((6, 16)) * 3 + 2
    y = F.layer_norm(mm.tensor(x), mm.tensor(np.ones(16)), mm.tensor(np.zeros(16)), eps=1e-12).numpy()
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1, rtol=1e-9)
    y = F.rms_norm(mm.tensor(x), mm.tensor(np.ones(16)), eps=1e-12).numpy()
    np.testing.assert_allclose((y * y).mean(-1), 1, rtol=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_norms_keep_dtype(dtype, rng, device):
    assert_keeps_dtype(F.layer_norm, _inputs(rng, (2, 3, 8)), device, dtype)
    assert_keeps_dtype(F.rms_norm, _inputs(rng, (2, 3, 8), bias=False), device, dtype)


def test_layer_norm_gradient_is_accurate_in_float32(rng):
    """float32 fused vs float64 reference: the hand-derived backward loses no precision."""
    arrays = _inputs(rng, (4, 64))
    ref = [mm.tensor(a, requires_grad=True) for a in arrays]
    f32 = [mm.tensor(a.astype(np.float32), requires_grad=True) for a in arrays]
    g = rng.standard_normal((4, 64))
    F.layer_norm(*ref).backward(g)
    F.layer_norm(*f32).backward(g.astype(np.float32))
    for a, b in zip(ref, f32):
        np.testing.assert_allclose(b.grad, a.grad, rtol=1e-3, atol=1e-4)


def test_norm_bad_input():
    x = mm.tensor(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"layer_norm: weight has shape \(3,\).*expected \(C,\)"):
        F.layer_norm(x, mm.tensor(np.ones(3)))
    with pytest.raises(ValueError, match=r"bias has shape \(2,\)"):
        F.layer_norm(x, mm.tensor(np.ones(4)), mm.tensor(np.ones(2)))
    with pytest.raises(ValueError, match="eps=0"):
        F.rms_norm(x, mm.tensor(np.ones(4)), eps=0)
    with pytest.raises(TypeError, match="dtype"):
        F.rms_norm(x, mm.tensor(np.ones(4, dtype=np.float32)))
