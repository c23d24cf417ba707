"""Activation recomputation ("gradient checkpointing") of one module, e.g. a transformer block.

    y = recompute(block, x, position_offset)      # instead of y = block(x, position_offset)

Forward runs ``block`` under ``no_grad``: its ops keep nothing for backward, so the only thing
the graph holds for the whole block is its input ``x`` (one (B, T, C) array) instead of every
activation inside (the norms' inputs, q/k/v, the attention weights, the MLP's hidden layer, the
dropout masks...). Backward runs the block's forward again, this time recording the graph, on
the saved ``x``, back-propagates the incoming gradient through that graph at once and frees it:
one block's activations exist at a time, at the cost of a second forward of every block (about
a third more arithmetic for a training step: forward 1x, backward 2x, plus 1x again).

The recomputed forward is the same arithmetic as the first one, on the same arrays:

- the random numbers (dropout masks) are replayed: the global generator's state is saved before
  the first forward and restored for the second (and put back afterwards, so the stream of
  random numbers the rest of training sees is the one it would see without recomputation);
- the precision policy (``amp.autocast``, whose format is in force during forward but usually
  not during backward) and the fused-kernel switch are those of the first forward;
- the tensors the block computed with are bound again for the recomputation (a
  :func:`~minillm.nn.functional_call` may have ended in between); their values are read when
  backward runs, so they must not change in between (an optimizer step between forward and
  backward would be a bug anyway).

So gradients are bit-identical to the plain graph's on the same device: every op runs on the
same inputs in the same order, and the engine visits the recomputed graph in the same order as
the block's part of the full graph (it sums the gradient of ``x`` from the block's two uses in
the same order). ``tests/nn/test_recompute.py`` checks this for a model with dropout.

The parameters' gradients are accumulated into ``.grad`` by the inner backward, as the plain
graph's backward would; the gradient of ``x`` is returned to the outer graph. The parameters
are inputs of the recorded op only so that it is recorded when ``x`` itself needs no gradient
(a frozen embedding under LoRA).
"""
from __future__ import annotations

from minillm import amp, autograd
from minillm.autograd import Function, enable_grad, no_grad, run_backward
from minillm.backend import fused_kernels_enabled, get_rng_state, set_rng_state, use_fused_kernels
from minillm.tensor import Tensor


def _parameter_bindings(module) -> list[tuple]:
    """(owner module, attribute, tensor) for every parameter attribute of ``module`` and its
    submodules: the tensor it computes with now -- the parameter itself, or what
    :func:`minillm.nn.functional_call` put in its place (it sets the attribute, not the registry)."""
    if not callable(getattr(module, "named_modules", None)):
        return []
    return [(sub, name, sub.__dict__.get(name)) for _, sub in module.named_modules() for name in sub._parameters]


def _trainable(bindings) -> list[Tensor]:
    """The bound tensors that require a gradient, each once."""
    found, seen = [], set()
    for _, _, tensor in bindings:
        if isinstance(tensor, Tensor) and tensor.requires_grad and id(tensor) not in seen:
            seen.add(id(tensor))
            found.append(tensor)
    return found


class Recompute(Function):
    """y = module(x, *args) without keeping the module's activations (module docstring).

    Inputs: x, then the parameters the module uses (their gradients are accumulated directly by
    the recomputed graph's backward, so backward returns None for them).
    Saves: x, the generator's state, the autocast format, the fused-kernel switch and which
    tensor each parameter attribute held.
    ``nests_ops``: the ops inside are recorded by a profiler on their own (the profiler counts
    no time or bytes for this op itself, or they would count twice).
    """

    nests_ops = True

    def __init__(self, module, args: tuple, bindings: list):
        self.module, self.args, self.bindings = module, args, bindings

    def forward(self, x, *parameters):
        self.x = x
        self.rng_state = get_rng_state()
        self.fmt = amp.active_format()
        self.fused = fused_kernels_enabled()
        with no_grad():
            y = self.module(Tensor._from_op(x, None), *self.args)
        return y.data

    def backward(self, gy):
        needs = self.needs_input_grad
        x = Tensor._from_op(self.x, None)
        x.requires_grad = bool(needs[0])
        after = get_rng_state()                  # the stream the rest of training continues from
        set_rng_state(self.rng_state)
        previous_fused = use_fused_kernels(self.fused)
        # the tensors forward computed with (a functional_call may have ended since): bound again
        rebound = [(owner, name, owner.__dict__.get(name)) for owner, name, tensor in self.bindings
                   if owner.__dict__.get(name) is not tensor]
        for owner, name, tensor in self.bindings:
            object.__setattr__(owner, name, tensor)
        try:
            with enable_grad(), amp.autocast(self.fmt.name if self.fmt is not None else "fp32"):
                y = self.module(x, *self.args)
        finally:
            for owner, name, tensor in rebound:
                object.__setattr__(owner, name, tensor)
            use_fused_kernels(previous_fused)
            set_rng_state(after)
        if y.grad_fn is None:                    # nothing inside needs a gradient
            return (None,) * len(needs)
        watcher = getattr(autograd._profiler, "recomputed", None)
        if watcher is not None:                  # a memory ledger is recording: it weighs this graph
            watcher(self, y)
        run_backward(y, gy)
        return (x.grad,) + (None,) * (len(needs) - 1)


def recompute(module, x: Tensor, *args) -> Tensor:
    """``module(x, *args)`` through :class:`Recompute`: the same value, with only ``x`` kept for
    backward (see the module docstring). ``args`` are passed as they are (no tensors that need
    gradients: they would not receive them). Without gradients wanted (``no_grad``, or nothing
    requires grad) this is just ``module(x, *args)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"recompute: x must be a Tensor, got {type(x).__name__}")
    if any(isinstance(a, Tensor) and a.requires_grad for a in args):
        raise ValueError("recompute: only x may require a gradient; the other arguments are passed as constants "
                         "and would get none")
    bindings = _parameter_bindings(module)
    parameters = _trainable(bindings)
    if not autograd.is_grad_enabled() or not (x.requires_grad or parameters):
        return module(x, *args)
    return Recompute(module, args, bindings).apply(x, *parameters)
