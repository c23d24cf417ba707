"""The fused CUDA kernels of the CuPy path against the NumPy ops (``pytest --backend cupy``).

Each kernel runs only for CuPy arrays (float32/float16); the host NumPy op -- the same Function's
array code -- is the reference. Every test here feeds the same inputs and the same random
upstream gradient to both and compares outputs and input gradients with tolerances that reflect
the arithmetic: float32 kernels sum in another order than NumPy (rtol 1e-5 to 1e-4); float16
results are rounded once from float32 on both sides, so they agree to about one float16 ulp
(2^-10 relative). A recorder checks that the kernel under test really ran.

Without a GPU the device tests skip, saying so; the checks of the plumbing at the end run anywhere.
"""
import re

import numpy as np
import pytest

import minillm as mm
from minillm import amp, backend
from minillm import functional as F
from minillm.amp import formats
from minillm.ops import _cuda, activation, attention, embedding, loss, norm
from minillm.optim import adamw

NEEDS_GPU = "fused CUDA kernels run on CuPy arrays only: pytest --backend cupy on a machine with a GPU"


@pytest.fixture
def gpu(device):
    """The real GPU, or a skip saying why."""
    if device != "cuda" or backend.strict_device_enabled() or not backend.cuda_available():
        pytest.skip(NEEDS_GPU)
    previous = backend.use_fused_kernels(True)
    yield "cuda"
    backend.use_fused_kernels(previous)


@pytest.fixture
def kernels(monkeypatch):
    """The names of the fused kernels that ran (elementwise kernels and row kernels)."""
    ran = []
    elementwise_call = _cuda.Elementwise.__call__
    row_get = _cuda.RowKernels.get

    def record_elementwise(self, *args, **kwargs):
        ran.append(self.name)
        return elementwise_call(self, *args, **kwargs)

    def record_row(self, name, **dtypes):
        ran.append(name)
        return row_get(self, name, **dtypes)

    monkeypatch.setattr(_cuda.Elementwise, "__call__", record_elementwise)
    monkeypatch.setattr(_cuda.RowKernels, "get", record_row)
    return ran


def tolerances(dtype):
    return dict(rtol=2e-3, atol=2e-3) if np.dtype(dtype) == np.float16 else dict(rtol=1e-4, atol=1e-5)


def forward_backward(fn, inputs, device, precision="fp32", seed=0):
    """fn's output and the gradients of its inputs under a random upstream gradient (host arrays)."""
    tensors = [mm.tensor(backend.to_device(a, device), requires_grad=True) for a in inputs]
    with amp.autocast(precision):
        out = fn(*tensors)
    upstream = np.asarray(np.random.default_rng(seed).standard_normal(out.shape), dtype=out.dtype)
    out.backward(backend.to_device(upstream, device))
    return backend.to_numpy(out.data), [None if t.grad is None else backend.to_numpy(t.grad) for t in tensors]


def typed(arrays, dtype):
    return [a.astype(dtype) for a in arrays]


def assert_parity(fn, inputs, gpu, kernels, expect, dtype=np.float32, precision="fp32", tol=None):
    """The GPU run (fused) equals the host run (NumPy) within ``tol`` (default: ``dtype``'s);
    the ``expect`` kernels ran. ``inputs`` are host arrays of the dtypes to test."""
    out_gpu, grads_gpu = forward_backward(fn, inputs, gpu, precision)
    ran = {name.removesuffix("_cached") for name in kernels}     # either variant of a row kernel
    assert set(expect) <= ran, f"expected kernels {expect}, ran {kernels}"
    out_host, grads_host = forward_backward(fn, inputs, "cpu", precision)
    tol = tol or tolerances(dtype)
    assert out_gpu.dtype == out_host.dtype and out_gpu.shape == out_host.shape
    np.testing.assert_allclose(out_gpu.astype(np.float32), out_host.astype(np.float32), **tol)
    for i, (g, h) in enumerate(zip(grads_gpu, grads_host)):
        assert (g is None) == (h is None), i
        if g is not None:
            assert g.dtype == h.dtype, (i, g.dtype, h.dtype)
            np.testing.assert_allclose(g.astype(np.float32), h.astype(np.float32), err_msg=f"input {i}", **tol)


