"""The host (CPU) side of execution: how big arrays are allocated, and elementwise work on threads.

**Allocation.** A training step allocates and frees the same large arrays every step (the
activations, their gradients). glibc's ``malloc`` serves arrays above its mmap threshold (128 KiB
at first, rising by itself up to 32 MiB) with a fresh ``mmap`` and gives them back to the system
with ``munmap`` when they are freed, so every step touches its activations' pages for the first
time again: on the project's 2-core machine that was some 58,000 page faults (230 MB of zeroed
pages) per step of config C, about a fifth of the step. :func:`tune_allocator` raises glibc's mmap
threshold to 256 MiB and its trim threshold to 1 GiB (``mallopt``), so freed activations stay in
the heap and the next step reuses them. The peak resident memory is unchanged (the same arrays are
alive at the peak); what changes is that the process keeps up to its peak after the step instead
of returning it. It is applied once when minillm is imported, on glibc only; set
``MINILLM_HOST_ALLOCATOR=system`` in the environment to leave malloc as it is.

**Threads.** NumPy runs every ufunc and reduction on one core, while OpenBLAS runs matrix
products on all of its threads; on a 2-thread budget the non-product half of a training step
(GELU, softmax, layer norm, the optimizer) would run at half speed. :func:`parallel_for` splits
such work into contiguous ranges, one per thread of a small persistent pool (NumPy releases the
GIL inside its loops). The split is by whole rows or whole elements, never inside a reduction,
so every element is computed by the same arithmetic as on one thread: the results are
bit-identical for any thread count. Small work (below ``min_size`` elements) stays on the calling
thread. Only host (NumPy) arrays take this path: the GPU has its own kernels.

This pays only if OpenBLAS's own threads are not in the way. After each product they busy-wait
(``sched_yield`` in a loop) for 2^28 cycles by default before they sleep, so a pool thread that
starts right after a product shares its core with a spinning BLAS thread, and measured on the
project's 2-core machine the split then gained nothing. OpenBLAS reads its wait from
``OPENBLAS_THREAD_TIMEOUT`` (2^value cycles, 4 to 30) once, when NumPy loads it; so when minillm
is imported *before* NumPy, this module sets ``OPENBLAS_THREAD_TIMEOUT=4`` (unless it is set
already) and the pool gets as many threads as BLAS (``OPENBLAS_NUM_THREADS``,
``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS``, else the CPUs this process may use). When NumPy was
loaded first with the default wait, the pool keeps one thread (everything on the calling thread).
``MINILLM_NUM_THREADS`` or :func:`set_num_threads` override either choice.

Work made of many *small* matrix products (attention's per-head products) goes the other way:
each product is too small for OpenBLAS to gain from splitting it, so :func:`parallel_for` hands
whole items to the threads and :class:`single_blas_thread` keeps each part's products on its own
thread (the OpenBLAS thread count is set at run time through the library's own function, looked
up once).
"""
from __future__ import annotations

# first: it sets OpenBLAS's wait before NumPy loads OpenBLAS
from minillm._blas_env import NUMPY_LOADED_FIRST

# isort: split

import ctypes
import os
import platform
import threading

# ---------------------------------------------------------------------------------------------
# Allocation
# ---------------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD = -1                 # mallopt parameter numbers (glibc's malloc.h)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 256 << 20       # arrays below this come from the heap and are reused
TRIM_THRESHOLD_BYTES = 1 << 30         # the heap keeps up to this much free memory at its top
_allocator_tuned = False


def tune_allocator() -> bool:
    """Set glibc's mmap and trim thresholds (see the module docstring); True when applied.

    Does nothing (False) off glibc, or with ``MINILLM_HOST_ALLOCATOR=system`` in the environment.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    if os.environ.get("MINILLM_HOST_ALLOCATOR", "").strip().lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1 and ok
    except (OSError, AttributeError):   # no libc.so.6, or no mallopt in it
        return False
    _allocator_tuned = ok
    return ok


def allocator_tuned() -> bool:
    """Whether :func:`tune_allocator` took effect in this process."""
    return _allocator_tuned


# ---------------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------------
MIN_PARALLEL_SIZE = 1 << 18            # elements: below this a split costs more than it saves (measured: a
                                       # part handed to a pool thread costs ~70-100 us on the 2-core machine)
_ENV_THREADS = ("MINILLM_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _blas_threads_sleep_soon() -> bool:
    """Whether OpenBLAS's idle threads give their cores back within a short wait (see above)."""
    value = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "").strip()
    if not value:
        return not NUMPY_LOADED_FIRST
    try:
        return int(value) <= 16
    except ValueError:
        return False


