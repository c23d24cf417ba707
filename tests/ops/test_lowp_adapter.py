"""InFloat32 (minillm.ops.lowp.adapter): a float32 op computed in float32 on float16 inputs and
rounded once -- what it keeps, what it returns, block by block, and the fused kernels' direct path.
(The values against float32 and the graph's memory: tests/amp/test_amp.py; every fused path with
the kernel stand-ins: test_kernel_dispatch.py.)"""
import numpy as np
import pytest

import minillm as mm
from minillm import amp
from minillm import functional as F
from minillm.amp.formats import cast
from minillm.ops import activation, norm
from minillm.ops.lowp import adapter
from minillm.ops.lowp.adapter import InFloat32
from tests.ops import kernel_emulation


def half(rng, shape, scale=1.0):
    return mm.tensor((rng.standard_normal(shape) * scale).astype(np.float16), requires_grad=True)


# (name, function, inputs, attribute of the op holding its first input: None = it keeps none)
CASES = {
    "layer_norm": (lambda x, w: F.layer_norm(x, w), lambda r: [half(r, (4, 16)), mm.tensor(
        r.standard_normal(16).astype(np.float32), requires_grad=True)], "x"),
    "gelu_erf": (lambda x: F.gelu(x, "none"), lambda r: [half(r, (4, 16), 3)], "x"),
    "silu": (F.silu, lambda r: [half(r, (4, 16), 3)], "x"),
    "cross_entropy": (lambda z: F.cross_entropy(z, np.arange(4) % 11), lambda r: [half(r, (4, 11), 3)], "logits"),
    "softmax": (F.softmax, lambda r: [half(r, (4, 11))], None),
    "rope": (lambda x: F.rope(x, *F.rope_tables(8, 4)), lambda r: [half(r, (2, 3, 4, 8))], None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_graph_keeps_the_float16_input_and_gradients_come_back_in_its_dtype(name, rng):
    fn, make, attribute = CASES[name]
    inputs = make(rng)
    with amp.autocast("fp16"):
        y = fn(*inputs)
    wrapper = y.grad_fn
    assert isinstance(wrapper, InFloat32) and wrapper.label() == f"InFloat32({type(wrapper.op).__name__})"
    if attribute is not None:
        assert getattr(wrapper.op, attribute) is inputs[0].data           # not a float32 copy
    widened = inputs[0].data.astype(np.float32)
    assert not any(getattr(a, "dtype", None) == np.float32 and a.shape == widened.shape and np.array_equal(a, widened)
                   for a in vars(wrapper.op).values())                # no float32 copy of it anywhere
    y.backward(np.ones(y.shape, dtype=y.dtype))
    for t in inputs:
        assert t.grad.dtype == t.dtype and t.grad.shape == t.shape


def test_result_dtype_follows_the_route(rng):
    x16 = half(rng, (3, 8))
    w = mm.tensor(np.ones(8, np.float32))
    assert F.gelu(x16).dtype == np.float16                     # input dtype: rounded back to float16
    with amp.autocast("fp16"):
        assert F.softmax(x16).dtype == np.float32              # float32 op: a float32 result
        assert F.layer_norm(x16, w).dtype == np.float16        # stored in the format
    with amp.autocast("bf16"):
        y = F.layer_norm(x16, w)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(amp.BF16.to_storage(y.data), y.data)   # bf16 values


def test_outside_the_policy_nothing_is_wrapped(rng):
    x = mm.tensor(rng.standard_normal((3, 8)).astype(np.float32), requires_grad=True)
    w = mm.tensor(np.ones(8, np.float32), requires_grad=True)
    for y in (F.gelu(x), F.silu(x), F.softmax(x), F.layer_norm(x, w), F.rms_norm(x, w)):
        assert not isinstance(y.grad_fn, InFloat32)
    with amp.autocast("fp16"):
        assert not isinstance(F.softmax(x).grad_fn, InFloat32)    # a float32 input of a float32 op
        assert not isinstance(F.gelu(x).grad_fn, InFloat32)       # input dtype: float32 stays float32


@pytest.mark.parametrize("op", ["gelu", "swiglu"])
def test_blocks_give_the_bits_of_one_block_on_a_strided_input(op, rng, monkeypatch):
    a = rng.standard_normal((5, 3, 7)).astype(np.float16) * 3
    b = rng.standard_normal((5, 3, 7)).astype(np.float16)
    upstream = rng.standard_normal((3, 5, 7)).astype(np.float16)

    def run():
        ta, tb = mm.tensor(a, requires_grad=True), mm.tensor(b, requires_grad=True)
        xa, xb = F.transpose(ta, (1, 0, 2)), F.transpose(tb, (1, 0, 2))   # (3, 5, 7) views
        y = F.gelu(xa) if op == "gelu" else F.swiglu(xa, xb)
        assert isinstance(y.grad_fn, InFloat32) and y.grad_fn.blocks
        y.backward(upstream)
        return y.data, ta.grad, tb.grad

    whole = run()
    monkeypatch.setattr(adapter, "_BLOCK", 4)                  # 105 elements: 27 blocks, the last partial
    blocked = run()
    for got, want in zip(blocked, whole):
        if want is None:
            assert got is None
        else:
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    x32 = np.ascontiguousarray(a.transpose(1, 0, 2)).astype(np.float32)
    if op == "gelu":                                           # = the float32 op, rounded once
        np.testing.assert_array_equal(whole[0], F.gelu(mm.tensor(x32)).data.astype(np.float16))


def test_the_swiglu_blocks_compute_only_the_gradient_asked_for(rng):
    a, b = half(rng, (4, 6)), mm.tensor(rng.standard_normal((4, 6)).astype(np.float16))
    F.swiglu(a, b).sum().backward()
    assert a.grad.dtype == np.float16 and b.grad is None


@pytest.mark.parametrize("blocks", [False, True])
def test_in_float32_passes_a_float64_gradcheck(blocks, rng, monkeypatch):
    """Without float16 inputs and without a format the adapter changes no value: the float64 op
    through it (and through its blocks) passes gradcheck, which checks the plumbing."""
    monkeypatch.setattr(adapter, "_BLOCK", 5)
    x = mm.tensor(rng.standard_normal((3, 4)))
    w = mm.tensor(rng.standard_normal(4))
    if blocks:
        assert mm.gradcheck(lambda a, b: InFloat32(activation.SwiGLU(), None, blocks=True).apply(a, b),
                            [x, mm.tensor(rng.standard_normal((3, 4)))])
    else:
        assert mm.gradcheck(lambda a, b: InFloat32(norm.LayerNorm(1e-5), None).apply(a, b), [x, w])


def test_backward_twice_with_retain_graph_gives_the_same_gradients(rng):
    x, w = half(rng, (4, 16)), mm.tensor(np.ones(16, np.float32), requires_grad=True)
    with amp.autocast("fp16"):
        y = F.layer_norm(x, w)
    upstream = rng.standard_normal(y.shape).astype(np.float16)
    y.backward(upstream, retain_graph=True)
    first = x.grad.copy()
    assert y.grad_fn.op.x is x.data                            # the float16 input again after backward
    x.grad = None
    y.backward(upstream)
    assert x.grad.dtype == np.float16 and x.grad.tobytes() == first.tobytes()


def test_a_fused_kernel_gets_the_float16_arrays_themselves(rng, monkeypatch):
    """Where the kernel runs, InFloat32 hands it the inputs as they are (no float32 copy) and asks
    for the rounded result: the norm kernel writes float16 under fp16."""
    x, w = half(rng, (6, 16)), mm.tensor(np.ones(16, np.float32), requires_grad=True)
    kernel_emulation.install(monkeypatch)
    widened = []
    monkeypatch.setattr(adapter, "_widen", lambda a: widened.append(a) or cast(a, np.float32))
    with amp.autocast("fp16"):
        y = F.layer_norm(x, w)
        g = F.gelu(x)
    assert y.grad_fn.kernel_ran and g.grad_fn.kernel_ran and not widened
    assert y.dtype == g.dtype == np.float16 and y.grad_fn.op.x is x.data
    (y.sum() + g.sum()).backward()
    assert x.grad.dtype == np.float16 and w.grad.dtype == np.float32 and not widened


@pytest.mark.parametrize("table_dtype", [np.float32, np.float16])
def test_rope_of_a_float16_x_rotates_in_float32_and_rounds_once(table_dtype, rng):
    """One rule for every input-dtype op: float16 tables (a model made float16 with to_dtype) no
    longer make RoPE compute in float16 step by step, as GELU, SiLU and SwiGLU never did."""
    cos, sin = F.rope_tables(16, 8, dtype=table_dtype)
    x = rng.standard_normal((2, 4, 8, 16)).astype(np.float16)
    y = F.rope(mm.tensor(x), cos, sin)
    wide = F.rope(mm.tensor(x.astype(np.float32)), cos.astype(np.float32), sin.astype(np.float32))
    assert y.dtype == np.float16
    np.testing.assert_array_equal(y.data, wide.data.astype(np.float16))