DTYPES = [np.float32, np.float16]


# ---------------------------------------------------------------------------------------------
# activations
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_kernels_match_numpy(gpu, kernels, rng, dtype, approximate):
    x = rng.standard_normal((3, 5, 64)) * 3
    name = "minillm_gelu_tanh" if approximate == "tanh" else "minillm_gelu_erf"
    assert_parity(lambda t: F.gelu(t, approximate), typed([x], dtype), gpu, kernels,
                  [name + "_forward", name + "_backward"], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_silu_and_swiglu_kernels_match_numpy(gpu, kernels, rng, dtype):
    a, b = rng.standard_normal((4, 33)) * 4, rng.standard_normal((4, 33))
    assert_parity(F.silu, typed([a], dtype), gpu, kernels, ["minillm_silu_forward", "minillm_silu_backward"], dtype)
    assert_parity(F.swiglu, typed([a, b], dtype), gpu, kernels,
                  ["minillm_swiglu_forward", "minillm_swiglu_backward"], dtype)


def test_swiglu_kernel_computes_only_the_gradients_asked_for(gpu, kernels, rng):
    a = mm.tensor(backend.to_device(rng.standard_normal((3, 8)).astype(np.float32), gpu), requires_grad=True)
    b = mm.tensor(backend.to_device(rng.standard_normal((3, 8)).astype(np.float32), gpu))
    F.swiglu(a, b).sum().backward()
    assert "minillm_swiglu_backward_a" in kernels and b.grad is None


# ---------------------------------------------------------------------------------------------
# norms
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_layer_norm_kernels_match_numpy(gpu, kernels, rng, dtype, with_bias):
    x = rng.standard_normal((2, 7, 300)) * 2 + 0.5
    w, b = rng.standard_normal(300).astype(np.float32), rng.standard_normal(300).astype(np.float32)
    if dtype == np.float16:          # float16 activations, float32 parameters: the autocast layout
        fn = (lambda t, wt, bt: F.layer_norm(t, wt, bt)) if with_bias else (lambda t, wt: F.layer_norm(t, wt))
        inputs = [x.astype(np.float16), w] + ([b] if with_bias else [])
        assert_parity(fn, inputs, gpu, kernels, ["norm_forward", "norm_backward_input", "norm_backward_params"],
                      np.float32, precision="fp16", tol=tolerances(np.float16))
        return
    fn = (lambda t, wt, bt: F.layer_norm(t, wt, bt)) if with_bias else (lambda t, wt: F.layer_norm(t, wt))
    assert_parity(fn, [x.astype(dtype), w] + ([b] if with_bias else []), gpu, kernels,
                  ["norm_forward", "norm_backward_input", "norm_backward_params"], dtype)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_rms_norm_kernels_match_numpy(gpu, kernels, rng, precision):
    x = (rng.standard_normal((5, 130)) * 3).astype(np.float32)
    w = rng.standard_normal(130).astype(np.float32)
    tol = tolerances(np.float32) if precision == "fp32" else dict(rtol=1e-2, atol=1e-2)
    assert_parity(F.rms_norm, [x, w], gpu, kernels, ["norm_forward", "norm_backward_input"], np.float32,
                  precision=precision, tol=tol)


def test_layer_norm_of_many_rows_sums_parameter_gradients_over_chunks(gpu, kernels, rng):
    x = rng.standard_normal((1000, 48))          # 16 chunks of 64 rows, the last one partial
    w, b = rng.standard_normal(48).astype(np.float32), rng.standard_normal(48).astype(np.float32)
    assert_parity(F.layer_norm, [x.astype(np.float32), w, b], gpu, kernels, ["norm_backward_params"], np.float32)


# ---------------------------------------------------------------------------------------------
# cross-entropy
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction,smoothing", [("mean", 0.0), ("sum", 0.1), ("none", 0.0), ("mean", 0.2)])
def test_cross_entropy_kernels_match_numpy(gpu, kernels, rng, dtype, reduction, smoothing):
    logits = rng.standard_normal((3, 5, 1000)) * 4
    targets = rng.integers(0, 1000, size=(3, 5))
    targets[0, 1] = targets[2, 4] = -100

    def fn(z):
        return F.cross_entropy(z, targets, ignore_index=-100, label_smoothing=smoothing, reduction=reduction)

    tol = tolerances(dtype) if dtype == np.float32 else dict(rtol=5e-3, atol=5e-3)
    if dtype == np.float16:          # float16 logits are an autocast case (float32 loss)
        assert_parity(fn, [logits.astype(np.float16)], gpu, kernels,
                      ["cross_entropy_forward", "cross_entropy_backward"], np.float16, precision="fp16", tol=tol)
        return
    assert_parity(fn, [logits.astype(np.float32)], gpu, kernels, ["cross_entropy_forward", "cross_entropy_backward"],
                  dtype, tol=tol)


def test_cross_entropy_kernel_handles_extreme_logits(gpu, rng):
    z = np.zeros((2, 50), dtype=np.float32)
    z[0, 3], z[1, 7] = 80.0, -80.0                               # e^80 overflows float32 without the max shift
    out = F.cross_entropy(mm.tensor(backend.to_device(z, gpu)), np.array([3, 7]), reduction="none")
    ref = F.cross_entropy(mm.tensor(z), np.array([3, 7]), reduction="none")
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# attention
# ---------------------------------------------------------------------------------------------
ATTENTION_SHAPES = {
    "mha-causal": ((2, 4, 9, 8), (2, 4, 9, 8), True),
    "gqa-causal": ((2, 6, 9, 16), (2, 2, 9, 16), True),
    "cached-rows": ((2, 4, 3, 8), (2, 2, 11, 8), True),          # T < S: bottom-right causal mask
    "one-query": ((3, 4, 1, 8), (3, 1, 17, 8), False),           # a decode step (MQA)
}


@pytest.mark.parametrize("shape", list(ATTENTION_SHAPES))
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_attention_kernels_match_numpy(gpu, kernels, rng, shape, precision):
    q_shape, kv_shape, causal = ATTENTION_SHAPES[shape]
    q, k, v = typed([rng.standard_normal(q_shape), rng.standard_normal(kv_shape), rng.standard_normal(kv_shape)],
                    np.float32)

    def fn(a, b, c):
        return F.scaled_dot_product_attention(a, b, c, is_causal=causal)

    tol = tolerances(np.float32) if precision == "fp32" else dict(rtol=3e-2, atol=3e-2)
    assert_parity(fn, [q, k, v], gpu, kernels, ["attention_softmax_forward", "attention_softmax_backward"],
                  np.float32, precision=precision, tol=tol)


def test_attention_on_the_gpu_saves_no_weights(gpu, rng):
    q = mm.tensor(backend.to_device(rng.standard_normal((2, 4, 64, 8)).astype(np.float32), gpu), requires_grad=True)
    y = F.scaled_dot_product_attention(q, q, q, is_causal=True)
    fn = y.grad_fn
    assert isinstance(fn, attention.ScaledDotProductAttentionCuda)
    saved = [a for a in vars(fn).values() if hasattr(a, "nbytes")]
    assert max(a.size for a in saved) == q.size                  # q, k, v and L (B, H, T): nothing (T, T)


def test_attention_with_a_mask_or_dropout_takes_the_array_path(gpu, rng):
    q = mm.tensor(backend.to_device(rng.standard_normal((1, 2, 5, 4)).astype(np.float32), gpu))
    mask = backend.to_device(np.tril(np.ones((5, 5), dtype=bool)), gpu)
    y = F.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    assert y.device == "cuda" and not isinstance(y.grad_fn, attention.ScaledDotProductAttentionCuda)


# ---------------------------------------------------------------------------------------------
# embedding and AdamW
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_backward_kernel_matches_numpy_and_is_deterministic(gpu, kernels, rng, dtype):
    ids = rng.integers(0, 50, size=(8, 64))                      # many repeats per row of the table
    ids[0, :10] = 7
    table = rng.standard_normal((50, 24)).astype(dtype)
    assert_parity(lambda w: F.embedding(ids, w), [table], gpu, kernels, ["embedding_backward_sorted"], dtype)
    first = forward_backward(lambda w: F.embedding(ids, w), [table], gpu)[1][0]
    again = forward_backward(lambda w: F.embedding(ids, w), [table], gpu)[1][0]
    assert first.tobytes() == again.tobytes()                    # the same run twice: the same bits


def test_adamw_kernel_matches_the_array_update(gpu, kernels, rng):
    shapes = [(7, 5), (300,), (2, 3, 4)]
    host = [mm.tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True) for s in shapes]
    dev = [mm.tensor(backend.to_device(p.data, gpu), requires_grad=True) for p in host]
    opts = [adamw.AdamW(ps, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1) for ps in (host, dev)]
    for step in range(4):
        for h, d in zip(host, dev):
            g = rng.standard_normal(h.shape).astype(np.float32)
            h.grad, d.grad = g, backend.to_device(g, gpu)
        for opt in opts:
            opt.step()
    assert "minillm_adamw_update" in kernels
    for h, d in zip(host, dev):
        np.testing.assert_allclose(backend.to_numpy(d.data), h.data, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# bfloat16 products on the GPU (CuPy with ml_dtypes)
# ---------------------------------------------------------------------------------------------
def test_gpu_bfloat16_rounding_matches_the_host_bits(gpu):
    if formats.gpu_bfloat16() is None:
        pytest.skip("this CuPy takes no ml_dtypes.bfloat16 (or MINILLM_BF16_GEMM=0): bf16 stays emulated")
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5e-3, 3.4e38, np.inf, -np.inf, np.nan, 1e-40, 0.0],
                 dtype=np.float32)
    x = np.concatenate([x, np.random.default_rng(0).standard_normal(1000).astype(np.float32)])
    got = formats.to_gpu_bfloat16(backend.to_device(x, gpu)).view(np.uint16)
    np.testing.assert_array_equal(backend.to_numpy(got), formats.float32_to_bf16_bits(x))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_low_precision_linear_on_the_gpu_matches_the_host(gpu, rng, precision):
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((4, 9, 64), (48, 64), (48,)))
    assert_parity(F.linear, [x, w, b], gpu, [], [], np.float32, precision=precision, tol=dict(rtol=2e-2, atol=2e-2))


