"""Set OpenBLAS's idle-thread wait before NumPy loads OpenBLAS (see :mod:`minillm.host`).

OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` once, when it is loaded, so this must run before the
first ``import numpy`` of the process: ``minillm/__init__.py`` imports :mod:`minillm.host` first,
and host imports this module before NumPy. When NumPy was loaded already, nothing is set and
``NUMPY_LOADED_FIRST`` says so.
"""
import os
import sys

BLAS_THREAD_TIMEOUT = "4"              # OpenBLAS's idle wait: 2^4 cycles, then its threads sleep
NUMPY_LOADED_FIRST = "numpy" in sys.modules
if not NUMPY_LOADED_FIRST:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", BLAS_THREAD_TIMEOUT)
