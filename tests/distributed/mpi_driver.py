"""``python -m tests.distributed.mpi_driver ARGS...`` = ``minillm ARGS...``, with test plants read
from the environment (the library itself has none):

- ``MINILLM_TEST_FAIL_RANK=r``: that rank raises a RuntimeError in its second training step;
- ``MINILLM_TEST_STOP_AT=k``: training pauses after step k (``Trainer.fit(stop_at=k)``), saving
  ``last`` there, as an interrupted run would;
- ``MINILLM_TEST_NAIVE_TOKEN_MEAN=1``: a token-mean loss takes its own rows' mean on every rank
  (the global token count replaced by N times this rank's), the mistake the global count avoids.
"""
from __future__ import annotations

import os
import sys

from minillm.cli import main
from minillm.distributed import BatchShare, current_world
from minillm.train import trainer as trainer_module


def plant() -> None:
    fail_rank = os.environ.get("MINILLM_TEST_FAIL_RANK")
    if fail_rank is not None and current_world().rank == int(fail_rank):
        original_step = trainer_module.Trainer.train_step

        def failing_step(self):
            if self.step == 1:
                raise RuntimeError("planted failure in the second step")
            return original_step(self)

        trainer_module.Trainer.train_step = failing_step
    stop_at = os.environ.get("MINILLM_TEST_STOP_AT")
    if stop_at is not None:
        original_fit = trainer_module.Trainer.fit
        trainer_module.Trainer.fit = lambda self, stop_at_=None: original_fit(self, int(stop_at))
    if os.environ.get("MINILLM_TEST_NAIVE_TOKEN_MEAN"):
        BatchShare.global_counts = lambda self, *counts: tuple(int(c) * self.size for c in counts)


if __name__ == "__main__":
    plant()
    sys.exit(main(sys.argv[1:]))
