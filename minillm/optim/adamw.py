"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter), PyTorch's formulas exactly."""
from __future__ import annotations

from minillm.backend import fusable, get_array_module, is_host_array
from minillm.host import parallel_for
from minillm.ops import _cuda
from minillm.optim.optimizer import Optimizer, check_number

_HOST_BLOCK = 1 << 18     # elements per block of a host update: the five slices stay in L2/L3, and each
                          # block is long enough that its array passes, not the Python between them, dominate


def check_adam_hyperparameters(owner: str, group: dict) -> None:
    """Check (and normalise) a group's lr, betas, eps and weight_decay, naming ``owner`` in errors:
    AdamW's groups, and the AdamW groups of :class:`~minillm.optim.Muon`."""
    group["lr"] = check_number(owner, "lr", group["lr"])
    betas = group["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{owner}: betas={betas!r} is invalid; expected a pair (beta1, beta2)")
    group["betas"] = (check_number(owner, "betas[0]", betas[0], below=1.0),
                      check_number(owner, "betas[1]", betas[1], below=1.0))
    group["eps"] = check_number(owner, "eps", group["eps"], strictly_above=True)
    group["weight_decay"] = check_number(owner, "weight_decay", group["weight_decay"])


def adam_moments(param, state: dict):
    """The state's (exp_avg, exp_avg_sq), created as zeros at the first update: AdamW's, and those
    of :class:`~minillm.optim.Muon`'s AdamW groups."""
    if "exp_avg" not in state:
        xp = get_array_module(param)
        state["exp_avg"] = xp.zeros_like(param)
        state["exp_avg_sq"] = xp.zeros_like(param)
    return state["exp_avg"], state["exp_avg_sq"]


