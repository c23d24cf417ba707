"""Shared benchmark plumbing: alternating timing, medians, the machine's idleness, results.

On a shared 2-core machine a step slows 5-25x whenever another process takes a core, so every
benchmark here (1) alternates its contenders A B A B ... so drift hits both alike, (2) quotes
medians and ratios rather than absolute times, and (3) records how much CPU *other* processes
used during the timed region (from /proc/stat, minus this process's own CPU time), warning
when the machine was not idle.
"""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import time
from typing import Callable

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (None where /proc is missing)."""
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            fields = handle.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class OtherCpu:
    """Context manager measuring CPU seconds used by other processes while its body runs."""

    def __enter__(self):
        self.busy0, self.own0, self.wall0 = _busy_seconds(), _own_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        busy1, own1 = _busy_seconds(), _own_seconds()
        self.wall = time.perf_counter() - self.wall0
        if self.busy0 is None or busy1 is None:
            self.other = float("nan")
        else:
            self.other = max(0.0, (busy1 - self.busy0) - (own1 - self.own0))
        return False

    @property
    def other_cores(self) -> float:
        """Average number of cores other processes kept busy (0 = idle machine)."""
        return self.other / self.wall if self.wall > 0 else float("nan")

    def describe(self) -> str:
        note = "" if not self.other_cores > 0.1 else "  WARNING: machine not idle; re-run for trustworthy figures"
        return f"other processes used {self.other:.2f} CPU-s over {self.wall:.1f} s ({self.other_cores:.2f} cores){note}"


def alternate(contenders: dict[str, Callable[[], None]], repeats: int, warmup: int = 1,
              sync: Callable[[], None] | None = None) -> dict[str, list[float]]:
    """Time each contender ``repeats`` times, interleaved A B A B ...; seconds per call."""
    for _ in range(warmup):
        for fn in contenders.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            if sync:
                sync()
            start = time.perf_counter()
            fn()
            if sync:
                sync()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def format_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table (pastes into README and closing notes as is)."""
    text_rows = [[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text_rows)) if text_rows else len(h) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in text_rows]
    return "\n".join(lines)


def save_results(name: str, payload: dict, table: str) -> pathlib.Path:
    """Write ``results/<name>.json`` and ``results/<name>.md``; returns the Markdown path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(table + "\n", encoding="utf-8")
    return path


def blas_threads() -> int:
    """The thread count NumPy's BLAS uses (from the usual environment variables, else cores)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(var):
            return int(os.environ[var])
    return os.cpu_count() or 1


def run_json_child(command: list[str], env: dict, timeout: float) -> dict:
    """Run a contender in a fresh process of its own; its result is the JSON on the stdout line
    that starts with ``RESULT ``, else ``{"error": ...}`` with the exit status and output tail."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": f"exit {done.returncode}: {(done.stderr or done.stdout)[-3000:]}"}
