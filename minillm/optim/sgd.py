"""SGD with optional momentum, dampening, Nesterov momentum and L2 weight decay (PyTorch's)."""
from __future__ import annotations

from minillm.backend import get_array_module
from minillm.optim.optimizer import Optimizer, check_number


class SGD(Optimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD`` (maximize=False).

    For each parameter p with gradient g::

        d = g + wd·p                                    weight decay as an L2 term (coupled)
        if momentum μ != 0:
            b = d                          on the first update (state "momentum_buffer")
            b ← μ·b + (1 − dampening)·d    afterwards
            d = d + μ·b   if nesterov  else  b
        p ← p − lr·d

    Args:
        params: Tensors, or param-group dicts (see :class:`~minillm.optim.Optimizer`).
        lr: learning rate, >= 0.
        momentum: μ >= 0 (0 keeps no state).
        weight_decay: wd >= 0.
        nesterov: use Nesterov momentum (needs momentum > 0 and dampening 0).
        dampening: scales the new gradient in the momentum average, in [0, 1].
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, dampening: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "dampening": dampening,
                                  "weight_decay": weight_decay, "nesterov": nesterov})

    def _validate_group(self, group: dict) -> None:
        group["lr"] = check_number("SGD", "lr", group["lr"])
        group["momentum"] = check_number("SGD", "momentum", group["momentum"])
        group["dampening"] = check_number("SGD", "dampening", group["dampening"])
        if group["dampening"] > 1.0:
            raise ValueError(f"SGD: dampening={group['dampening']!r} is invalid; expected a "
                             "number in [0, 1]")
        group["weight_decay"] = check_number("SGD", "weight_decay", group["weight_decay"])
        if not isinstance(group["nesterov"], bool):
            raise TypeError(f"SGD: nesterov={group['nesterov']!r} is not a bool")
        if group["nesterov"] and (group["momentum"] == 0.0 or group["dampening"] != 0.0):
            raise ValueError(f"SGD: nesterov=True needs momentum > 0 and dampening = 0, got "
                             f"momentum={group['momentum']!r}, dampening={group['dampening']!r}")

    def _buffer_names(self, group: dict) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0.0 else ()

    def _buffers_complete(self, group: dict, names: set) -> bool:
        # Momentum switched on after some plain steps: the buffer is made at the next update.
        return names <= set(self._buffer_names(group))

    def _update(self, param, grad, state: dict, group: dict, scratch) -> None:
        xp = get_array_module(param)
        lr, momentum, dampening = group["lr"], group["momentum"], group["dampening"]
        weight_decay, nesterov = group["weight_decay"], group["nesterov"]
        # d: the descent direction. It is the grad itself (read-only) until it must differ from
        # it; then it lives in `scratch`.
        d = grad
        if weight_decay != 0.0:
            xp.multiply(param, weight_decay, out=scratch)
            scratch += grad
            d = scratch
        if momentum != 0.0:
            buffer = state.get("momentum_buffer")
            if buffer is None:
                # b = d, copied: b is updated in place later and d may be the grad itself.
                buffer = state["momentum_buffer"] = xp.array(d, dtype=param.dtype, copy=True)
            else:
                buffer *= momentum
                if dampening == 0.0:
                    buffer += d
                else:
                    xp.multiply(d, 1.0 - dampening, out=scratch)
                    buffer += scratch
            if nesterov:
                # p ← p − lr·(d + μ·b), done as p − lr·d − lr·μ·b: two in-place steps, no
                # temporary (nesterov implies dampening 0, so d is intact here).
                xp.multiply(d, -lr, out=scratch)
                param += scratch
                xp.multiply(buffer, -lr * momentum, out=scratch)
                param += scratch
                return
            d = buffer
        # p ← p − lr·d
        xp.multiply(d, -lr, out=scratch)
        param += scratch
