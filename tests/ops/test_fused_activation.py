"""Fused activations of the feed-forward (gelu, silu, swiglu): gradcheck, agreement with the
composed twins, dtypes, bad input."""
import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from tests.ops.twins import assert_keeps_dtype, assert_twins_agree


def test_swiglu_gradcheck(rng, device):
    a, b = (mm.tensor(rng.standard_normal((2, 3, 4)) * 2, device=device) for _ in range(2))
    assert mm.gradcheck(lambda a, b: F.swiglu(a, b), [a, b])
    assert mm.gradcheck(lambda a, b: F.swiglu_composed(a, b), [a, b])


def test_swiglu_values(rng):
    a, b = rng.standard_normal((3, 5)) * 4, rng.standard_normal((3, 5))
    expected = a / (1 + np.exp(-a)) * b
    np.testing.assert_allclose(F.swiglu(mm.tensor(a), mm.tensor(b)).numpy(), expected, rtol=1e-12)


@pytest.mark.parametrize("name", ["swiglu", "gelu", "silu"])
def test_fused_activation_agrees_with_composed(name, rng, device):
    x = rng.standard_normal((3, 4, 5)) * 3
    if name == "swiglu":
        assert_twins_agree(F.swiglu, F.swiglu_composed, [x, rng.standard_normal((3, 4, 5))], device)
    elif name == "gelu":
        assert_twins_agree(F.gelu, F.gelu_composed, [x], device)
    else:
        assert_twins_agree(F.silu, F.silu_composed, [x], device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_activations_keep_dtype(dtype, rng, device):
    x = rng.standard_normal((2, 6))
    assert_keeps_dtype(F.swiglu, [x, rng.standard_normal((2, 6))], device, dtype)
    assert_keeps_dtype(F.gelu, [x], device, dtype)
    assert_keeps_dtype(F.silu, [x], device, dtype)


def test_swiglu_is_stable_for_large_gates():
    a = mm.tensor(np.array([-1e4, 1e4, 0.0], dtype=np.float32), requires_grad=True)
    b = mm.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
    y = F.swiglu(a, b)
    y.sum().backward()
    np.testing.assert_allclose(y.numpy(), [0, 1e4, 0], atol=1e-3)
    assert np.isfinite(a.grad).all() and np.isfinite(b.grad).all()


def test_swiglu_bad_input():
    with pytest.raises(ValueError, match="expected equal shapes"):
        F.swiglu(mm.tensor(np.ones((2, 3))), mm.tensor(np.ones((3, 2))))
    with pytest.raises(TypeError, match="dtype"):
        F.swiglu(mm.tensor(np.ones(2)), mm.tensor(np.ones(2, dtype=np.float32)))


def test_gelu_backward_in_blocks_matches_composed(rng, device, monkeypatch):
    """GELU's backward works in flat blocks; blocks of 7 elements (the last one partial), on a
    transposed (non-contiguous) input, must agree with the composed twin."""
    from minillm.ops import activation

    monkeypatch.setattr(activation, "_ELEMENTWISE_BLOCK", 7)

    def fused(x):
        return F.gelu(F.transpose(x, (1, 0, 2)))

    def composed(x):
        return F.gelu_composed(F.transpose(x, (1, 0, 2)))

    assert_twins_agree(fused, composed, [rng.standard_normal((3, 4, 5)) * 3], device)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["gelu", "gelu_erf", "silu", "swiglu", "logsigmoid"])
def test_activations_of_an_empty_tensor(name, dtype, device):
    """A (0, 4) input gives a (0, 4) output and a (0, 4) gradient (the blocked backward loops
    zero times instead of failing on a zero block size)."""
    x = mm.tensor(np.zeros((0, 4), dtype=dtype), requires_grad=True, device=device)
    y = {"gelu": lambda: F.gelu(x), "gelu_erf": lambda: F.gelu(x, approximate="none"),
         "silu": lambda: F.silu(x), "swiglu": lambda: F.swiglu(x, x), "logsigmoid": lambda: F.logsigmoid(x)}[name]()
    y.sum().backward()
    assert y.shape == (0, 4) and y.dtype == dtype
    assert x.grad.shape == (0, 4) and x.grad.dtype == dtype