# ---------------------------------------------------------------------------------------------
# a whole model: fused kernels against the composed GPU path, and every op on the GPU
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["gpt2", "llama"])
def test_a_training_step_with_kernels_matches_the_composed_gpu_path(gpu, preset):
    from minillm.nn import GPT, GPTConfig

    make = GPTConfig.gpt2 if preset == "gpt2" else GPTConfig.llama
    config = make(vocab_size=97, block_size=32, n_layer=2, n_head=4, n_embd=32)
    ids = np.random.default_rng(0).integers(0, 97, size=(3, 32))
    results = []
    for fused in (True, False):
        backend.use_fused_kernels(fused)
        mm.manual_seed(0)
        model = GPT(config).to(gpu)
        _, value = model(ids[:, :-1], ids[:, 1:])
        value.backward()
        results.append((value.item(), {n: backend.to_numpy(p.grad) for n, p in model.named_parameters()}))
    backend.use_fused_kernels(True)
    (fused_loss, fused_grads), (plain_loss, plain_grads) = results
    assert fused_loss == pytest.approx(plain_loss, rel=1e-5)
    for name, g in fused_grads.items():
        np.testing.assert_allclose(g, plain_grads[name], rtol=1e-3, atol=1e-5, err_msg=name)


def test_every_op_runs_on_the_gpu_like_on_the_host(gpu, rng):
    """float64 cases (no kernels: the composed CuPy path of every op) against the host."""
    from tests.core.op_cases import CASES

    for case in [c for c in CASES if not c.host_only]:
        inputs = case.inputs(rng)
        tensors = [mm.tensor(backend.to_device(a, gpu), requires_grad=True) for a in inputs]
        host = [mm.tensor(a, requires_grad=True) for a in inputs]
        mm.manual_seed(0)                                        # the same dropout mask on both
        out = case.fn(*tensors)
        mm.manual_seed(0)
        ref = case.fn(*host)
        upstream = rng.standard_normal(ref.shape)
        out.backward(backend.to_device(upstream, gpu))
        ref.backward(upstream)
        np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-9, atol=1e-10, err_msg=case.id)
        for t, h in zip(tensors, host):
            if h.grad is not None:
                np.testing.assert_allclose(backend.to_numpy(t.grad), h.grad, rtol=1e-9, atol=1e-10, err_msg=case.id)


