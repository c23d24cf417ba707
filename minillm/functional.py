"""The flat namespace of differentiable ops, like ``torch.nn.functional``::

    from minillm import functional as F
    y = F.softmax(F.matmul(q, F.transpose(k, (0, 2, 1))), axis=-1)

Every name here is a wrapper around one Function subclass in :mod:`minillm.ops` (or a short
composition of them). ``*_composed`` twins build fused ops from primitives for testing.
"""
from minillm.ops.activation import (
    gelu, gelu_composed, log_softmax, log_softmax_composed, relu, sigmoid, silu, silu_composed,
    softmax, softmax_composed, tanh,
)
from minillm.ops.dropout import dropout
from minillm.ops.elementwise import (
    abs, add, cast, clip, div, exp, log, maximum, minimum, mul, neg, pow, sqrt, sub, where,
)
from minillm.ops.linalg import matmul
from minillm.ops.reduce import max, mean, sum, var
from minillm.ops.shape import (
    broadcast_to, cat, concatenate, expand, getitem, permute, reshape, split, stack, swapaxes,
    transpose,
)

__all__ = [
    "abs", "add", "broadcast_to", "cast", "cat", "clip", "concatenate", "div", "dropout", "exp",
    "expand", "gelu", "gelu_composed", "getitem", "log", "log_softmax", "log_softmax_composed",
    "matmul", "max", "maximum", "mean", "minimum", "mul", "neg", "permute", "pow", "relu",
    "reshape", "sigmoid", "silu", "silu_composed", "softmax", "softmax_composed", "split",
    "sqrt", "stack", "sub", "sum", "swapaxes", "tanh", "transpose", "var", "where",
]
