"""Anomaly detection: find the first op that produced a NaN or an Inf, and who created it.

Inside ``with detect_anomaly():`` every op remembers the user's line that created it and
checks its forward output; during backward every gradient an op returns is checked too. The
first non-finite value raises :class:`~minillm.autograd.AnomalyError` naming the op (and its
``name`` if the model gave it one) and that line. It slows everything down: debugging only.
"""
from __future__ import annotations

import contextlib

from minillm import autograd


@contextlib.contextmanager
def detect_anomaly():
    """Context manager that turns anomaly detection on (see the module docstring)."""
    previous = autograd.set_anomaly_mode(True)
    try:
        yield
    finally:
        autograd.set_anomaly_mode(previous)
