"""Helpers for the fused-op tests: run a fused op and its composed twin on the same inputs and
the same random upstream gradient, and compare values and every input's gradient."""
from __future__ import annotations

import numpy as np

import minillm as mm
from minillm import backend


def run_with_grads(fn, arrays, device: str, upstream_seed: int = 0):
    """fn(*tensors) on fresh leaves (floating arrays require grad); backward with a random
    upstream gradient. Returns (output array, [grad arrays or None]) on the host."""
    leaves = [mm.tensor(a, device=device, requires_grad=a.dtype.kind == "f") for a in arrays]
    out = fn(*leaves)
    rng = np.random.Generator(np.random.PCG64(upstream_seed))
    upstream = backend.to_device(rng.standard_normal(out.shape).astype(out.dtype), device)
    out.backward(upstream)
    grads = [None if t.grad is None else backend.to_numpy(t.grad) for t in leaves]
    return out.numpy(), grads, out, leaves


def assert_twins_agree(fused, composed, arrays, device: str, rtol: float = 1e-10, atol: float = 1e-12):
    """Values and gradients of ``fused`` and ``composed`` agree on ``arrays``."""
    y1, g1, _, _ = run_with_grads(fused, arrays, device)
    y2, g2, _, _ = run_with_grads(composed, arrays, device)
    np.testing.assert_allclose(y1, y2, rtol=rtol, atol=atol, err_msg="forward values differ")
    for index, (a, b) in enumerate(zip(g1, g2)):
        assert (a is None) == (b is None), f"input {index}: one twin has no gradient"
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=rtol, atol=atol,
                                       err_msg=f"gradients of input {index} differ")


def assert_keeps_dtype(fn, arrays, device: str, dtype):
    """Floating inputs cast to ``dtype`` give an output and gradients of ``dtype``."""
    cast = [a.astype(dtype) if a.dtype.kind == "f" else a for a in arrays]
    _, grads, out, leaves = run_with_grads(fn, cast, device)
    assert out.dtype == dtype, f"output dtype {out.dtype}, expected {np.dtype(dtype)}"
    for leaf in leaves:
        if leaf.requires_grad and leaf.grad is not None:
            assert leaf.grad.dtype == dtype, f"gradient dtype {leaf.grad.dtype}, expected {np.dtype(dtype)}"
