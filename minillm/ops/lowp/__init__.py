"""The low-precision side of the ops: what runs under ``amp.autocast`` (see :mod:`minillm.amp`).

The float32 ops (``minillm/ops/*.py``) hold the math; this package holds what mixed precision
adds to them, so the float32 reading path never meets a dtype check. Each op's wrapper asks
:func:`minillm.amp.dispatch` once and runs one of:

- the float32 op as it is (no autocast, or nothing to change);
- ``adapter.py``: :class:`~minillm.ops.lowp.adapter.InFloat32` around the float32 op -- "compute
  in float32, round once" -- for the norms, softmax, log_softmax and cross_entropy under autocast
  and for GELU, SiLU, SwiGLU and RoPE of float16 inputs;
- ``linear.py``, ``matmul.py``, ``attention.py``: the three real low-precision algorithms
  (``*LowPrecision``), where the inputs enter the matrix products as values of the format, the
  sums run in float32 and the results are rounded to the format.
"""
