"""Muon: momentum whose update matrix is orthogonalised (Newton–Schulz), AdamW for the rest.

Muon (Jordan et al., 2024) treats a weight matrix as a linear map and steps it along the
*orthogonalised* momentum: every singular value of the update is pushed to about 1, so rare
directions of the gradient move as far as the dominant ones. It applies to the hidden matrices
of a transformer (attention and feed-forward projections); embeddings, the output head and the
vectors (norm gains, biases) keep AdamW, as in the reference implementation.

This optimizer holds both kinds in one object (one state dict, one learning-rate schedule):
a param group with ``"orthogonalize": True`` gets Muon, one with ``False`` gets AdamW
(:class:`~minillm.optim.AdamW`'s arithmetic exactly). :func:`muon_groups` splits a model's
parameters that way.

The update is scaled so that its root-mean-square is ``update_rms`` per unit of learning rate,
whatever the matrix's shape (Liu et al., 2025, "Muon is Scalable for LLM Training"): with the
default 0.2 it is about the size of an AdamW update, so both kinds share one learning rate and
one weight decay.
"""
from __future__ import annotations

import math

from minillm.backend import get_array_module
from minillm.optim.adamw import AdamW, adam_moments, check_adam_hyperparameters
from minillm.optim.groups import assign_groups, trainable_parameters
from minillm.optim.optimizer import Optimizer, check_number

