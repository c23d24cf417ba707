"""Shared benchmark plumbing: alternating timing, medians, the machine's idleness, results.

On a shared 2-core machine a step slows 5-25x whenever another process takes a core, so every
benchmark here (1) alternates its contenders A B A B ... so drift hits both alike, (2) quotes
medians and ratios rather than absolute times, and (3) records how much CPU *other* processes
used during the timed region (from /proc/stat, minus this process's own CPU time), warning
when the machine was not idle.

Contenders from different libraries run in fresh processes of their own (never two libraries'
thread pools in one process): the parent runs rounds (:func:`alternate_rounds`, the order
alternating A B, B A, ...), each contender a child process of the same script
(:func:`run_script_child`, the thread count set in its environment before it imports NumPy or
torch) that times its calls (:func:`time_calls`) and prints one ``RESULT {json}`` line; the
parent pools the rounds (:func:`summarise`).
"""
from __future__ import annotations

import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from typing import Callable

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"
BUSY_CORES = 0.1            # other processes' cores above which a measurement is flagged
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


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
        note = "" if not self.other_cores > BUSY_CORES else "  WARNING: machine not idle; re-run for trustworthy figures"
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


def save_results(name: str, payload: dict, table: str, directory: str | os.PathLike | None = None) -> pathlib.Path:
    """Write ``<directory>/<name>.json`` and ``<name>.md`` (``directory`` defaults to
    ``benchmarks/results``); returns the Markdown path."""
    directory = RESULTS_DIR if directory is None else pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    path = directory / f"{name}.md"
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


# ---------------------------------------------------------------------------------------------
# Each contender in a fresh process of its own
# ---------------------------------------------------------------------------------------------
def set_threads(threads: int, env: dict | None = None) -> dict:
    """Set the BLAS / OpenMP thread count in ``env`` (``os.environ`` by default) and return it.
    OpenBLAS and PyTorch read these once, when they load: in a contender's process this must run
    before NumPy or torch is imported."""
    env = os.environ if env is None else env
    for var in THREAD_VARS:
        env[var] = str(threads)
    return env


def run_script_child(script: str, argv: list[str], threads: int, timeout: float,
                     extra_env: dict | None = None) -> dict:
    """Run ``python <script> <argv...>`` as a fresh process, with ``threads`` BLAS / OpenMP threads
    set in its environment before it starts (so before it imports NumPy or torch) and
    ``extra_env`` on top; its ``RESULT`` dict (see :func:`run_json_child`)."""
    env = set_threads(threads, os.environ.copy())
    env.update(extra_env or {})
    return run_json_child([sys.executable, os.path.abspath(script), *argv], env, timeout)


def alternate_rounds(contenders: list[str], rounds: int, run: Callable[[str], dict], label: str = "",
                     describe: Callable[[dict], str] | None = None) -> dict[str, list[dict]]:
    """``rounds`` rounds of ``run(contender)`` (one fresh process each), the order alternating
    A B, B A, ... so that drift in the machine's load hits every contender alike; each
    contender's results, one per round. Prints a line per process (``describe(result)``)."""
    runs: dict[str, list[dict]] = {c: [] for c in contenders}
    for round_index in range(rounds):
        for contender in (contenders if round_index % 2 == 0 else contenders[::-1]):
            result = run(contender)
            runs[contender].append(result)
            if "error" in result:
                status = "ERROR " + result["error"][-600:]
            else:
                status = describe(result) if describe else "done"
            print(f"{label}round {round_index + 1} {contender}: {status}", flush=True)
    return runs


def child_errors(runs: dict[str, list[dict]]) -> str:
    """One ``ERROR contender: ...`` line (the last 600 characters of its message) per child run that
    failed, each after a newline; empty when none did: appended to a report so no failure is silent."""
    return "".join(f"\nERROR {contender}: {r['error'][-600:]}"
                   for contender, results in runs.items() for r in results if "error" in r)


def time_calls(fn: Callable[[], object], repeats: int, warmup: int = 1,
               sync: Callable[[], None] | None = None) -> dict:
    """``warmup`` untimed calls, then ``repeats`` timed ones (each synchronised with ``sync`` where
    given), all inside one :class:`OtherCpu` window (/proc/stat counts in clock ticks, so one
    window over the repeats reads other processes' load better than one per short call):
    ``{"times": [seconds per call], "other_cores": [cores], "other_s": ..., "wall_s": ...}``."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    with OtherCpu() as load:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            if sync:
                sync()
            times.append(time.perf_counter() - start)
    return {"times": times, "other_cores": [load.other_cores], "other_s": load.other, "wall_s": load.wall}


def summarise(results: list[dict], scale: float = 1.0) -> dict:
    """Pool one contender's per-round results (dicts with ``times`` and ``other_cores``; ones with
    an ``error`` are left out): ``median`` over every timed repeat of every round, the per-round
    medians (``round_medians``: their min-max is the spread), the median of ``other_cores``, and
    ``errors``. Times are multiplied by ``scale`` (1e3: milliseconds). Without a good round,
    only ``errors``."""
    good = [r for r in results if "error" not in r]
    summary: dict = {"errors": [r["error"] for r in results if "error" in r]}
    if good:
        summary.update(median=statistics.median([t for r in good for t in r["times"]]) * scale,
                       round_medians=[statistics.median(r["times"]) * scale for r in good],
                       other_cores=statistics.median([c for r in good for c in r["other_cores"]]),
                       repeats=sum(len(r["times"]) for r in good), rounds=len(good))
    return summary


def spread(values: list[float]) -> str:
    """``min-max`` of the per-round medians, to 3 significant figures."""
    return f"{min(values):.3g}-{max(values):.3g}" if values else ""


def minillm_host() -> dict:
    """In a minillm contender's process: minillm's host threads, whether glibc malloc was tuned,
    and OpenBLAS's thread wait (see minillm/host.py)."""
    from minillm import host  # noqa: PLC0415  (only a minillm contender's process imports minillm)

    return {"threads": host.num_threads(), "allocator_tuned": host.allocator_tuned(),
            "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT")}
