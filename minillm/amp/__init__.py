"""Mixed precision: the precision policy (``autocast``, the table and :func:`dispatch`), the formats
(:mod:`minillm.amp.formats`) and the dynamic loss scaler (``GradScaler``, :mod:`minillm.amp.scaler`).

    from minillm import amp
    scaler = amp.GradScaler()                       # fp16 only; bf16 needs none
    with amp.autocast("fp16"):                      # or "bf16"
        logits, loss = model(idx, targets)          # matmuls and attention in fp16
    scaler.scale(loss).backward()                   # gradients of loss · scale
    scaler.unscale_(optimizer)                      # gradients / scale, and an inf/NaN check
    clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)                          # skipped when a gradient overflowed
    scaler.update()                                 # halve on overflow, double after N clean steps

``Trainer`` does all of this when ``precision`` is "fp16" or "bf16" (``minillm train --precision fp16``).

The policy (what runs in which precision)
-----------------------------------------
One table, :data:`POLICY`, names how each op that cares runs, and one rule, :func:`dispatch`, turns
an op's entry and its inputs into what its wrapper runs; no op looks at a dtype or at the active
format to choose its precision. Three groups, as in PyTorch's autocast:

- **low precision** (``LOW``) -- ``linear``, ``matmul``, ``scaled_dot_product_attention``: under
  autocast the op's own low-precision algorithm runs (:mod:`minillm.ops.lowp`): its inputs enter
  the matrix products as values of the format (rounded to it), the products are summed in float32,
  and the result is rounded to the format. Backward does the same (dL/dy and the saved inputs
  enter the matmuls in the format). Weight gradients are rounded to the format like any matmul
  result, then widened to float32 for the float32 master weight (the cast's backward), so the
  engine's rule "a gradient has its input's dtype" holds everywhere.
- **float32** (``FLOAT32``, ``FLOAT32_STORED``) -- ``layer_norm``, ``rms_norm``, ``softmax``,
  ``log_softmax``, ``cross_entropy``: under autocast, means, variances, exponentials, sums and the
  loss are computed in float32 on float16 inputs widened (the loss is float32). One deviation from
  PyTorch, for memory: a norm *stores* its output in the format (``FLOAT32_STORED``), because its
  consumers are matmuls that round it to the format anyway (pre-norm blocks, the final norm).
- **input dtype** (``INPUT_DTYPE``, and every op not in the table) -- the op keeps its inputs'
  dtype: the residual stream stays float32 (float32 + float16 promotes to float32; the gradient is
  cast back to each input's dtype); dropout multiplies in the input dtype. ``gelu``, ``silu``,
  ``swiglu`` and ``rope`` of float16 inputs (autocast or not) compute in float32 and round once to
  float16.

The float32 and input-dtype cases are one mechanism: the op's float32 Function runs inside the
adapter :class:`minillm.ops.lowp.adapter.InFloat32` ("compute in float32, round once"), which
widens float16 inputs, rounds the result once (to the format, to float16, or not at all for a
float32 result) and returns each gradient in its input's dtype. The graph keeps the float16
inputs, never float32 copies; a fused CUDA kernel reads the float16 arrays itself and writes the
rounded result. So the float32 ops hold only the math.

Parameters ("master weights"), their gradients and the optimizer state stay float32.

fp16 and bf16
-------------
- **fp16** (IEEE half: 5 exponent bits, 10 mantissa bits, largest 65504) is a real dtype in NumPy
  and CuPy. Activations flow between ops as float16 arrays, so every array the graph keeps for
  backward is half the size: that is where the memory goes down. Its small range is why fp16
  needs loss scaling (below).
- **bf16** (bfloat16: float32's 8 exponent bits, 7 mantissa bits) has no dtype in NumPy or CuPy.
  It is *emulated*: values are rounded to bfloat16 (round to nearest even on the float32 bit
  pattern, :func:`minillm.amp.formats.round_to_bf16`, tested bit for bit) at exactly the points
  where a bf16 run rounds, and kept in float32 arrays. The numerics are bf16's; the memory is not,
  except where an op keeps an array of its own for backward (the attention weights), which it
  stores as raw bfloat16 bits (uint16). The graph itself must keep float32 arrays: the autograd
  engine adds gradients with ``+`` and checks gradient dtype = input dtype, which rules out
  uint16 stand-ins for bf16 activations.

Where the cast happens (host vs GPU)
------------------------------------
- **NumPy (host)**: float16 matrix products have no BLAS kernel in NumPy (a generic loop, ~100x
  slower than float32), so the host *emulates* a low-precision matmul: the inputs are rounded to
  the format, widened to float32, multiplied with float32 BLAS (float32 accumulation, which is
  also what tensor cores do) and the result rounded to the format. The values are exactly the
  format's; only the summation order differs from a GPU. NumPy's float16 <-> float32 casts are
  not vectorised (~2-4 ns per element), so fp16 on the host is slower than fp32: it is there to
  study the numerics and the memory, not for speed.
- **CuPy (GPU)**: fp16 matmuls run on float16 arrays (cuBLAS GEMM with CUBLAS_COMPUTE_32F and the
  tensor-op algorithm: tensor cores with float32 accumulation, CuPy's default compute type for
  float16). bf16 2-D matmuls (every ``linear``) run on real bfloat16 operands where CuPy takes
  ``ml_dtypes.bfloat16`` (CuPy 14: tensor cores, float32 accumulation, a bfloat16 result widened
  exactly to float32); batched products (attention) stay float32 products of bf16 values, since
  CuPy 14.2's batched matmul refuses the dtype;
  storage and everything else stay float32 holding bf16 values, so bf16 saves time on a GPU but
  no memory. Without ml_dtypes (or with ``MINILLM_BF16_GEMM=0``) bf16 is emulated in float32 there
  too. The strict test backend follows the GPU path (it stands for CuPy).

Dynamic loss scaling (fp16)
---------------------------
Gradients of activations live in float16 too; values under ~6e-8 flush to zero. Multiplying the
loss by S (2^16 to start) scales every gradient by S into float16's range; the optimizer sees
the gradients divided by S again. When a gradient overflows (inf/NaN), the step is skipped and S
is halved; after ``growth_interval`` clean steps in a row S is doubled. bf16 has float32's range
and needs no scaling.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple

from minillm.amp.formats import BF16, FP16, BFloat16Format, Float16Format, LowPrecisionFormat
from minillm.amp.scaler import GradScaler

__all__ = ["AS_IS", "BF16", "FLOAT32", "FLOAT32_STORED", "FP16", "INPUT_DTYPE", "IN_FLOAT32", "LOW", "POLICY",
           "PRECISIONS", "BFloat16Format", "Dispatch", "Float16Format", "GradScaler", "LowPrecisionFormat",
           "active_format", "autocast", "check_precision", "dispatch", "format_for", "is_autocast_enabled"]

PRECISIONS = ("fp32", "fp16", "bf16")
_FORMATS = {"fp16": FP16, "bf16": BF16}


def check_precision(precision: str, where: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{where}={precision!r}; expected one of {PRECISIONS}")
    return precision


def format_for(precision: str) -> LowPrecisionFormat | None:
    """The format for "fp16"/"bf16"; None for "fp32"."""
    return _FORMATS.get(check_precision(precision))


# ---------------------------------------------------------------------------------------------
# autocast
# ---------------------------------------------------------------------------------------------
_active: LowPrecisionFormat | None = None


def active_format() -> LowPrecisionFormat | None:
    """The format of the innermost ``autocast`` in force, or None (float32 everywhere)."""
    return _active


def is_autocast_enabled() -> bool:
    return _active is not None


@contextlib.contextmanager
def autocast(precision: str = "fp16", enabled: bool = True):
    """Run the ops inside in ``precision`` ("fp16", "bf16"; "fp32" or enabled=False: off), by the
    policy in the module docstring. Nests; the previous policy comes back on exit. Backward may run
    outside: each op records its format when it runs forward."""
    global _active
    fmt = format_for(precision) if enabled else None
    previous = _active
    _active = fmt
    try:
        yield fmt
    finally:
        _active = previous


# ---------------------------------------------------------------------------------------------
# The policy table and the one dispatch rule
# ---------------------------------------------------------------------------------------------
LOW = "low precision"                  # under autocast: the op's low-precision algorithm (ops/lowp)
FLOAT32 = "float32"                    # under autocast: float16 inputs widened, a float32 result
FLOAT32_STORED = "float32, stored"     # under autocast: computed in float32, the result stored in the format
INPUT_DTYPE = "input dtype"            # always: float16 inputs computed in float32, rounded once to float16

POLICY = {
    "linear": LOW, "matmul": LOW, "scaled_dot_product_attention": LOW,
    "layer_norm": FLOAT32_STORED, "rms_norm": FLOAT32_STORED,
    "softmax": FLOAT32, "log_softmax": FLOAT32, "cross_entropy": FLOAT32,
    "gelu": INPUT_DTYPE, "silu": INPUT_DTYPE, "swiglu": INPUT_DTYPE, "rope": INPUT_DTYPE,
}                                      # every other op runs in its inputs' dtype and never asks

AS_IS = "as is"                        # what dispatch() answers: the float32 op on the inputs as given,
IN_FLOAT32 = "in float32"              # ... the float32 op inside InFloat32, or (LOW) the low-precision op


class Dispatch(NamedTuple):
    """How an op runs (:func:`dispatch`): ``kind`` AS_IS, LOW or IN_FLOAT32, and ``fmt``: the
    format of the low-precision algorithm (LOW), or the format the float32 result is rounded to
    (IN_FLOAT32; None: a float32 result, not rounded)."""

    kind: str
    fmt: LowPrecisionFormat | None = None


_AS_IS = Dispatch(AS_IS)


def dispatch(op: str, *inputs) -> Dispatch:
    """How ``op`` (a key of :data:`POLICY`) runs now on ``inputs`` (arrays or Tensors; None is
    skipped): the one dispatch rule, asked by each op's wrapper.

    - LOW: under autocast ``(LOW, format)``, else as is;
    - FLOAT32_STORED: under autocast ``(IN_FLOAT32, format)`` (the result stored in the format), else as is;
    - FLOAT32: under autocast with a float16 input ``(IN_FLOAT32, None)`` (a float32 result), else as is;
    - INPUT_DTYPE: with a float16 input ``(IN_FLOAT32, FP16)`` (rounded back to float16), else as is.
    """
    group = POLICY[op]
    fmt = _active
    if group == LOW:
        return Dispatch(LOW, fmt) if fmt is not None else _AS_IS
    if group == FLOAT32_STORED:
        return Dispatch(IN_FLOAT32, fmt) if fmt is not None else _AS_IS
    half = any(x is not None and x.dtype == FP16.storage_dtype for x in inputs)
    if group == FLOAT32:
        return Dispatch(IN_FLOAT32, None) if fmt is not None and half else _AS_IS
    return Dispatch(IN_FLOAT32, FP16) if half else _AS_IS          # INPUT_DTYPE
