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

# Under an MPI launcher with several ranks on this machine (mpiexec -n N), each rank gets an equal
# share of the cores unless a thread count was given: N processes each running as many BLAS and
# host threads as there are cores would oversubscribe them N times over.
THREAD_VARIABLES = ("MINILLM_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
LOCAL_RANKS_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE")       # MPICH hydra, Open MPI
RANK_THREADS_SET = False
if not NUMPY_LOADED_FIRST and not any(os.environ.get(name) for name in THREAD_VARIABLES):
    for _name in LOCAL_RANKS_VARIABLES:
        _value = os.environ.get(_name, "")
        if _value.isdigit() and int(_value) > 1:
            _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[_variable] = str(max(1, _cores // int(_value)))
            RANK_THREADS_SET = True
            break
