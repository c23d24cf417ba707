"""Losses that are means over masked tokens, kept the global batch's mean under data parallelism.

Data parallelism averages the ranks' gradients, g = (1/N) Σ_r ∇L_r (:class:`DataParallel`). For
a loss that is a mean over rows this is exact when every rank holds the same number of rows (the
batch is split evenly: :func:`split_rows`). A mean over *masked* tokens is different: SFT
averages over the supervised (reply) tokens, DPO's NLL term over the chosen replies' tokens, and
a row holds any number of them. With rank r holding n_r of the batch's n = Σ_r n_r tokens and
S_r the sum of its tokens' losses, the mean of the ranks' means, (1/N) Σ_r S_r / n_r, is not
S / n unless every n_r is the same. So such a loss makes its rank's share

    L_r = N · S_r / n,        (1/N) Σ_r L_r = Σ_r S_r / n = S / n,

the global token count n coming from a sum all-reduce of the ranks' counts (a few host numbers,
before backward). The averaged gradient and the averaged logged loss are then the single
process's, up to the order of float32 additions.

The Trainer installs the share of its job (:func:`sharing_batch`) while ``compute_loss`` runs; a
loss reads it with :func:`current_batch_share`. Everywhere else (one process, evaluation, tests
calling a loss directly) the share is that of a world of one: ``size`` 1 and counts returned as
given, with no communication.
"""
from __future__ import annotations

import contextlib

import numpy as np


class BatchShare:
    """This rank's part of the global batch: ``size`` ranks hold equal numbers of its rows, and
    :meth:`global_counts` adds counts over them (through ``transport``'s host all-reduce)."""

    def __init__(self, size: int = 1, transport=None):
        if int(size) > 1 and transport is None:
            raise ValueError(f"BatchShare: size={size} needs a transport to add counts across the ranks")
        self.size, self.transport = int(size), transport

    def global_counts(self, *counts) -> tuple[int, ...]:
        """The sums over the ranks of ``counts`` (non-negative integers; a collective every rank
        must call alike). In a world of one: ``counts`` as they are."""
        if self.size == 1:
            return tuple(int(c) for c in counts)
        totals = self.transport.allreduce_host(np.array(counts, dtype=np.float64), "sum")  # host: a few counts
        return tuple(int(round(float(t))) for t in totals)          # exact: integers far below 2**53


ONE_PROCESS = BatchShare()
_current: BatchShare = ONE_PROCESS


def current_batch_share() -> BatchShare:
    """The share installed by :func:`sharing_batch` (the Trainer's, while its loss runs), else a
    world of one."""
    return _current


@contextlib.contextmanager
def sharing_batch(share: BatchShare | None):
    """Within the block, :func:`current_batch_share` returns ``share`` (None: a world of one)."""
    global _current
    previous, _current = _current, share if share is not None else ONE_PROCESS
    try:
        yield _current
    finally:
        _current = previous
