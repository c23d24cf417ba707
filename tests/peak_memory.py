"""One helper for the tests that prove a hostile file is refused in bounded memory."""
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
