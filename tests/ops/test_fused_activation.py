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


def _gelu_gradient(x, gy, gate_from_output):
    from minillm.ops.activation import GELU

    op = GELU("tanh", gate_from_output=gate_from_output)
    y = op.forward(x)
    return y, op.backward(gy)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_gelu_gate_read_back_from_the_output_matches_the_recomputed_gate(dtype, rng):
    # u = y / x against u recomputed from x, at exact zeros, tiny and subnormal inputs (where u
    # is taken as 1/2), and far in both tails. The two u differ by an ulp or two; the gradient
    # gy (u + 2u(1 - u) x a'(x)), a' = √(2/π)(1 + 0.134 x²), carries that difference times about
    # 1 + 2|x a'(x)| <= 1 + 2|x| + 0.25|x|³: the tolerance is 8 ulps of that, element by element.
    special = np.array([0.0, -0.0, 1e-35, -1e-35, 1e-42, 1e-29, -1e-29, -12.0, -30.0, 9.0, 40.0, -5.0])
    x = np.concatenate([rng.standard_normal(500) * 3, special]).astype(dtype)
    gy = rng.standard_normal(x.size).astype(dtype)
    y_read, g_read = _gelu_gradient(x, gy, True)
    y_recomputed, g_recomputed = _gelu_gradient(x, gy, False)
    assert np.array_equal(y_read, y_recomputed)          # forward is the same path
    assert np.all(np.isfinite(g_read))
    ax = np.abs(x.astype(np.float64))
    tolerance = 8 * np.finfo(dtype).eps * np.abs(gy) * (1 + 2 * ax + 0.25 * ax ** 3)
    difference = np.abs(g_read.astype(np.float64) - g_recomputed)
    assert np.all(difference <= tolerance), (difference / np.maximum(tolerance, 1e-300)).max()


def test_gelu_reads_its_gate_back_only_from_a_float32_or_float64_output(rng):
    x32 = mm.tensor(rng.standard_normal((4, 6)).astype(np.float32), requires_grad=True)
    assert F.gelu(x32).grad_fn.gate_from_output
    x16 = mm.tensor(rng.standard_normal((4, 6)).astype(np.float16), requires_grad=True)
    with mm.amp.autocast("fp16"):
        wrapped = F.gelu(x16).grad_fn                     # InFloat32: the output is rounded to float16
    assert not wrapped.op.gate_from_output


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


def _gelu_mlp_backward_peak(hold_output: bool, retain_graph: bool = False):
    """Traced peak of backward through linear -> gelu -> linear (N = 2048, 4C = 1024), and the
    GELU output's values before and after backward when the caller holds it."""
    from tests.peak_memory import traced_peak

    rng = np.random.default_rng(0)
    x = mm.tensor(rng.standard_normal((2048, 64)).astype(np.float32), requires_grad=True)
    w1 = mm.tensor(rng.standard_normal((1024, 64)).astype(np.float32) * 0.1, requires_grad=True)
    w2 = mm.tensor(rng.standard_normal((8, 1024)).astype(np.float32) * 0.1, requires_grad=True)
    h = F.gelu(F.linear(x, w1))
    before = h.numpy().copy() if hold_output else None
    loss = F.sum(F.linear(h, w2))
    if not hold_output:
        del h
    _, peak = traced_peak(lambda: loss.backward(retain_graph=retain_graph))
    grads = [t.grad.copy() for t in (x, w1, w2)]
    if retain_graph:
        for t in (x, w1, w2):
            t.grad = None
        loss.backward()
        grads = [(a, t.grad) for a, t in zip(grads, (x, w1, w2))]
    return peak, before, (h.numpy() if hold_output else None), grads


def test_gelu_backward_writes_its_gradient_into_its_output_when_no_one_else_holds_it():
    # N x 4C float32 is 8 MiB; backward's new arrays: GELU's gradient (unless it reuses y),
    # dL/dx of the up projection, the weight gradients (small)
    size = 2048 * 1024 * 4
    free_peak, _, _, free_grads = _gelu_mlp_backward_peak(hold_output=False)
    held_peak, before, after, held_grads = _gelu_mlp_backward_peak(hold_output=True)
    assert held_peak - free_peak > 0.9 * size, (free_peak / size, held_peak / size)
    assert np.array_equal(before, after)                  # a held output is never overwritten
    for a, b in zip(free_grads, held_grads):
        assert np.array_equal(a, b)                       # same arithmetic either way
    _, _, _, pairs = _gelu_mlp_backward_peak(hold_output=False, retain_graph=True)
    for first, second in pairs:                           # a retained graph: y intact for the second pass
        assert np.array_equal(first, second)