class AdamW(Optimizer):
    """Adam with decoupled weight decay.

    For each parameter p with gradient g, at its t-th update (t = 1, 2, ...)::

        p ← p − lr·wd·p                          decoupled decay, applied first
        m ← β1·m + (1 − β1)·g                    first moment (state "exp_avg")
        v ← β2·v + (1 − β2)·g²                   second moment (state "exp_avg_sq")
        m̂ = m / (1 − β1^t),   v̂ = v / (1 − β2^t)
        p ← p − lr · m̂ / (√v̂ + eps)              eps added after the square root

    This is ``torch.optim.AdamW`` (amsgrad=False, maximize=False). The state and the
    arithmetic stay in the parameter's dtype (float32 master weights stay float32). On a GPU
    (CuPy float32 parameters) one fused kernel per parameter does the whole update (the
    same operations in the same order; the compiler may contract a·b + c into one rounding).

    Args:
        params: Tensors, or param-group dicts (see :class:`~minillm.optim.Optimizer`).
        lr: learning rate, >= 0.
        betas: (β1, β2), each in [0, 1).
        eps: > 0, keeps the division finite where v̂ is ~0.
        weight_decay: wd >= 0. Use :func:`~minillm.optim.decay_groups` to exempt biases
            and norm gains.
    """

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def _validate_group(self, group: dict) -> None:
        check_adam_hyperparameters(type(self).__name__, group)

    def _buffer_names(self, group: dict) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _apply_updates(self, updates: list) -> None:
        # Host parameters: the whole step as one list of blocks of about _HOST_BLOCK elements,
        # split across the host threads (minillm.host.parallel_for). Each block runs the array
        # code of _update on cache-sized slices, so every element gets the same arithmetic as
        # one whole-array pass: the result does not depend on the blocks or the threads.
        flat, blocks = [], []
        for param, grad, state, group in updates:
            m, v = adam_moments(param, state)
            if (fusable(param, grad, m, v) or not (is_host_array(param) and is_host_array(grad))
                    or not all(a.flags.c_contiguous for a in (param, m, v))):   # GPU, or no flat view
                self._update(param, grad, state, group, self._scratch_for(param))
                continue
            index = len(flat)
            flat.append((param.reshape(-1), grad.reshape(-1), m.reshape(-1), v.reshape(-1), group, state["step"]))
            blocks.extend((index, lo, min(lo + _HOST_BLOCK, param.size)) for lo in range(0, param.size, _HOST_BLOCK))

        largest = max((entry[0].size for entry in flat), default=0)

        def part(start, stop):
            scratch = {}
            for index, lo, hi in blocks[start:stop]:
                param, grad, m, v, group, _ = flat[index]
                buffer = scratch.get(param.dtype)
                if buffer is None:                               # one per thread and dtype
                    xp = get_array_module(param)
                    buffer = scratch[param.dtype] = xp.empty(min(_HOST_BLOCK, largest), dtype=param.dtype)
                self._update_arrays(param[lo:hi], grad[lo:hi], m[lo:hi], v[lo:hi], group, flat[index][5],
                                    buffer[:hi - lo])

        parallel_for(part, len(blocks), cost_per_item=_HOST_BLOCK)

    def _update(self, param, grad, state: dict, group: dict, scratch) -> None:
        m, v = adam_moments(param, state)
        t = state["step"]
        if fusable(param, grad, m, v) and param.dtype.char == grad.dtype.char == m.dtype.char == v.dtype.char == "f":
            lr, (beta1, beta2), eps, weight_decay = (group["lr"], group["betas"], group["eps"],
                                                     group["weight_decay"])
            bias_correction1 = 1.0 - beta1 ** t
            sqrt_bias_correction2 = (1.0 - beta2 ** t) ** 0.5
            scalar = param.dtype.type                            # the scalars in the parameter's dtype
            _ADAMW_UPDATE(grad, scalar(1.0 - lr * weight_decay), scalar(beta1), scalar(beta2), scalar(1.0 - beta1),
                          scalar(1.0 - beta2), scalar(eps * sqrt_bias_correction2),
                          scalar(-lr * sqrt_bias_correction2 / bias_correction1), param, m, v)
            return
        self._update_arrays(param, grad, m, v, group, t, scratch)

    @staticmethod
    def _update_arrays(param, grad, m, v, group: dict, t: int, scratch) -> None:
        """The update of ``param`` (and m, v) from ``grad`` at step t, as array operations: the
        whole of a parameter, or any slice of it (the host's blocks)."""
        xp = get_array_module(param)
        lr, (beta1, beta2), eps, weight_decay = (group["lr"], group["betas"], group["eps"],
                                                 group["weight_decay"])
        bias_correction1 = 1.0 - beta1 ** t
        sqrt_bias_correction2 = (1.0 - beta2 ** t) ** 0.5
        # Every operation below writes into param, m, v or the scratch array: no temporaries.
        # The scalars are Python floats, so float32 arrays are computed in float32.
        if weight_decay != 0.0:
            xp.multiply(param, 1.0 - lr * weight_decay, out=param)
        # m ← β1·m + (1 − β1)·g
        m *= beta1
        xp.multiply(grad, 1.0 - beta1, out=scratch)
        m += scratch
        # v ← β2·v + (1 − β2)·g²
        v *= beta2
        xp.multiply(grad, grad, out=scratch)
        scratch *= 1.0 - beta2
        v += scratch
        # p ← p − lr/(1−β1^t) · m / (√v / √(1−β2^t) + eps). Multiplying the denominator by
        # √(1−β2^t) gives the same value with one pass fewer:
        #     p ← p − (lr·√(1−β2^t)/(1−β1^t)) · m / (√v + eps·√(1−β2^t))
        xp.sqrt(v, out=scratch)
        scratch += eps * sqrt_bias_correction2
        xp.divide(m, scratch, out=scratch)
        scratch *= -lr * sqrt_bias_correction2 / bias_correction1
        param += scratch


# The whole update of one parameter in one pass (CuPy arrays), in the order of the array code above:
# decay, first moment, second moment, step. The scalars arrive in the parameter's dtype.
_ADAMW_UPDATE = _cuda.Elementwise(
    "T grad, T decay, T beta1, T beta2, T one_minus_beta1, T one_minus_beta2, T denominator_eps, T step_size",
    "T param, T exp_avg, T exp_avg_sq",
    """
    param = param * decay;
    exp_avg = exp_avg * beta1 + grad * one_minus_beta1;
    exp_avg_sq = exp_avg_sq * beta2 + grad * grad * one_minus_beta2;
    param = param + exp_avg / (sqrt(exp_avg_sq) + denominator_eps) * step_size;
    """, "minillm_adamw_update")
