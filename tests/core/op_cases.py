"""Gradcheck cases for the primitive ops: each names the functional op it exercises, a function
of Tensors, and how to draw its float64 inputs. Shared by the gradcheck test (on the chosen
device) and the strict-backend test (on the emulated GPU)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

import minillm as mm
from minillm import functional as F


@dataclass
class OpCase:
    op: str                        # the name in minillm.functional this case exercises
    fn: Callable                   # Tensors -> Tensor
    inputs: Callable               # rng -> list of host arrays
    label: str = ""
    host_only: bool = False        # needs a dtype (float128) that CuPy lacks

    @property
    def id(self) -> str:
        return f"{self.op}-{self.label}" if self.label else self.op


def normal(*shape):
    return lambda rng: rng.standard_normal(shape)


def positive(*shape):
    return lambda rng: rng.uniform(0.5, 2.0, size=shape)


def away_from_zero(*shape):
    """Values with |x| in [0.2, 2]: kinks at 0 (relu, abs) are not differentiable."""
    return lambda rng: rng.uniform(0.2, 2.0, size=shape) * rng.choice([-1.0, 1.0], size=shape)


def distinct(*shape):
    """A random permutation of well-separated values: no ties for max/maximum."""
    def make(rng):
        n = int(np.prod(shape))
        return (rng.permutation(n) * 0.37 - n * 0.15).reshape(shape)
    return make


def inputs(*makers):
    return lambda rng: [make(rng) for make in makers]


def on_device(like, values):
    """An index array on the same device as ``like`` (device arrays refuse host indices)."""
    return mm.tensor(np.array(values), device=like.device)


def _dropout(x):
    mm.manual_seed(7)  # the same mask on every call, so finite differences see one function
    return F.dropout(x, p=0.3, training=True)


def _split(x):
    first, second, third = F.split(x, [1, 2, 1], axis=1)
    return F.concatenate([third * 3.0, first, second * -2.0], axis=1)


def _where(a, b):
    condition = np.arange(12).reshape(3, 4) % 3 == 0
    return F.where(mm.tensor(condition, device=a.device), a, b)


CASES = [
    OpCase("add", F.add, inputs(normal(3, 4), normal(3, 4))),
    OpCase("add", F.add, inputs(normal(3, 4), normal(4)), "broadcast"),
    OpCase("add", F.add, inputs(normal(2, 1, 4), normal(3, 1)), "broadcast-both"),
    OpCase("sub", F.sub, inputs(normal(3, 4), normal(3, 1)), "broadcast"),
    OpCase("mul", F.mul, inputs(normal(3, 4), normal(1, 4)), "broadcast"),
    OpCase("mul", lambda a: a * a, inputs(normal(5)), "reuse"),
    OpCase("div", F.div, inputs(normal(3, 4), positive(4)), "broadcast"),
    OpCase("neg", F.neg, inputs(normal(3, 4))),
    OpCase("pow", lambda a: F.pow(a, 3), inputs(normal(3, 4)), "scalar"),
    OpCase("pow", lambda a: F.pow(a, 0.5), inputs(positive(3, 4)), "sqrt"),
    OpCase("pow", F.pow, inputs(positive(3, 4), normal(4)), "tensor-broadcast"),
    OpCase("exp", F.exp, inputs(normal(3, 4))),
    OpCase("log", F.log, inputs(positive(3, 4))),
    OpCase("sqrt", F.sqrt, inputs(positive(3, 4))),
    OpCase("abs", F.abs, inputs(away_from_zero(3, 4))),
    OpCase("maximum", F.maximum, inputs(distinct(3, 4), distinct(4)), "broadcast"),
    OpCase("minimum", F.minimum, inputs(distinct(3, 4), distinct(3, 4))),
    OpCase("clip", lambda a: F.clip(a, -0.5, 0.5), inputs(lambda rng: np.array([-2.0, -0.3, 0.1, 0.45, 1.0, 3.0]))),
    OpCase("where", _where, inputs(normal(3, 4), normal(4)), "broadcast"),
    OpCase("cast", lambda a: F.cast(F.cast(a, np.longdouble), np.float64), inputs(normal(3, 4)),
           "roundtrip", host_only=True),
    OpCase("sum", F.sum, inputs(normal(3, 4)), "all"),
    OpCase("sum", lambda a: F.sum(a, axis=(0, 2), keepdims=True), inputs(normal(2, 3, 4)), "axes-keepdims"),
    OpCase("mean", lambda a: F.mean(a, axis=1), inputs(normal(3, 4, 2)), "axis"),
    OpCase("mean", F.mean, inputs(normal(3, 4)), "all"),
    OpCase("max", lambda a: F.max(a, axis=-1), inputs(distinct(3, 5)), "axis"),
    OpCase("max", F.max, inputs(distinct(3, 5)), "all"),
    OpCase("var", lambda a: F.var(a, axis=1), inputs(normal(3, 5)), "unbiased"),
    OpCase("var", lambda a: F.var(a, axis=(0, 1), keepdims=True, correction=0), inputs(normal(3, 4, 2)), "population"),
    OpCase("reshape", lambda a: F.reshape(a, (4, -1)) * mm.tensor(np.arange(6.0), dtype=a.dtype, device=a.device), inputs(normal(2, 3, 4))),
    OpCase("transpose", lambda a: F.transpose(a, (2, 0, 1)), inputs(normal(2, 3, 4))),
    OpCase("permute", lambda a: F.permute(a, (1, 0)), inputs(normal(3, 4))),
    OpCase("swapaxes", lambda a: F.swapaxes(a, 0, 2), inputs(normal(2, 3, 4))),
    OpCase("broadcast_to", lambda a: F.broadcast_to(a, (2, 3, 4)), inputs(normal(3, 1))),
    OpCase("expand", lambda a: F.expand(a, (3, 4)), inputs(normal(4))),
    OpCase("getitem", lambda a: a[1:, ::-2], inputs(normal(4, 5)), "slices"),
    OpCase("getitem", lambda a: F.getitem(a, (on_device(a, [0, 2, 0, 3]), slice(1, 3))), inputs(normal(4, 5)),
           "repeated-int-array"),
    OpCase("getitem", lambda a: a[on_device(a, [True, False, True, True])], inputs(normal(4, 2)), "bool-mask"),
    OpCase("concatenate", lambda a, b: F.concatenate([a, b, a], axis=1), inputs(normal(2, 3), normal(2, 1))),
    OpCase("cat", lambda a, b: F.cat([a, b], axis=0), inputs(normal(2, 3), normal(1, 3))),
    OpCase("stack", lambda a, b: F.stack([a, b], axis=1), inputs(normal(2, 3), normal(2, 3))),
    OpCase("split", _split, inputs(normal(3, 4))),
    OpCase("matmul", F.matmul, inputs(normal(3, 4), normal(4, 2)), "2d"),
    OpCase("matmul", F.matmul, inputs(normal(2, 3, 4), normal(4, 5)), "batched-shared-weight"),
    OpCase("matmul", F.matmul, inputs(normal(2, 1, 3, 4), normal(3, 4, 2)), "broadcast-batch"),
    OpCase("matmul", F.matmul, inputs(normal(4), normal(4, 3)), "vector-matrix"),
    OpCase("matmul", F.matmul, inputs(normal(2, 3, 4), normal(4)), "matrix-vector"),
    OpCase("relu", F.relu, inputs(away_from_zero(3, 4))),
    OpCase("gelu", F.gelu, inputs(normal(3, 4)), "tanh"),
    OpCase("gelu", lambda a: F.gelu(a, approximate="none"), inputs(normal(3, 4)), "exact"),
    OpCase("gelu_composed", F.gelu_composed, inputs(normal(3, 4))),
    OpCase("silu", F.silu, inputs(normal(3, 4))),
    OpCase("silu_composed", F.silu_composed, inputs(normal(3, 4))),
    OpCase("sigmoid", F.sigmoid, inputs(normal(3, 4))),
    OpCase("logsigmoid", F.logsigmoid, inputs(lambda rng: 4 * rng.standard_normal((3, 4)))),
    OpCase("logsigmoid_composed", F.logsigmoid_composed, inputs(normal(3, 4))),
    OpCase("tanh", F.tanh, inputs(normal(3, 4))),
    OpCase("softmax", F.softmax, inputs(normal(3, 5)), "last-axis"),
    OpCase("softmax", lambda a: F.softmax(a, axis=0), inputs(normal(3, 5)), "axis0"),
    OpCase("softmax_composed", F.softmax_composed, inputs(normal(3, 5))),
    OpCase("log_softmax", F.log_softmax, inputs(normal(3, 5))),
    OpCase("log_softmax_composed", F.log_softmax_composed, inputs(normal(3, 5))),
    OpCase("dropout", _dropout, inputs(normal(4, 5))),
]
