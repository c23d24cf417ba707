"""Transports: how ranks exchange flat buffers (the interface :class:`Transport`).

Three implementations behind one interface:

- :class:`LocalTransport`: a world of one process without MPI; every collective is the identity.
- :class:`MpiTransport`: host (NumPy) buffers through ``mpi4py`` (``Iallreduce``,
  ``Ireduce_scatter_block``, ``Allgather``); also the control channel of the job (scalars, JSON
  objects, barrier, abort) for every transport.
- :class:`NcclTransport`: device (CuPy) buffers through NCCL (``cupy.cuda.nccl``), one rank per
  GPU; the communicator's unique id is made on rank 0 and broadcast over MPI. Collectives are
  queued on a dedicated CUDA stream that first waits for the compute stream (so the gradients
  are written), and ``wait`` makes the compute stream wait for them in turn: the data never
  leaves the GPU and the host never blocks.

Every reduction is a *sum*; the caller scales (data parallelism divides by the world size).
Objects travel as JSON text in byte buffers, never pickled.
"""
from __future__ import annotations

import json
import os

import numpy as np


def local_rank(rank: int) -> int:
    """This process's rank among the ranks on its machine (MPICH's hydra: ``MPI_LOCALRANKID``,
    Open MPI: ``OMPI_COMM_WORLD_LOCAL_RANK``), else its world rank."""
    for name in ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK"):
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return rank


class Handle:
    """A started collective; ``wait()`` blocks until its output buffer may be read."""

    def wait(self) -> None:
        return None

    def test(self) -> bool:
        """Progress it without blocking; True once done."""
        return True


