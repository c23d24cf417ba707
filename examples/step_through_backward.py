"""Step through a backward pass: where a gradient comes from, op by op.

A three-class classifier on two examples: logits = x @ W, p = softmax(logits), and the loss
is the mean negative log-probability of the right classes. The script prints what
``Softmax.backward`` receives (gy), what it saved in forward (y), what it returns (gx), checks
that against the formula by hand, and finishes with ``gradcheck``.

    python examples/step_through_backward.py           # print everything
    python examples/step_through_backward.py --pdb     # stop inside Softmax.backward in pdb

In pdb, ``p gy``, ``p self.y``, ``n`` (next line), ``p gx``, ``where`` (the engine's frames:
run_backward -> Softmax.backward) and ``c`` (continue) are the useful commands.
"""
from __future__ import annotations

import argparse
import dis
import pdb

import numpy as np

import minillm as mm
from minillm import functional as F
from minillm.ops.activation import Softmax


def build(dtype=np.float64):
    mm.manual_seed(0)
    x = mm.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=dtype, name="x")                 # (B=2, C=2)
    w = mm.tensor([[0.1, -0.2, 0.3], [0.4, 0.0, -0.1]], dtype=dtype, requires_grad=True, name="W")
    targets = np.array([2, 0])                                                        # right classes
    return x, w, targets


def loss_fn(x, w, targets):
    logits = F.matmul(x, w)                                   # (2, 3)
    probs = F.softmax(logits, axis=-1)                        # (2, 3), rows sum to 1
    picked = probs[np.arange(2), targets]                     # (2,) p of the right class
    return F.mean(F.neg(F.log(picked))), probs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pdb", action="store_true", help="break inside Softmax.backward")
    args = parser.parse_args()
    np.set_printoptions(precision=5, suppress=True)

    x, w, targets = build()
    loss, probs = loss_fn(x, w, targets)
    print("loss =", loss)
    print("probs =", probs)

    # Watch the gradient that arrives at the softmax output: this is Softmax.backward's gy.
    probs.register_hook(lambda gy: print("\nSoftmax.backward receives gy = dL/dprobs:\n", gy.numpy()))
    if args.pdb:
        code = Softmax.backward.__code__
        first_line = next(line for _, line in dis.findlinestarts(code) if line and line > code.co_firstlineno)
        debugger = pdb.Pdb()
        debugger.set_break(code.co_filename, first_line)
        print(f"\nbreakpoint at {code.co_filename}:{first_line} (Softmax.backward); pdb stops first "
              "at the start of loss.backward: type 'c' to run to the breakpoint")
        debugger.runcall(loss.backward, retain_graph=True)
    else:
        loss.backward(retain_graph=True)   # keep the graph so we can look at what was saved

    softmax_node = probs.grad_fn
    print("\nSoftmax saved for backward: y =\n", softmax_node.y)

    # Redo by hand what the engine did: call the node's backward with an upstream gradient.
    upstream = np.zeros((2, 3))
    upstream[np.arange(2), targets] = -0.5 / probs.numpy()[np.arange(2), targets]   # d mean(-log p)/dp
    gx = softmax_node.backward(upstream)
    y = softmax_node.y
    by_hand = y * (upstream - (upstream * y).sum(axis=-1, keepdims=True))
    print("\nSoftmax.backward returns gx = dL/dlogits:\n", gx)
    print("y * (gy - sum(gy * y)) by hand:\n", by_hand)
    print("for cross-entropy that is (p - onehot) / B:\n", (y - np.eye(3)[targets]) / 2)
    print("\ndL/dW = x^T @ gx:\n", w.grad)

    # And the check every op in minillm passes: finite differences with a random upstream gradient.
    ok = mm.gradcheck(lambda w_: loss_fn(x, w_, targets)[0], [w.detach()])
    print("\ngradcheck(loss wrt W):", ok)
    ok = mm.gradcheck(F.softmax, [mm.tensor(np.random.default_rng(0).standard_normal((2, 3)))])
    print("gradcheck(softmax):", ok)


if __name__ == "__main__":
    main()
