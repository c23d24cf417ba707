"""Helpers for the tests that bound memory: a hostile file refused in bounded memory, an op's
forward or backward allocating no more than it should."""
import tracemalloc


def peak_allocation(function) -> tuple[BaseException | None, int]:
    """Run ``function``; return (the exception it raised or None, the peak of the memory Python
    allocated meanwhile, in bytes, as tracemalloc traces it)."""
    tracemalloc.start()
    try:
        function()
        error = None
    except Exception as exc:   # noqa: BLE001 - the caller checks the type
        error = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return error, peak


def traced_peak(function):
    """Run ``function``; return (its result, the peak of the memory Python allocated while it ran,
    in bytes, as tracemalloc traces it). Arrays made before the call are not traced, so the peak
    is that of what the call allocated (freeing older arrays does not lower it)."""
    tracemalloc.start()
    try:
        result = function()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return result, peak
