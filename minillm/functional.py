"""The flat namespace of differentiable ops, like ``torch.nn.functional``::

    from minillm import functional as F
    y = F.softmax(F.matmul(q, F.transpose(k, (0, 2, 1))), axis=-1)

Every name here is a wrapper around one Function subclass in :mod:`minillm.ops` (or a short
composition of them). ``*_composed`` twins build fused ops from primitives for testing.
"""
from minillm.ops.activation import (
    gelu,
    gelu_composed,
    log_softmax,
    log_softmax_composed,
    logsigmoid,
    logsigmoid_composed,
    relu,
    sigmoid,
    silu,
    silu_composed,
    softmax,
    softmax_composed,
    swiglu,
    swiglu_composed,
    tanh,
)
from minillm.ops.attention import (
    causal_mask,
    repeat_kv,
    rope,
    rope_composed,
    rope_tables,
    scaled_dot_product_attention,
    scaled_dot_product_attention_composed,
)
from minillm.ops.dropout import dropout
from minillm.ops.elementwise import (
    abs,
    add,
    cast,
    clip,
    div,
    exp,
    log,
    maximum,
    minimum,
    mul,
    neg,
    pow,
    sqrt,
    sub,
    where,
)
from minillm.ops.embedding import embedding, embedding_composed
from minillm.ops.linalg import matmul
from minillm.ops.linear import linear, linear_composed
from minillm.ops.loss import cross_entropy, cross_entropy_composed
from minillm.ops.norm import layer_norm, layer_norm_composed, rms_norm, rms_norm_composed
from minillm.ops.reduce import max, mean, sum, var
from minillm.ops.shape import (
    broadcast_to,
    cat,
    concatenate,
    expand,
    getitem,
    permute,
    reshape,
    split,
    stack,
    swapaxes,
    transpose,
)

__all__ = [
    "abs", "add", "broadcast_to", "cast", "cat", "clip", "concatenate", "div", "dropout", "exp",
    "expand", "gelu", "gelu_composed", "getitem", "log", "log_softmax", "log_softmax_composed",
    "matmul", "max", "maximum", "mean", "minimum", "mul", "neg", "permute", "pow", "relu",
    "logsigmoid", "logsigmoid_composed", "reshape", "sigmoid", "silu", "silu_composed", "softmax",
    "softmax_composed", "split",
    "sqrt", "stack", "sub", "sum", "swapaxes", "tanh", "transpose", "var", "where",
    # fused model ops and their composed twins
    "causal_mask", "cross_entropy", "cross_entropy_composed", "embedding", "embedding_composed",
    "layer_norm", "layer_norm_composed", "linear", "linear_composed", "repeat_kv", "rms_norm",
    "rms_norm_composed", "rope", "rope_composed", "rope_tables", "scaled_dot_product_attention",
    "scaled_dot_product_attention_composed", "swiglu", "swiglu_composed",
]