# ---------------------------------------------------------------------------------------------
# the plumbing (any machine)
# ---------------------------------------------------------------------------------------------
KERNEL_SOURCES = {
    "loss": loss._CE_KERNELS.source, "norm forward": norm._NORM_FORWARD.source,
    "norm backward": norm._NORM_BACKWARD.source, "attention": attention._ATTENTION_KERNELS.source,
    "embedding": embedding._EMBEDDING_KERNELS.source, "helpers": _cuda.DEVICE_HELPERS,
}


@pytest.mark.parametrize("name", list(KERNEL_SOURCES))
def test_kernel_sources_are_ascii_and_declare_their_kernels_extern_c(name):
    source = KERNEL_SOURCES[name]
    assert source.isascii(), name
    for kernel in re.findall(r"__global__ void (\w+)", source):
        assert f'extern "C" __global__ void {kernel}' in source, kernel   # looked up by plain name


def test_elementwise_kernels_are_ascii():
    for module in (activation, adamw):
        for value in vars(module).values():
            if isinstance(value, _cuda.Elementwise):
                assert (value.operation + value.in_params + value.out_params).isascii(), value.name


def test_slot_macros_name_each_storage_type():
    text = _cuda._slot_defines({"X": np.float16, "G": np.float32})
    assert "#define X_T unsigned short" in text and "#define G_T float" in text
    assert "LOAD_X(p, i) minillm_h2f" in text and "STORE_G(p, i, v) ((p)[(i)] = (v))" in text
    with pytest.raises(TypeError, match="float64"):
        _cuda._slot_defines({"X": np.float64})