class Transport:
    """The interface (and the size-1 behaviour): ``rank``, ``size`` and the collectives below."""

    rank, size = 0, 1
    name = "local"

    # -- collectives on flat buffers of the transport's array kind --------------------------------
    def allreduce_sum_start(self, buffer) -> Handle:
        """Start summing ``buffer`` across ranks in place; returns a Handle."""
        return Handle()

    def reduce_scatter_sum_start(self, buffer):
        """Start, in place: rank r's result is the sum over ranks of ``buffer[r*k:(r+1)*k]``
        (k = buffer.size / size). Returns (Handle, the view of ``buffer`` that holds the result
        once waited for: where the engine leaves it, no extra buffer)."""
        return Handle(), buffer

    def allgather(self, send, recv) -> None:
        """``recv[r*k:(r+1)*k]`` = rank r's ``send`` (k = send.size), on every rank."""
        recv[:send.size] = send

    def broadcast(self, buffer, root: int = 0) -> None:
        """Overwrite ``buffer`` with rank ``root``'s."""
        return None

    def progress(self) -> None:
        """Let started collectives advance (MPI without a progress thread needs calls into it)."""
        return None

    # -- host control channel -------------------------------------------------------------------
    def allreduce_host(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        """A small host float64 array reduced across ranks (``op``: sum or max)."""
        return np.array(values, dtype=np.float64)  # host: a few scalars

    def broadcast_json(self, value, root: int = 0):
        return value

    def allgather_json(self, value) -> list:
        return [value]

    def barrier(self) -> None:
        return None

    def abort(self, exit_status: int) -> None:
        raise SystemExit(exit_status)


class LocalTransport(Transport):
    """One process, no MPI: every collective is the identity (the base class's behaviour)."""


class _MpiHandle(Handle):
    def __init__(self, request):
        self.request = request

    def wait(self) -> None:
        self.request.Wait()

    def test(self) -> bool:
        return bool(self.request.Test())


class MpiTransport(Transport):
    """Host buffers through MPI (``mpi4py``, imported here); the world communicator."""

    name = "mpi"

    def __init__(self):
        from mpi4py import MPI  # noqa: PLC0415  (only under an MPI launcher)

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self._pending: list = []

    def allreduce_sum_start(self, buffer) -> Handle:
        request = self.comm.Iallreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        self._pending.append(request)
        return _MpiHandle(request)

    def reduce_scatter_sum_start(self, buffer):
        # MPI_IN_PLACE: the input is the whole buffer, the result lands in its first k elements
        request = self.comm.Ireduce_scatter_block(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        self._pending.append(request)
        return _MpiHandle(request), buffer[:buffer.size // self.size]

    def allgather(self, send, recv) -> None:
        self.comm.Allgather(send, recv)

    def broadcast(self, buffer, root: int = 0) -> None:
        self.comm.Bcast(buffer, root=root)

    def progress(self) -> None:
        # MPICH moves a non-blocking collective forward only inside MPI calls: a Test now and
        # then (each gradient-ready hook) lets the transfer run while backward computes.
        if self._pending:
            self._pending = [r for r in self._pending if not r.Test()]

    def allreduce_host(self, values: np.ndarray, op: str = "sum") -> np.ndarray:
        send = np.ascontiguousarray(values, dtype=np.float64)  # host: a few scalars
        recv = np.empty_like(send)  # host: a few scalars
        self.comm.Allreduce(send, recv, op=self.MPI.MAX if op == "max" else self.MPI.SUM)
        return recv

    def broadcast_json(self, value, root: int = 0):
        data = json.dumps(value).encode("utf-8") if self.rank == root else b""
        length = np.array([len(data)], dtype=np.int64)  # host: a message length
        self.comm.Bcast(length, root=root)
        if self.rank == root:
            buffer = np.frombuffer(data, dtype=np.uint8).copy()  # host: JSON bytes
        else:
            buffer = np.empty(int(length[0]), dtype=np.uint8)  # host: JSON bytes
        self.comm.Bcast(buffer, root=root)
        return json.loads(buffer.tobytes().decode("utf-8"))

    def allgather_json(self, value) -> list:
        data = np.frombuffer(json.dumps(value).encode("utf-8"), dtype=np.uint8)  # host: JSON bytes
        lengths = np.empty(self.size, dtype=np.int64)  # host: message lengths
        self.comm.Allgather(np.array([data.size], dtype=np.int64), lengths)  # host: one length
        gathered = np.empty(int(lengths.sum()), dtype=np.uint8)  # host: JSON bytes
        self.comm.Allgatherv(data, [gathered, lengths.tolist()])
        offsets = np.concatenate([[0], np.cumsum(lengths)])  # host: byte offsets
        return [json.loads(gathered[offsets[r]:offsets[r + 1]].tobytes().decode("utf-8")) for r in range(self.size)]

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, exit_status: int) -> None:
        self.comm.Abort(int(exit_status))


class _NcclHandle(Handle):
    def __init__(self, event, compute_stream):
        self.event, self.compute_stream = event, compute_stream

    def wait(self) -> None:
        self.compute_stream.wait_event(self.event)       # the GPU waits; the host does not

    def test(self) -> bool:
        return bool(self.event.done)


class NcclTransport(Transport):
    """Device (CuPy) buffers through NCCL, one rank per GPU (``cupy.cuda.nccl``).

    Bootstrap: a rank selects the GPU of its local rank on its machine (modulo the GPUs there); rank 0 calls ``nccl.get_unique_id()``
    and the id is broadcast over ``control`` (MPI); every rank then builds
    ``NcclCommunicator(size, unique_id, rank)``. Host-side helpers (scalars, JSON, barrier,
    abort) go through ``control``. Make it (``current_world().transport("cuda")``) before the
    model moves to the GPU, so the parameters land on this rank's device (``minillm train``
    does).
    """

    name = "nccl"

    def __init__(self, control: Transport):
        from minillm.backend import cupy_module, nccl_module  # noqa: PLC0415

        nccl = nccl_module()                             # raises, saying what is missing
        cupy = cupy_module()
        self.cupy, self.nccl, self.control = cupy, nccl, control
        self.rank, self.size = control.rank, control.size
        cupy.cuda.Device(local_rank(self.rank) % cupy.cuda.runtime.getDeviceCount()).use()
        unique_id = nccl.get_unique_id() if self.rank == 0 else None
        # The id is bytes in recent CuPy and a tuple of ints in older ones: sent as a list of ints
        # with its kind, rebuilt in the same kind.
        sent = {"bytes": isinstance(unique_id, (bytes, bytearray)),
                "values": list(unique_id) if unique_id is not None else None}
        received = control.broadcast_json(sent if self.rank == 0 else None, root=0)
        unique_id = bytes(received["values"]) if received["bytes"] else tuple(received["values"])
        self.comm = nccl.NcclCommunicator(self.size, unique_id, self.rank)
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def _dtype(self, array) -> int:
        kinds = {"float32": self.nccl.NCCL_FLOAT32, "float64": self.nccl.NCCL_FLOAT64,
                 "float16": self.nccl.NCCL_FLOAT16}
        name = str(array.dtype)
        if name not in kinds:
            raise TypeError(f"NcclTransport: no NCCL type for dtype {name}; expected one of {sorted(kinds)}")
        return kinds[name]

    def _launch(self, collective) -> Handle:
        compute = self.cupy.cuda.get_current_stream()
        ready = compute.record()
        self.stream.wait_event(ready)                    # the gradients are written first
        collective(self.stream.ptr)
        done = self.stream.record()
        return _NcclHandle(done, compute)

    def allreduce_sum_start(self, buffer) -> Handle:
        return self._launch(lambda stream: self.comm.allReduce(
            buffer.data.ptr, buffer.data.ptr, buffer.size, self._dtype(buffer), self.nccl.NCCL_SUM, stream))

    def reduce_scatter_sum_start(self, buffer):
        # in place for NCCL: the result goes to this rank's own slice of the buffer
        k = buffer.size // self.size
        result = buffer[self.rank * k:(self.rank + 1) * k]
        handle = self._launch(lambda stream: self.comm.reduceScatter(
            buffer.data.ptr, result.data.ptr, k, self._dtype(buffer), self.nccl.NCCL_SUM, stream))
        return handle, result

    def allgather(self, send, recv) -> None:
        self._launch(lambda stream: self.comm.allGather(
            send.data.ptr, recv.data.ptr, send.size, self._dtype(send), stream)).wait()

    def broadcast(self, buffer, root: int = 0) -> None:
        self._launch(lambda stream: self.comm.bcast(
            buffer.data.ptr, buffer.size, self._dtype(buffer), root, stream)).wait()

    def allreduce_host(self, values, op: str = "sum"):
        return self.control.allreduce_host(values, op)

    def broadcast_json(self, value, root: int = 0):
        return self.control.broadcast_json(value, root)

    def allgather_json(self, value) -> list:
        return self.control.allgather_json(value)

    def barrier(self) -> None:
        self.control.barrier()

    def abort(self, exit_status: int) -> None:
        self.control.abort(exit_status)