def _default_threads() -> int:
    explicit = os.environ.get("MINILLM_NUM_THREADS", "").strip()
    if not explicit and not _blas_threads_sleep_soon():
        return 1
    for name in _ENV_THREADS:
        value = os.environ.get(name, "").strip()
        if value:
            try:
                return max(1, int(value.split(",")[0]))
            except ValueError:
                continue
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:             # not on Linux
        return max(1, os.cpu_count() or 1)


_threads = _default_threads()
_workers: list = []                    # the pool: _threads - 1 _Worker threads, made on first use
_pool_lock = threading.Lock()
_in_use = threading.Lock()             # held by the one parallel_for running on the pool
_inside = threading.local()            # set while a thread runs a parallel_for part


class _Worker:
    """One pool thread, handed a part through two locks: ``go`` (released when a part is
    ready) and ``done`` (released when it has run). A lock handoff wakes a sleeping thread in a
    few tens of microseconds, a third of what a ThreadPoolExecutor future costs; idle, the
    thread sleeps in ``go.acquire()`` and uses no CPU."""

    def __init__(self, index: int):
        self.go, self.done = threading.Lock(), threading.Lock()
        self.go.acquire()
        self.done.acquire()
        self.part, self.error = None, None
        threading.Thread(target=self._loop, name=f"minillm-host-{index}", daemon=True).start()

    def _loop(self) -> None:
        while True:
            self.go.acquire()
            fn, start, stop = self.part
            try:
                _run_part(fn, start, stop)
            except BaseException as exc:   # handed to the caller by parallel_for
                self.error = exc
            # Drop this task's function before waiting for the next: its closure holds the caller's
            # arrays, which would otherwise stay alive (and count in memory peaks) until then.
            self.part = fn = None
            self.done.release()

    def start(self, fn, start: int, stop: int) -> None:
        self.part, self.error = (fn, start, stop), None
        self.go.release()

    def wait(self):
        """Block until the part has run; its exception, or None."""
        self.done.acquire()
        return self.error