def test_host_and_strict_arrays_never_take_the_kernels(strict_device):
    assert not backend.fusable(np.ones(3, dtype=np.float32))
    assert not backend.fusable(backend.to_device(np.ones(3, dtype=np.float32), strict_device))
    previous = backend.use_fused_kernels(False)
    assert backend.fused_kernels_enabled() is False
    backend.use_fused_kernels(previous)


def test_row_threads_cover_a_row_with_whole_warps():
    assert _cuda.row_threads(1) == 32 and _cuda.row_threads(768) == 192 and _cuda.row_threads(50304) == 1024


def _elementwise_harness(kernel, c_type: str) -> str:
    """A CUDA function with the kernel's parameters and body, as CuPy would wrap them (T = c_type)."""
    ins = [p.split() for p in kernel.in_params.split(",")]
    outs = [p.split() for p in kernel.out_params.split(",")]
    params = ", ".join([f"const {c_type}* {n}_" for _, n in ins] + [f"{c_type}* {n}_" for _, n in outs])
    body = "".join(f"    const {c_type} {n} = {n}_[i];\n" for _, n in ins)
    body += "".join(f"    {c_type}& {n} = {n}_[i];\n" for _, n in outs)
    return (f'extern "C" __global__ void {kernel.name}({params}) {{\n    typedef {c_type} T;\n'
            f"    int i = threadIdx.x;\n{body}{kernel.operation}\n}}\n")


def test_kernel_sources_compile_with_nvcc(tmp_path):
    """Every row-kernel source for every dtype combination it meets, and every elementwise body (float, and
    float16 as CUDA's __half where the op takes float16), compiles to PTX for sm_90 -- on any
    machine with the CUDA compiler, GPU or not."""
    import itertools
    import shutil
    import subprocess

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc (the CUDA compiler) is not installed: the kernels compile on first use on a GPU")
    files = []
    families = {"loss": loss._CE_KERNELS, "norm_forward": norm._NORM_FORWARD, "norm_backward": norm._NORM_BACKWARD,
                "attention": attention._ATTENTION_KERNELS, "embedding": embedding._EMBEDDING_KERNELS}
    for name, family in families.items():
        # attention also sees bfloat16 scores (real bf16 products on a GPU whose CuPy takes ml_dtypes)
        kinds = ["float32", "float16"] + (["bfloat16"] if name == "attention" else [])
        for combo in itertools.product(kinds, repeat=len(family.slots)):
            path = tmp_path / f"{name}_{'_'.join(combo)}.cu"
            path.write_text(_cuda._slot_defines(dict(zip(family.slots, combo))) + _cuda.DEVICE_HELPERS + family.source)
            files.append(str(path))
    for c_type in ("float", "__half"):
        kernels = [k for m in (activation, adamw) for k in vars(m).values() if isinstance(k, _cuda.Elementwise)
                   and not (c_type == "__half" and k.name == "minillm_adamw_update")]   # AdamW: float32 only
        path = tmp_path / f"elementwise_{c_type.strip('_')}.cu"
        path.write_text("#include <cuda_fp16.h>\n" + "\n".join(_elementwise_harness(k, c_type) for k in kernels))
        files.append(str(path))
    done = subprocess.run([nvcc, "-arch=sm_90", "--ptx", *files], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]


