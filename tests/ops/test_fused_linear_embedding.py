"""linear and embedding: gradcheck, agreement with the composed twins, dtypes, bad input."""
import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from tests.ops.twins import assert_keeps_dtype, assert_twins_agree


@pytest.mark.parametrize("x_shape", [(5, 4), (2, 3, 4), (2, 1, 3, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck(x_shape, bias, rng, device):
    x = mm.tensor(rng.standard_normal(x_shape), device=device)
    w = mm.tensor(rng.standard_normal((3, 4)), device=device)
    if bias:
        b = mm.tensor(rng.standard_normal(3), device=device)
        assert mm.gradcheck(lambda x, w, b: F.linear(x, w, b), [x, w, b])
    else:
        assert mm.gradcheck(lambda x, w: F.linear(x, w), [x, w])


def test_linear_composed_gradcheck(rng, device):
    x, w, b = (mm.tensor(rng.standard_normal(s), device=device) for s in [(2, 3, 4), (3, 4), (3,)])
    assert mm.gradcheck(lambda x, w, b: F.linear_composed(x, w, b), [x, w, b])


@pytest.mark.parametrize("bias", [True, False])
def test_linear_agrees_with_composed(bias, rng, device):
    arrays = [rng.standard_normal((2, 5, 6)), rng.standard_normal((7, 6))]
    if bias:
        arrays.append(rng.standard_normal(7))
    assert_twins_agree(F.linear, F.linear_composed, arrays, device)


def test_linear_matches_numpy(rng):
    x, w, b = rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)
    y = F.linear(mm.tensor(x), mm.tensor(w), mm.tensor(b)).numpy()
    np.testing.assert_allclose(y, x @ w.T + b, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_keeps_dtype(dtype, rng, device):
    arrays = [rng.standard_normal((2, 3, 4)), rng.standard_normal((5, 4)), rng.standard_normal(5)]
    assert_keeps_dtype(F.linear, arrays, device, dtype)


def test_linear_only_computes_needed_gradients(rng):
    x = mm.tensor(rng.standard_normal((3, 4)))                       # no grad wanted for x
    w = mm.tensor(rng.standard_normal((2, 4)), requires_grad=True)
    F.linear(x, w).sum().backward()
    assert x.grad is None and w.grad.shape == (2, 4)


def test_linear_bad_input():
    x = mm.tensor(np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"linear: x has shape \(2, 4\).*in_features=3"):
        F.linear(x, mm.tensor(np.ones((5, 3))))
    with pytest.raises(ValueError, match="weight has shape"):
        F.linear(x, mm.tensor(np.ones(4)))
    with pytest.raises(ValueError, match=r"bias has shape \(4,\); expected \(5,\)"):
        F.linear(x, mm.tensor(np.ones((5, 4))), mm.tensor(np.ones(4)))
    with pytest.raises(TypeError, match="dtype"):
        F.linear(x, mm.tensor(np.ones((5, 4), dtype=np.float32)))


# -- embedding ---------------------------------------------------------------------------------
IDS = np.array([[0, 2, 2, 1], [4, 0, 2, 2]])        # repeats: the gradient must accumulate


def test_embedding_gradcheck(rng, device):
    w = mm.tensor(rng.standard_normal((5, 3)), device=device)
    assert mm.gradcheck(lambda w: F.embedding(mm.tensor(IDS, device=device), w), [w])
    assert mm.gradcheck(lambda w: F.embedding_composed(mm.tensor(IDS, device=device), w), [w])


def test_embedding_agrees_with_composed(rng, device):
    assert_twins_agree(lambda ids, w: F.embedding(ids, w), lambda ids, w: F.embedding_composed(ids, w),
                       [IDS, rng.standard_normal((5, 3))], device)


def test_embedding_gradient_accumulates_repeated_ids(rng):
    w = mm.tensor(rng.standard_normal((5, 3)), requires_grad=True)
    F.embedding(IDS, w).sum().backward()
    counts = np.bincount(IDS.ravel(), minlength=5)
    np.testing.assert_allclose(w.grad, np.repeat(counts[:, None], 3, axis=1).astype(float))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_embedding_keeps_dtype(dtype, rng, device):
    assert_keeps_dtype(lambda ids, w: F.embedding(ids, w), [IDS, rng.standard_normal((5, 3))], device, dtype)


def test_embedding_bad_input():
    w = mm.tensor(np.ones((5, 3)))
    with pytest.raises(ValueError, match=r"token id 5 is out of range; expected ids in \[0, 5\)"):
        F.embedding(np.array([1, 5]), w)
    with pytest.raises(ValueError, match="token id -1"):
        F.embedding(np.array([-1, 2]), w)
    with pytest.raises(TypeError, match="integer"):
        F.embedding(np.array([1.0, 2.0]), w)
    with pytest.raises(ValueError, match="2-D"):
        F.embedding(np.array([1]), mm.tensor(np.ones(5)))
