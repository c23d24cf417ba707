"""Forward values against independent NumPy computations; stability; dtype preservation."""
import math

import numpy as np
import pytest

import minillm as mm
from minillm import functional as F
from tests.core.op_cases import CASES

rng = np.random.default_rng(5)
A = rng.standard_normal((3, 4))
B = rng.standard_normal((3, 4))
P = rng.uniform(0.5, 2.0, (3, 4))


def t(a):
    return mm.tensor(a)


FORWARD = [
    ("add", lambda: F.add(t(A), t(B[0])), A + B[0]),
    ("sub", lambda: F.sub(t(A), t(B)), A - B),
    ("mul", lambda: F.mul(t(A), t(B)), A * B),
    ("div", lambda: F.div(t(A), t(P)), A / P),
    ("neg", lambda: F.neg(t(A)), -A),
    ("pow", lambda: F.pow(t(P), t(B)), P ** B),
    ("exp", lambda: F.exp(t(A)), np.exp(A)),
    ("log", lambda: F.log(t(P)), np.log(P)),
    ("sqrt", lambda: F.sqrt(t(P)), np.sqrt(P)),
    ("abs", lambda: F.abs(t(A)), np.abs(A)),
    ("maximum", lambda: F.maximum(t(A), t(B)), np.maximum(A, B)),
    ("minimum", lambda: F.minimum(t(A), t(B)), np.minimum(A, B)),
    ("clip", lambda: F.clip(t(A), -0.5, 0.5), np.clip(A, -0.5, 0.5)),
    ("where", lambda: F.where(A > 0, t(A), t(B)), np.where(A > 0, A, B)),
    ("sum", lambda: F.sum(t(A), axis=0), A.sum(0)),
    ("mean", lambda: F.mean(t(A), axis=1, keepdims=True), A.mean(1, keepdims=True)),
    ("max", lambda: F.max(t(A), axis=1), A.max(1)),
    ("var", lambda: F.var(t(A), axis=1), A.var(1, ddof=1)),
    ("reshape", lambda: F.reshape(t(A), (2, 6)), A.reshape(2, 6)),
    ("transpose", lambda: F.transpose(t(A)), A.T),
    ("broadcast_to", lambda: F.broadcast_to(t(A[0]), (2, 4)), np.broadcast_to(A[0], (2, 4))),
    ("getitem", lambda: t(A)[np.array([2, 0]), 1:], A[[2, 0], 1:]),
    ("concatenate", lambda: F.concatenate([t(A), t(B)], axis=1), np.concatenate([A, B], 1)),
    ("stack", lambda: F.stack([t(A), t(B)]), np.stack([A, B])),
    ("matmul", lambda: F.matmul(t(A), t(B.T)), A @ B.T),
    ("relu", lambda: F.relu(t(A)), np.maximum(A, 0)),
    ("tanh", lambda: F.tanh(t(A)), np.tanh(A)),
    ("sigmoid", lambda: F.sigmoid(t(A)), 1 / (1 + np.exp(-A))),
    ("silu", lambda: F.silu(t(A)), A / (1 + np.exp(-A))),
    ("gelu-exact", lambda: F.gelu(t(A), approximate="none"),
     np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in A.ravel()]).reshape(A.shape)),
    ("gelu-tanh", lambda: F.gelu(t(A)),
     0.5 * A * (1 + np.tanh(math.sqrt(2 / math.pi) * (A + 0.044715 * A ** 3)))),
    ("softmax", lambda: F.softmax(t(A)), np.exp(A) / np.exp(A).sum(-1, keepdims=True)),
    ("log_softmax", lambda: F.log_softmax(t(A)), A - np.log(np.exp(A).sum(-1, keepdims=True))),
]


@pytest.mark.parametrize("name, compute, expected", FORWARD, ids=[f[0] for f in FORWARD])
def test_forward_matches_numpy(name, compute, expected):
    np.testing.assert_allclose(compute().numpy(), expected, rtol=1e-12, atol=1e-12)


def test_split_returns_the_pieces():
    parts = F.split(mm.tensor(A), [1, 3], axis=1)
    np.testing.assert_array_equal(parts[0].numpy(), A[:, :1])
    np.testing.assert_array_equal(parts[1].numpy(), A[:, 1:])


@pytest.mark.parametrize("op", [F.softmax, F.log_softmax, F.softmax_composed, F.log_softmax_composed])
def test_softmax_family_is_finite_at_extreme_inputs(op):
    x = mm.tensor(np.array([[1000.0, -1000.0, 999.0], [-1000.0, -1000.0, -1000.0]], dtype=np.float32),
                  requires_grad=True)
    y = op(x)
    assert np.all(np.isfinite(y.numpy()))
    y.backward(np.ones((2, 3), dtype=np.float32))
    assert np.all(np.isfinite(x.grad))


def test_dropout_scales_kept_values_and_is_identity_in_eval():
    mm.manual_seed(0)
    x = mm.tensor(np.ones((200, 50), dtype=np.float32))
    y = F.dropout(x, p=0.25).numpy()
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    assert F.dropout(x, p=0.25, training=False) is x
    with pytest.raises(ValueError, match="p=1.5"):
        F.dropout(x, p=1.5)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_float32_in_float32_out_and_float32_gradients(case):
    if case.op == "cast":
        x = mm.tensor(np.ones(3, dtype=np.float32), requires_grad=True)
        y = F.cast(x, np.float64)
        assert y.dtype == np.float64
        y.sum().backward()
        assert x.grad.dtype == np.float32
        return
    arrays = [a.astype(np.float32) for a in case.inputs(np.random.default_rng(0))]
    tensors = [mm.tensor(a, requires_grad=True) for a in arrays]
    out = case.fn(*tensors)
    assert out.dtype == np.float32, f"{case.id} returned {out.dtype}"
    out.backward(np.ones(out.shape, dtype=np.float32))
    for x in tensors:
        assert x.grad is None or x.grad.dtype == np.float32
