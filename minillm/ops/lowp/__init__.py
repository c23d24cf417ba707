"""The low-precision side of the ops: what runs under ``amp.autocast`` (see :mod:`minillm.amp`).

The float32 ops (``minillm/ops/*.py``) hold the math; this package holds what mixed precision
adds to them, so that the float32 reading path never meets a dtype check:

- ``linear.py``, ``matmul.py``, ``attention.py`` -- the three real low-precision algorithms
  (``*LowPrecision``): the inputs enter the matrix products as values of the format, the sums run
  in float32, the results are rounded to the format.
"""
