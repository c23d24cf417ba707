"""Run monitoring: a JSON-lines metrics log, a loss-curve PNG, the machine's matmul peak (MFU)."""
from __future__ import annotations

import json
import math
import os
import time

import numpy as np

from minillm.backend import module_for_device, synchronize
from minillm.fileio import atomic_open, atomic_write_text


class MetricsLog:
    """Appends one JSON object per line to ``path`` (``{"step": 10, "loss": 3.2, ...}``).

    Each line is flushed when written, so a crash loses nothing already logged and the file
    can be followed while the run goes on (``tail -f``). ``records`` keeps them in memory too;
    an existing log is read on construction and only rewritten by :meth:`truncate_after`
    (the trainer calls it when a run starts: from step 0 it clears the log, after a resume it
    drops what the interrupted run logged past its checkpoint).

    An append cut short (power loss, a full disk, a kill mid-write) leaves a torn *last* line:
    it is dropped, the file rewritten without it, and ``notes`` says so (file and line). Any
    other line that is not a JSON object is an error naming the file and the line.
    """

    def __init__(self, path: str | None):
        self.path = path
        self.records: list[dict] = []
        self.notes: list[str] = []
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            if os.path.exists(path):
                self._read_existing(path)

    def _read_existing(self, path: str) -> None:
        self.records, self.notes, rewrite = read_metrics(path)
        if rewrite:                              # appends must start on a fresh line
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in self.records))

    def write(self, **record) -> None:
        record = {k: (float(v) if isinstance(v, (np.floating,)) else v) for k, v in record.items()}
        self.records.append(record)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (all of them for step 0)."""
        self.records = [r for r in self.records if r.get("step", 0) <= step]
        if self.path is not None:
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))


def read_metrics(path: str) -> tuple[list[dict], list[str], bool]:
    """The records of the metrics log ``path``, read without changing it: ``(records, notes,
    needs_rewrite)``. A torn *last* line (an append cut short) is dropped and said in ``notes``;
    any other line that is not a JSON object is a ValueError naming the file and the line.
    ``needs_rewrite``: the file should be rewritten before anything is appended (a torn line, or
    no newline at the end). Readers of a run (``minillm health``) use this; :class:`MetricsLog`
    also rewrites."""
    with open(path, "rb") as handle:
        raw = handle.read()
    records, notes = [], []
    lines = raw.split(b"\n")
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    for index, (number, line) in enumerate(numbered):
        try:
            record = json.loads(line.decode("utf-8"))
            if not isinstance(record, dict):
                raise ValueError(f"a JSON {type(record).__name__}, not an object")
        except ValueError as error:          # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = f"{error.msg} at column {error.colno}" if isinstance(error, json.JSONDecodeError) else str(error)
            if index == len(numbered) - 1:
                notes.append(f"metrics log {path!r}: line {number} was cut short ({reason}), the "
                             "end of an interrupted write; dropped it")
                break
            raise ValueError(f"metrics log {path!r} line {number} is not a JSON object ({reason}); fix or "
                             "delete that line, or start a new run (another --out_dir, or --overwrite)") from None
        records.append(record)
    return records, notes, bool(notes or (raw.strip() and not raw.endswith(b"\n")))


def plot_loss_curve(records: list[dict], path: str) -> bool:
    """Write train/validation loss against step to ``path`` (PNG) when matplotlib is installed.

    Returns False (and writes nothing) without matplotlib: it is optional by design.
    """
    try:
        # A bare Figure, not pyplot: pyplot would need a backend, and choosing one here
        # (matplotlib.use) switches the caller's for the rest of the process; in a notebook,
        # every later plt.show() would then display nothing.
        from matplotlib.figure import Figure  # noqa: PLC0415  (optional: plotting only)
    except ImportError:
        return False
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train" and "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("kind") == "eval" and "val_loss" in r]
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    if train:
        axes.plot(*zip(*train), label="train loss", linewidth=1)
    if val:
        axes.plot(*zip(*val), "o-", label="validation loss")
    axes.set_xlabel("step")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    with atomic_open(path, "wb") as handle:         # like every other file: the old plot or the new one
        figure.savefig(handle, format="png", dpi=100)
    return True


def measure_matmul_peak(device: str = "cpu", size: int = 1024, repeats: int = 5) -> float:
    """The machine's achievable float32 matmul rate in FLOP/s (best of ``repeats``), the
    denominator of MFU (model FLOPs utilisation)."""
    xp = module_for_device(device)
    a = xp.ones((size, size), dtype=np.float32)
    b = xp.ones((size, size), dtype=np.float32)
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best
