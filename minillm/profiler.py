"""An op-level profiler: where the time of a forward and backward pass goes, op type by op type.

    from minillm import profiler
    with profiler.profile() as prof:
        logits, loss = model(idx, targets)
        loss.backward()
    print(prof.table())                  # one row per op type: calls, forward ms, backward ms, share
    prof.to_dict()                       # the same numbers, JSON-ready

Every differentiable op runs through ``Function.apply`` (forward) and the engine's call of its
``backward``; while a profile records, both are timed with ``time.perf_counter``. On a GPU the
device is synchronised before and after each op (``sync=True``, the default), so an op's time is
its own kernels' time plus its Python overhead, not the time of work queued before it -- which
also means a profiled step runs slower than an unprofiled one (no overlap of Python and GPU).
Time spent outside ops (the optimizer, data movement) is not in the table; ``prof.wall_s`` is the
wall time of the whole ``with`` block, so the difference shows how much that is.

An op type is the Function's class name; a float32 op run by mixed precision's adapter shows as
``InFloat32(LayerNorm)`` (:mod:`minillm.ops.lowp.adapter`).

When no profile records, the cost on the hot path is one check of a module variable per op.
"""
from __future__ import annotations

import contextlib
import time

from minillm import autograd
from minillm.backend import device_of, synchronize


class Profile:
    """Per op type: calls, forward seconds, backward seconds (see the module docstring)."""

    def __init__(self, sync: bool = True):
        self.sync = sync
        self.ops: dict[str, dict] = {}
        self.wall_s = 0.0

    def _synchronize(self, arrays) -> None:
        if self.sync:
            for a in arrays:
                if a is not None and hasattr(a, "dtype") and device_of(a) == "cuda":
                    synchronize("cuda")
                    return

    def start(self, arrays) -> float:
        self._synchronize(arrays)
        return time.perf_counter()

    def stop(self, fn, phase: str, started: float, outputs) -> None:
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        self._synchronize(outputs)
        entry = self.ops.setdefault(fn.op_type(), {"calls": 0, "forward_s": 0.0, "backward_s": 0.0})
        if phase == "forward":
            entry["calls"] += 1
        entry[phase + "_s"] += time.perf_counter() - started

    def total_s(self) -> float:
        return sum(e["forward_s"] + e["backward_s"] for e in self.ops.values())

    def to_dict(self) -> dict:
        return {"wall_s": self.wall_s, "ops_s": self.total_s(), "sync": self.sync, "ops": self.ops}

    def table(self, sort_by: str = "total", limit: int | None = None) -> str:
        """A Markdown table, one row per op type, sorted by total (or "forward", "backward", "calls")."""
        keys = {"total": lambda e: e["forward_s"] + e["backward_s"], "forward": lambda e: e["forward_s"],
                "backward": lambda e: e["backward_s"], "calls": lambda e: e["calls"]}
        if sort_by not in keys:
            raise ValueError(f"Profile.table: sort_by={sort_by!r}; expected one of {sorted(keys)}")
        total = self.total_s() or 1.0
        rows = sorted(self.ops.items(), key=lambda item: -keys[sort_by](item[1]))[:limit]
        lines = ["| op | calls | forward ms | backward ms | total ms | share of op time |", "|---|---|---|---|---|---|"]
        for name, e in rows:
            both = e["forward_s"] + e["backward_s"]
            lines.append(f"| {name} | {e['calls']} | {1e3 * e['forward_s']:.2f} | {1e3 * e['backward_s']:.2f} | "
                         f"{1e3 * both:.2f} | {100 * both / total:.1f}% |")
        lines.append(f"\nop time {1e3 * self.total_s():.1f} ms of {1e3 * self.wall_s:.1f} ms wall"
                     f"{' (device synchronised around every op)' if self.sync else ''}")
        return "\n".join(lines)


@contextlib.contextmanager
def profile(sync: bool = True):
    """Record every op's forward and backward time inside the block (see the module docstring)."""
    prof = Profile(sync)
    previous = autograd.set_profiler(prof)
    started = time.perf_counter()
    try:
        yield prof
    finally:
        prof.wall_s = time.perf_counter() - started
        autograd.set_profiler(previous)
