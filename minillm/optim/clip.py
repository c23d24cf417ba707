"""Gradient clipping by the global L2 norm (``torch.nn.utils.clip_grad_norm_``)."""
from __future__ import annotations

import math

from minillm.backend import get_array_module, item
from minillm.optim.optimizer import check_number
from minillm.tensor import Tensor


def clip_grad_norm_(parameters, max_norm: float, eps: float = 1e-6) -> float:
    """Scale all gradients down together when their global L2 norm exceeds ``max_norm``.

    ::

        norm = sqrt( Σ_p Σ_i g_{p,i}² )        over every parameter whose grad is not None
        if norm > max_norm:  g_p ← g_p · max_norm / (norm + eps)   for every p

    The direction of the full gradient is kept; only its length shrinks to about ``max_norm``.
    Scaled grads are *new* arrays assigned to ``p.grad`` (the old arrays are not written to:
    the autograd engine may share one gradient array between tensors).

    Precision: each gradient's squares are summed pairwise in its own dtype, float32 at least
    (float16 grads are widened first); the per-parameter sums are added in float64.

    Args:
        parameters: an iterable of Tensors (e.g. ``model.parameters()``) or a single Tensor.
        max_norm: > 0; ``float("inf")`` only measures the norm.
        eps: >= 0, keeps the scale finite for a zero norm (as in PyTorch, 1e-6).

    Returns:
        The global norm *before* clipping, as a Python float. A NaN or infinite norm is
        returned as it is and nothing is scaled: the caller decides (skip the step, lower the
        loss scale...).
    """
    max_norm = check_number("clip_grad_norm_", "max_norm", max_norm, strictly_above=True,
                            allow_infinity=True)
    eps = check_number("clip_grad_norm_", "eps", eps)
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    params = []
    for index, p in enumerate(parameters):
        if not isinstance(p, Tensor):
            raise TypeError(f"clip_grad_norm_: parameters item {index} is a {type(p).__name__}, "
                            "expected a minillm Tensor")
        if p.grad is not None:
            params.append(p)
    if not params:
        return 0.0

    xp = get_array_module(params[0].grad)
    # Squares go to one reusable buffer per dtype (float32 at least: float16 squares overflow
    # at 256). The sum is NumPy's/CuPy's pairwise (tree) reduction: a BLAS dot product is
    # faster but sums long runs sequentially, off by ~1e-5 relative on a million elements.
    scratch = {}
    squares = []
    for p in params:
        grad = p.grad
        dtype = xp.result_type(grad.dtype, xp.float32)
        buffer = scratch.get(dtype)
        if buffer is None or buffer.size < grad.size:
            size = max(q.grad.size for q in params)
            buffer = scratch[dtype] = xp.empty(size, dtype=dtype)
        squared = buffer[:grad.size].reshape(grad.shape)
        xp.multiply(grad, grad, out=squared, dtype=dtype)
        squares.append(squared.sum().astype(xp.float64))
    # Summed on the device, read back once (one synchronisation, not one per parameter).
    norm = math.sqrt(item(xp.stack(squares).sum()))
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + eps)
        for p in params:
            p.grad = p.grad * scale
    return norm