# The quintic Newton–Schulz iteration's coefficients (Jordan et al.): chosen to raise small
# singular values fast (slope 3.4445 at 0) at the price of leaving them in about [0.7, 1.2]
# instead of converging to exactly 1, which the optimizer does not need.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def _check_steps(owner: str, name: str, steps) -> None:
    """A Newton–Schulz iteration count must be an int >= 1 (a ValueError naming ``owner``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{owner}: {name}={steps!r} is invalid; expected an integer >= 1")


def orthogonalize(matrix, steps: int = 5):
    """An approximately semi-orthogonal matrix with the singular vectors of ``matrix``.

    For ``G = U·S·Vᵀ`` (a 2-D array, shape (m, n)) this returns about ``U·Vᵀ``: the singular
    values are replaced by values near 1 (in about [0.7, 1.2] after 5 steps). Starting from
    ``X = G / ‖G‖_F`` (every singular value then <= 1), each step applies the odd polynomial

        X ← a·X + (b·A + c·A²)·X,    A = X·Xᵀ,    (a, b, c) = NS_COEFFICIENTS

    to every singular value at once, with matrix products only (no SVD). The products run on the
    shorter side: a tall matrix (m > n) is iterated as its transpose. Works on NumPy and CuPy
    arrays, in the input's dtype; a zero matrix gives zeros.
    """
    if getattr(matrix, "ndim", None) != 2:
        raise ValueError(f"orthogonalize: matrix has shape {tuple(getattr(matrix, 'shape', ()))}, expected a "
                         "2-D array")
    _check_steps("orthogonalize", "steps", steps)
    xp = get_array_module(matrix)
    a, b, c = NS_COEFFICIENTS
    # The tiny addend keeps a zero gradient at zero instead of dividing by 0.
    x = matrix / (xp.linalg.norm(matrix) + 1e-7)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T                                  # (m, m), m the shorter side
        polynomial = b * gram + c * (gram @ gram)
        x = a * x + polynomial @ x
    return x.T if transposed else x


class Muon(Optimizer):
    """Muon for the groups marked ``"orthogonalize": True``, AdamW for the others.

    For a matrix parameter W (shape (m, n)) with gradient g, at each update::

        W ← W − lr·wd·W                                     decoupled decay, applied first
        b ← μ·b + (1 − μ)·g                                 momentum (state "momentum_buffer")
        u = (1 − μ)·g + μ·b   (nesterov)    or    u = b
        O = orthogonalize(u, ns_steps)                      singular values ≈ 1
        W ← W − lr · update_rms·√max(m, n) · O              RMS(O) ≈ 1/√max(m, n)

    Every other parameter (group ``"orthogonalize": False``) gets exactly
    :class:`~minillm.optim.AdamW`'s update with the group's ``betas``, ``eps`` and
    ``weight_decay`` (state "exp_avg", "exp_avg_sq").

    Args:
        params: param-group dicts (see :func:`muon_groups`) or Tensors (then all are Muon's
            and must be matrices).
        lr: learning rate, >= 0 (one schedule sets it for every group).
        momentum: μ in [0, 1).
        nesterov: step along the Nesterov look-ahead (default) or the momentum itself.
        ns_steps: Newton–Schulz iterations, >= 1.
        update_rms: RMS of a Muon update per unit of lr, > 0 (0.2: about AdamW's).
        betas, eps: the AdamW groups' (β1, β2) and epsilon.
        weight_decay: wd >= 0, decoupled, for every group that does not set its own.
    """

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 update_rms: float = 0.2, betas=(0.9, 0.99), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "orthogonalize": True, "momentum": momentum, "nesterov": nesterov,
                                  "ns_steps": ns_steps, "update_rms": update_rms, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay})

    def _validate_group(self, group: dict) -> None:
        check_adam_hyperparameters("Muon", group)     # lr, betas, eps, weight_decay
        group["momentum"] = check_number("Muon", "momentum", group["momentum"], below=1.0)
        group["update_rms"] = check_number("Muon", "update_rms", group["update_rms"], strictly_above=True)
        for key in ("orthogonalize", "nesterov"):
            if not isinstance(group[key], bool):
                raise TypeError(f"Muon: {key}={group[key]!r} is not a bool")
        _check_steps("Muon", "ns_steps", group["ns_steps"])
        if group["orthogonalize"]:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon: an orthogonalized group holds a parameter of shape {tuple(p.shape)}"
                                     f"{f' ({p.name!r})' if getattr(p, 'name', None) else ''}; only matrices "
                                     "(2-D) can be orthogonalized: put it in a group with "
                                     "'orthogonalize': False (AdamW)")

    def _buffer_names(self, group: dict) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["orthogonalize"] else ("exp_avg", "exp_avg_sq")

    def _update(self, param, grad, state: dict, group: dict, scratch) -> None:
        xp = get_array_module(param)
        if not group["orthogonalize"]:
            AdamW._update_arrays(param, grad, *adam_moments(param, state), group, state["step"], scratch)
            return
        lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
        buffer = state.get("momentum_buffer")
        if buffer is None:
            buffer = state["momentum_buffer"] = xp.zeros_like(param)
        # b ← μ·b + (1 − μ)·g, in place
        buffer *= momentum
        xp.multiply(grad, 1.0 - momentum, out=scratch)
        buffer += scratch
        if group["nesterov"]:               # u = (1 − μ)·g + μ·b: scratch already holds (1 − μ)·g
            scratch += momentum * buffer
            direction = scratch
        else:
            direction = buffer
        update = orthogonalize(direction, group["ns_steps"])
        if weight_decay != 0.0:
            xp.multiply(param, 1.0 - lr * weight_decay, out=param)
        scale = lr * group["update_rms"] * math.sqrt(max(param.shape))
        xp.multiply(update, -scale, out=scratch)
        param += scratch


def muon_groups(named_parameters, weight_decay: float, hidden=None) -> list[dict]:
    """Muon's three param groups: hidden matrices (Muon), other matrices, vectors (AdamW).

    ``hidden(name, tensor)`` says which matrices are orthogonalized; the default takes the
    matrices of the transformer blocks (names starting with ``"blocks."``, as in
    :class:`~minillm.nn.GPT`), so the token embedding and the output head stay with AdamW.
    Frozen tensors are left out; a tensor listed twice (tied weights) is kept once.

    Returns ``[{"params", "orthogonalize": True, "weight_decay", "names"},
    {... False, weight_decay ...}, {... False, 0.0 ...}]``: always three groups.
    """
    weight_decay = check_number("muon_groups", "weight_decay", weight_decay)
    if hidden is None:
        def hidden(name, tensor):
            return tensor.ndim == 2 and name.startswith("blocks.")
    return assign_groups(trainable_parameters(named_parameters, "muon_groups"),
                         [{"orthogonalize": True, "weight_decay": weight_decay},
                          {"orthogonalize": False, "weight_decay": weight_decay},
                          {"orthogonalize": False, "weight_decay": 0.0}],
                         lambda name, p: 0 if (p.ndim == 2 and hidden(name, p)) else 1 if p.ndim >= 2 else 2)
