"""Which process of a data-parallel job this is, and how it talks to the others.

``current_world()`` reads the launcher's environment and nothing else until a communicator is
needed: a process started without an MPI launcher (no ``PMI_RANK``/``PMI_SIZE`` from MPICH's
hydra or Intel MPI, no ``OMPI_COMM_WORLD_*`` from Open MPI, no ``PMIX_RANK``) is the usual single
process and ``mpi4py`` is never imported. Under ``mpiexec -n N`` the world has N ranks and the
first use of its transport imports ``mpi4py`` (``MPI_Init`` happens at that import).

Transports (:mod:`minillm.distributed.transport`) are the one small interface the training code
calls: non-blocking sum all-reduce and reduce-scatter of flat buffers, all-gather, and a few
host-side helpers (scalars, JSON objects, barrier, abort). :class:`MpiTransport` carries host
(NumPy) buffers through MPI; :class:`NcclTransport` carries device (CuPy) buffers through NCCL,
its communicator bootstrapped over MPI.
"""
from __future__ import annotations

import os
import sys
import time

# (rank variable, size variable) pairs that MPI launchers set, first match wins.
LAUNCHER_VARIABLES = (
    ("PMI_RANK", "PMI_SIZE"),                              # MPICH (hydra), Intel MPI, MVAPICH
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),      # Open MPI
    ("PMIX_RANK", "PMIX_SIZE"),                            # PMIx launchers (size not always set)
)


def launcher_rank_and_size() -> tuple[int, int] | None:
    """(rank, size) from an MPI launcher's environment variables, or None outside a launcher."""
    for rank_name, size_name in LAUNCHER_VARIABLES:
        rank, size = os.environ.get(rank_name), os.environ.get(size_name)
        if rank is not None and size is not None:
            try:
                return int(rank), int(size)
            except ValueError:
                continue
    return None


class World:
    """This process's place in the job: ``rank`` of ``size``, ``under_mpi`` (started by an MPI
    launcher), and ``transport`` (made on first use; ``device`` chooses MPI or NCCL)."""

    def __init__(self, rank: int = 0, size: int = 1, under_mpi: bool = False):
        self.rank, self.size, self.under_mpi = int(rank), int(size), bool(under_mpi)
        self._transports: dict[str, object] = {}

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, evaluates, samples and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one rank: collectives are needed."""
        return self.size > 1

    def transport(self, device: str = "cpu"):
        """The transport for arrays on ``device``: MPI for host arrays, NCCL for CUDA ones (one
        rank per GPU); outside MPI a :class:`LocalTransport` (size 1, no communication)."""
        from minillm.distributed import transport as transports  # noqa: PLC0415  (imports mpi4py lazily)

        key = "cuda" if device == "cuda" else "cpu"
        if key not in self._transports:
            if not self.under_mpi:
                self._transports[key] = transports.LocalTransport()
            elif key == "cuda":
                self._transports[key] = transports.NcclTransport(self.transport("cpu"))
            else:
                self._transports[key] = transports.MpiTransport()
        return self._transports[key]

    def control(self):
        """The host transport (scalars, JSON objects, barriers): MPI under a launcher."""
        return self.transport("cpu")

    def __repr__(self) -> str:
        return f"World(rank={self.rank}, size={self.size}, under_mpi={self.under_mpi})"


_world: World | None = None
ABORT_GRACE_S = 0.5      # seconds between naming the failed rank and aborting the job


def current_world() -> World:
    """The process's :class:`World`, read from the environment once."""
    global _world
    if _world is None:
        found = launcher_rank_and_size()
        _world = World(*found, under_mpi=True) if found is not None else World()
    return _world


def set_world(world: World | None) -> World | None:
    """Replace the process's world (tests); returns the previous one."""
    global _world
    previous, _world = _world, world
    return previous


def check_batch_split(batch_size: int, size: int, rows: str = "rows") -> None:
    """``batch_size`` is the global batch: refuse one that ``size`` ranks cannot share equally
    (``rows``: what one batch row is, for the message)."""
    if size > 1 and batch_size % size:
        raise ValueError(f"loop.batch_size={batch_size} is not divisible by the {size} ranks of this job; expected a "
                         f"multiple of {size} (batch_size is the global batch of {rows}, each rank takes an equal "
                         "share of them)")


def silent(*args, **kwargs) -> None:
    """The log of ranks other than 0."""


def start_ranks(rows: str, loop, log):
    """This process's world, checked and set up before any work by a command that trains on
    ``loop`` (anything with ``batch_size`` and ``device``, a ``LoopSection``): the global batch of
    ``rows`` (sequences, conversations, preference pairs) must split evenly over the ranks; on CUDA
    each rank's GPU (and NCCL) is chosen before any allocation. Returns ``(world, log)``, the log
    silenced on ranks other than 0."""
    world = current_world()
    check_batch_split(loop.batch_size, world.size, rows)
    if world.under_mpi and loop.device == "cuda":
        world.transport("cuda")
    return world, (log if world.is_main else silent)


def from_main(world: World, make):
    """``make()`` run by rank 0 alone, its (JSON) result handed to every rank, which wait for it
    (in one process: ``make()``)."""
    value = make() if world.is_main else None
    if world.distributed:
        value = world.control().broadcast_json(value, root=0)
    return value


def abort_on_failure(error: BaseException, command: str, exit_status: int) -> None:
    """Called by the command-line error boundary after it reported ``error``: in a job of more
    than one rank, say which rank failed and abort the whole job with ``exit_status`` (the other
    ranks would otherwise wait for this one in their next collective, forever). MPI is started
    here if nothing had started it yet (an error every rank meets alike, such as a bad option,
    then ends the job once, with its status)."""
    world = _world
    if world is None or not world.distributed:
        return
    print(f"minillm {command}: rank {world.rank} of {world.size} failed ({type(error).__name__}: {error}); "
          f"aborting all ranks (MPI_Abort, exit status {exit_status or 1})", file=sys.stderr, flush=True)
    # MPI_Abort tears the launcher's output forwarding down at once: the line above, already in the
    # pipe, was lost about one time in ten (seen under mpich's hydra). A moment lets it through.
    time.sleep(ABORT_GRACE_S)
    world.control().abort(exit_status or 1)