# ---------------------------------------------------------------------------------------------
# the GPU attention's orchestration on the host: NumPy stands in for CuPy and the two kernels
# ---------------------------------------------------------------------------------------------
def _numpy_softmax_kernel(name, scores, grads, lse, queries, offset, scale, causal, round_bf16):
    """What the attention softmax kernels do, in NumPy (in place on scores/grads, lse per row)."""
    width = scores.shape[-1]
    rows = scores.reshape(-1, width)
    index = np.arange(rows.shape[0])
    limit = np.minimum(index % queries + offset + 1, width) if causal else np.full(rows.shape[0], width)
    visible = np.arange(width)[None, :] < limit[:, None]
    shifted = np.where(visible, rows * scale, -np.inf)
    if grads is None:
        top = shifted.max(-1, keepdims=True)
        e = np.exp(shifted - top)
        total = e.sum(-1, keepdims=True)
        rows[...] = e / total
        lse.reshape(-1)[...] = (top + np.log(total))[:, 0]
    else:
        weights = np.where(visible, np.exp(shifted - lse.reshape(-1)[:, None]), 0.0)
        upstream = grads.reshape(-1, width)
        delta = (weights * upstream).sum(-1, keepdims=True)
        upstream[...] = scale * weights * (upstream - delta)
        rows[...] = weights


@pytest.mark.parametrize("shape", list(ATTENTION_SHAPES))
@pytest.mark.parametrize("blocks", ["one block", "many blocks"])
def test_gpu_attention_chunks_and_blocks_compute_attention(monkeypatch, rng, shape, blocks):
    """The chunked (causal) and batch-blocked products of ScaledDotProductAttentionCuda, run on the
    host with NumPy for CuPy and for the two kernels, equal the composed attention (float64 inputs;
    the saved log-sum-exp and the dK/dV chunk sums are float32 by design)."""
    monkeypatch.setattr(attention, "cupy_module", lambda: np)
    monkeypatch.setattr(attention, "launch_softmax_kernel", _numpy_softmax_kernel)
    monkeypatch.setattr(attention, "_CAUSAL_MIN_CHUNK", 2)       # chunk even these short sequences
    if blocks == "many blocks":
        monkeypatch.setattr(attention, "_CUDA_BLOCK_ELEMENTS", 1)
    q_shape, kv_shape, causal = ATTENTION_SHAPES[shape]
    arrays = [rng.standard_normal(q_shape), rng.standard_normal(kv_shape), rng.standard_normal(kv_shape)]
    upstream = rng.standard_normal(q_shape)
    results = []
    for fused in (True, False):
        tensors = [mm.tensor(a, requires_grad=True) for a in arrays]
        scale = 1.0 / np.sqrt(q_shape[-1])
        if fused:
            fn = attention.ScaledDotProductAttentionCuda(scale, causal)
            chunks = fn._chunks(q_shape[2], kv_shape[2])
            assert (len(chunks) > 1) == (causal and q_shape[2] >= 4)
            assert chunks[0][0] == 0 and chunks[-1][1] == q_shape[2] and chunks[-1][2] == kv_shape[2]
            out = fn.apply(*tensors)
        else:
            out = F.scaled_dot_product_attention_composed(*tensors, is_causal=causal)
        out.backward(upstream)
        results.append([out.numpy()] + [t.grad for t in tensors])
    for got, want in zip(*results):     # float32 row log-sum-exp and dK/dV sums: float32 agreement
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
