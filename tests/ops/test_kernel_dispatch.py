"""The CuPy fused-kernel paths, run on the host with NumPy stand-ins for the kernels
(tests/ops/kernel_emulation.py): every call site and the code around it, on any machine.

Each test runs the plain host op first, then the same op through its fused path with the
stand-ins, and compares (float32 arithmetic on both sides; the stand-ins round like the
kernels: float32 inside, one rounding to the output dtype).
"""
import pathlib

import numpy as np
import pytest

import minillm as mm
from minillm import amp
from minillm import functional as F
from minillm.nn import GPT, GPTConfig
from minillm.optim import AdamW
from tests.ops import kernel_emulation


def run(fn, arrays, precision="fp32", seed=0):
    tensors = [mm.tensor(a.copy(), requires_grad=True) for a in arrays]
    with amp.autocast(precision):
        out = fn(*tensors)
    upstream = np.asarray(np.random.default_rng(seed).standard_normal(out.shape), dtype=out.dtype)
    out.backward(upstream)
    return [out.numpy()] + [t.grad for t in tensors]


def both(monkeypatch, fn, arrays, precision="fp32"):
    """(plain host results, fused-path results, kernel names that ran)."""
    plain = run(fn, arrays, precision)
    ran = []
    kernel_emulation.install(monkeypatch, ran)
    return plain, run(fn, arrays, precision), ran


def assert_close(got, want, tol):
    for i, (g, w) in enumerate(zip(got, want)):
        assert (g is None) == (w is None), i
        if g is not None:
            assert g.dtype == w.dtype and g.shape == w.shape, (i, g.dtype, w.dtype, g.shape, w.shape)
            np.testing.assert_allclose(g.astype(np.float32), w.astype(np.float32), err_msg=f"output {i}", **tol)


def test_the_stand_ins_reach_every_module_with_a_fused_path():
    """install() patches ``fusable``/``cupy_module`` module by module: every module that calls
    ``fusable(`` (runs a fused kernel) must be in its list, wherever the code moves."""
    package = pathlib.Path(mm.__file__).parent
    users = {p.relative_to(package).as_posix() for p in package.rglob("*.py")
             if p.name != "backend.py" and "fusable(" in p.read_text(encoding="utf-8")}
    listed = {pathlib.Path(m.__file__).relative_to(package).as_posix() for m in kernel_emulation._OP_MODULES}
    assert len(users) >= 6 and users <= listed, sorted(users - listed)


F32 = dict(rtol=1e-4, atol=1e-5)
F16 = dict(rtol=4e-3, atol=4e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("op", ["gelu_tanh", "gelu_erf", "silu", "swiglu"])
def test_activation_kernel_call_sites(monkeypatch, rng, dtype, op):
    x, y = (rng.standard_normal((3, 40)) * 3).astype(dtype), rng.standard_normal((3, 40)).astype(dtype)
    fns = {"gelu_tanh": (lambda a: F.gelu(a), [x]), "gelu_erf": (lambda a: F.gelu(a, "none"), [x]),
           "silu": (F.silu, [x]), "swiglu": (F.swiglu, [x, y])}
    fn, arrays = fns[op]
    plain, fused, ran = both(monkeypatch, fn, arrays)
    assert any(name.startswith("minillm_" + op.split("_")[0]) for name in ran), ran
    assert_close(fused, plain, F32 if dtype == np.float32 else F16)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("kind", ["layer_norm", "layer_norm_no_bias", "rms_norm"])
def test_norm_kernel_call_sites(monkeypatch, rng, precision, kind):
    x = (rng.standard_normal((150, 24)) * 2 + 1).astype(np.float32)      # 3 chunks of rows, one partial
    w, b = rng.standard_normal(24).astype(np.float32), rng.standard_normal(24).astype(np.float32)
    fn, arrays = {"layer_norm": (F.layer_norm, [x, w, b]),
                  "layer_norm_no_bias": (lambda a, c: F.layer_norm(a, c), [x, w]),
                  "rms_norm": (F.rms_norm, [x, w])}[kind]
    plain, fused, ran = both(monkeypatch, fn, arrays, precision)
    assert {"norm_forward", "norm_backward_input", "norm_backward_params"} <= set(ran)
    assert_close(fused, plain, F32 if precision == "fp32" else dict(rtol=2e-2, atol=2e-2))


@pytest.mark.parametrize("reduction,smoothing", [("mean", 0.0), ("sum", 0.1), ("none", 0.2)])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cross_entropy_kernel_call_sites(monkeypatch, rng, reduction, smoothing, precision):
    logits = (rng.standard_normal((2, 7, 33)) * 3).astype(np.float16 if precision == "fp16" else np.float32)
    targets = rng.integers(0, 33, size=(2, 7))
    targets[1, 3] = -100

    def fn(z):
        return F.cross_entropy(z, targets, label_smoothing=smoothing, reduction=reduction)

    plain, fused, ran = both(monkeypatch, fn, [logits], precision)
    assert {"cross_entropy_forward", "cross_entropy_backward"} <= set(ran)
    assert_close(fused, plain, F32 if precision == "fp32" else F16)


@pytest.mark.parametrize("shapes", [((2, 4, 9, 8), (2, 4, 9, 8), True), ((2, 6, 5, 8), (2, 2, 12, 8), True),
                                    ((3, 4, 1, 8), (3, 1, 7, 8), False)], ids=["mha", "gqa-cached", "decode"])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_attention_kernel_call_sites(monkeypatch, rng, shapes, precision):
    q_shape, kv_shape, causal = shapes
    arrays = [rng.standard_normal(s).astype(np.float32) for s in (q_shape, kv_shape, kv_shape)]
    plain, fused, ran = both(monkeypatch, lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal),
                             arrays, precision)
    assert {"attention_softmax_forward_cached", "attention_softmax_backward_cached"} <= set(ran)
    assert_close(fused, plain, F32 if precision == "fp32" else dict(rtol=3e-2, atol=3e-2))