def num_threads() -> int:
    """How many threads :func:`parallel_for` uses (the calling thread included)."""
    return _threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (1: everything on the calling thread). Results do not depend on it."""
    global _threads
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"set_num_threads: n={n!r}; expected an int >= 1")
    with _pool_lock:
        _threads = n                   # surplus workers stay asleep; missing ones are made on use


BLAS_SET_THREADS = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads")
BLAS_GET_THREADS = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                    "openblas_get_num_threads64_", "openblas_get_num_threads")
_blas_functions: tuple | None = None   # (get, set) of the loaded OpenBLAS, () when none: looked up once
_single_blas_lock = threading.Lock()
_single_blas_depth = 0                 # how many single_blas_thread() blocks are open
_single_blas_restore = 1               # the thread count to restore when the last one closes


def _openblas_thread_functions() -> tuple:
    """``(get, set)``: the thread-count functions of the OpenBLAS that NumPy loaded (found in
    /proc/self/maps), or ``()`` where there is none. Looked up once (reading the map and opening
    the library costs ~0.5 ms); calling them afterwards costs a fraction of a microsecond."""
    global _blas_functions
    if _blas_functions is not None:
        return _blas_functions
    found: tuple = ()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
            paths = {line.split()[-1] for line in handle if "openblas" in line.lower() and "/" in line}
    except OSError:
        paths = set()
    for path in sorted(paths):
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        get = next((getattr(library, name) for name in BLAS_GET_THREADS if hasattr(library, name)), None)
        put = next((getattr(library, name) for name in BLAS_SET_THREADS if hasattr(library, name)), None)
        if get is not None and put is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            put.restype, put.argtypes = None, [ctypes.c_int]
            found = (get, put)
            break
    _blas_functions = found
    return found


def set_blas_threads(count: int) -> bool:
    """Set the thread count of the OpenBLAS that NumPy loaded (found in /proc/self/maps), at run
    time; False where there is no such library or function (then the environment's setting stays).

    Why: a decode step multiplies (rows, C) by (C, C') matrices: at 16 rows OpenBLAS splits them
    over its threads, and on a 2-core machine whose other core is busy (the HTTP side of
    ``minillm serve``, or another process) each product then waits for a descheduled thread: measured on the
    project's machine, a 16-row step of the main job's model took 276 ms with 2 threads and 8.7 ms
    with 1."""
    functions = _openblas_thread_functions()
    if not functions:
        return False
    functions[1](int(count))
    return True


class single_blas_thread:
    """``with single_blas_thread(): ...`` runs the block's matrix products on one OpenBLAS thread,
    then restores the count it found (no-op where NumPy's BLAS is not OpenBLAS).

    For work that :func:`parallel_for` spreads over the host threads and that calls small matrix
    products in each part (attention's per-head products): each part then runs its products on
    its own core, instead of every product being split over all cores one after another (which
    for products this small costs more in hand-offs than it gains). A side effect worth knowing:
    OpenBLAS's results differ in the last bits between 1 and several threads, so products run
    inside the block give the same bits whatever the thread counts. Blocks may nest and may be
    opened by several threads; the count is restored when the last one closes."""

    def __enter__(self):
        global _single_blas_depth, _single_blas_restore
        functions = _openblas_thread_functions()
        if functions:
            with _single_blas_lock:
                if _single_blas_depth == 0:
                    _single_blas_restore = functions[0]()
                    if _single_blas_restore != 1:
                        functions[1](1)
                _single_blas_depth += 1
        return self

    def __exit__(self, *exc) -> None:
        global _single_blas_depth
        functions = _openblas_thread_functions()
        if functions:
            with _single_blas_lock:
                _single_blas_depth -= 1
                if _single_blas_depth == 0 and _single_blas_restore != 1:
                    functions[1](_single_blas_restore)


def _get_workers(count: int) -> list:
    with _pool_lock:
        while len(_workers) < count:
            _workers.append(_Worker(len(_workers)))
        return _workers[:count]


def _forget_pool_after_fork() -> None:
    # A forked child has none of the pool's threads: make new ones on first use.
    global _workers
    _workers = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _run_part(fn, start: int, stop: int) -> None:
    _inside.active = True
    try:
        fn(start, stop)
    finally:
        _inside.active = False


def parallel_for(fn, n: int, cost_per_item: int = 1, min_size: int | None = None) -> None:
    """Call ``fn(start, stop)`` on contiguous ranges covering ``range(n)``, in parallel.

    ``n`` items (rows, or elements) each cost about ``cost_per_item`` elements of work; below
    ``min_size`` elements in all (default :data:`MIN_PARALLEL_SIZE`, read at each call), or with
    one thread, or while another thread of the program uses the pool, or when called from inside another
    ``parallel_for``, it is one call ``fn(0, n)`` on this thread. Otherwise the items are split
    into :func:`num_threads` nearly equal ranges, the last run by the calling thread; ``fn`` must
    write only the outputs of its own range. An exception in any part is raised here after all
    parts have finished.
    """
    parts = min(_threads, n)
    min_size = MIN_PARALLEL_SIZE if min_size is None else min_size
    if parts <= 1 or n * cost_per_item < min_size or getattr(_inside, "active", False):
        fn(0, n)
        return
    if not _in_use.acquire(blocking=False):   # another thread of the program is using the pool
        fn(0, n)
        return
    try:
        bounds = [n * i // parts for i in range(parts + 1)]
        workers = _get_workers(parts - 1)
        for i, worker in enumerate(workers):
            worker.start(fn, bounds[i], bounds[i + 1])
        error = None
        try:
            _run_part(fn, bounds[-2], bounds[-1])
        except BaseException as exc:   # wait for the other parts first, then raise
            error = exc
        for worker in workers:
            worker_error = worker.wait()
            error = worker_error if error is None else error
    finally:
        _in_use.release()
    if error is not None:
        raise error