def test_embedding_kernel_call_site(monkeypatch, rng):
    ids = rng.integers(0, 20, size=(4, 30))
    table = rng.standard_normal((20, 8)).astype(np.float32)
    plain, fused, ran = both(monkeypatch, lambda w: F.embedding(ids, w), [table])
    assert "embedding_backward_sorted" in ran
    assert_close(fused, plain, F32)


def test_adamw_kernel_call_site(monkeypatch, rng):
    shapes = [(5, 3), (7,)]
    start = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(3)]
    results = []
    for emulated in (False, True):
        if emulated:
            kernel_emulation.install(monkeypatch)
        params = [mm.tensor(a.copy(), requires_grad=True) for a in start]
        opt = AdamW(params, lr=1e-2, weight_decay=0.1)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g
            opt.step()
        results.append([p.data for p in params])
    assert_close(results[1], results[0], dict(rtol=1e-6, atol=1e-7))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_a_training_step_through_every_fused_path(monkeypatch, precision, preset):
    make = GPTConfig.gpt2 if preset == "gpt2" else GPTConfig.llama
    config = make(vocab_size=61, block_size=16, n_layer=2, n_head=4, n_embd=32)
    ids = np.random.default_rng(0).integers(0, 61, size=(3, 16))
    results, ran = [], []
    for emulated in (False, True):
        if emulated:
            kernel_emulation.install(monkeypatch, ran)
        mm.manual_seed(0)
        model = GPT(config)
        with amp.autocast(precision):
            _, value = model(ids[:, :-1], ids[:, 1:])
        value.backward()
        grads = {n: p.grad.copy() for n, p in model.named_parameters()}
        AdamW(model.parameters(), lr=1e-3).step()
        results.append((value.item(), grads))
    assert {"cross_entropy_forward", "norm_forward", "attention_softmax_backward_cached",
            "minillm_adamw_update"} <= set(ran)
    (loss_fused, grads_fused), (loss_plain, grads_plain) = results[1], results[0]
    assert loss_fused == pytest.approx(loss_plain, rel=1e-5 if precision == "fp32" else 1e-2)
    # every gradient to a tolerance relative to the model's largest one (some, like the key bias's,
    # are zero in exact arithmetic and pure rounding noise on both sides)
    largest = max(float(np.abs(g).max()) for g in grads_plain.values())
    atol = largest * (1e-5 if precision == "fp32" else 2e-2)
    for name, g in grads_fused.items():
        np.testing.assert_allclose(g, grads_plain[name], rtol=1e-3, atol=atol, err_msg=name)
