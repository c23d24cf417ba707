"""Data-parallel training: each rank takes its rows of the global batch, gradients are averaged.

With N ranks and a global batch of B rows, rank r computes the loss on rows
``[r·B/N, (r+1)·B/N)`` and its gradient g_r = ∇ mean(loss over its rows). The averaged gradient

    g = (1/N) Σ_r g_r

is the gradient of the mean loss over all B rows when every row carries the same number of
scored targets (pretraining windows: T targets each): the same update as one process on the
whole batch, up to the order of float32 additions.

Buckets: the trainable parameters, in *reverse* order (the last layers' gradients are complete
first in backward), are packed into flat buffers of about ``bucket_bytes``. A gradient-ready hook
(:func:`minillm.autograd.register_grad_ready_hook`) copies a parameter's finished gradient into
its bucket; when a bucket is full its sum all-reduce starts at once (non-blocking), so the
transfer of the last layers runs while backward computes the first. Buckets start in index order
on every rank (a collective must be issued in the same order everywhere). ``finish()`` waits for
them all before the optimizer step, scales by 1/N and points each ``p.grad`` at its slice.

ZeRO stage 1 (:class:`ShardedAdamW`): each bucket is padded to a multiple of N and its gradients
are reduce-scattered instead (rank r receives the summed r-th slice); each rank keeps AdamW's
moments only for its slices (2·P/N floats instead of 2·P), updates its slices of the parameters
with the same arithmetic as :class:`~minillm.optim.AdamW`, and the updated slices are all-gathered
back into every rank's parameters. Gradient clipping uses the global norm (the sum of squares of
every rank's slices, all-reduced).
"""
from __future__ import annotations

import math
import time
import weakref

import numpy as np

from minillm.autograd import register_grad_ready_hook
from minillm.backend import get_array_module, to_numpy
from minillm.optim.adamw import AdamW
from minillm.optim.optimizer import Optimizer

DEFAULT_BUCKET_BYTES = 4 << 20           # ~4 MB: few enough messages, early enough first start


def split_rows(batch, rank: int, size: int, what: str = "loop.batch_size"):
    """Rank ``rank``'s rows ``[rank·b, (rank+1)·b)`` (b = rows / size) of every array in
    ``batch`` (an array, or a tuple/list/dict of them); other values pass through."""
    if isinstance(batch, tuple):
        return tuple(split_rows(part, rank, size, what) for part in batch)
    if isinstance(batch, list):
        return [split_rows(part, rank, size, what) for part in batch]
    if isinstance(batch, dict):
        return {key: split_rows(part, rank, size, what) for key, part in batch.items()}
    if hasattr(batch, "shape") and hasattr(batch, "dtype") and len(batch.shape) >= 1:
        rows = batch.shape[0]
        if rows % size:
            raise ValueError(f"{what}={rows} is not divisible by the {size} ranks of this job; expected a multiple "
                             f"of {size} (each rank takes an equal share of the global batch)")
        share = rows // size
        return batch[rank * share:(rank + 1) * share]
    return batch


class _Bucket:
    """One flat gradient buffer: its parameters (with offsets) and its collective's state."""

    def __init__(self, index: int, params: list, offsets: list, numel: int, padded: int, xp, dtype):
        self.index, self.params, self.offsets, self.numel = index, params, offsets, numel
        self.flat = xp.zeros(padded, dtype=dtype)            # padded to a multiple of the world size
        self.shard = None                                    # ZeRO: this rank's reduced slice (a view of flat)
        self.filled: set = set()
        self.handle = None


class DataParallel:
    """Gradient averaging over the ranks of ``transport`` for ``params`` (see the module docstring).

    Use per optimizer step: ``begin_step()``; per micro-batch ``collect(last)`` before its backward
    (only the last micro-batch's backward communicates: the gradients accumulated over the
    micro-batches are complete then); ``finish()`` after the last backward.
    """

    def __init__(self, params, transport, bucket_bytes: int = DEFAULT_BUCKET_BYTES, shard: bool = False):
        self.transport = transport
        self.rank, self.size = transport.rank, transport.size
        self.shard = bool(shard)
        unique = {id(p): p for p in params if p.requires_grad}       # a parameter listed twice counts once
        self.params = list(unique.values())
        if not self.params:
            raise ValueError("DataParallel: the model has no trainable parameters")
        self.buckets: list[_Bucket] = []
        self.bucket_of: dict[int, tuple[_Bucket, int]] = {}
        self._make_buckets(int(bucket_bytes))
        self._collecting = False
        self._next_to_start = 0
        # The hooks hold this object weakly: a dropped DataParallel leaves the parameters alone.
        this = weakref.ref(self)

        def on_ready(param):
            parallel = this()
            if parallel is not None:
                parallel._on_grad_ready(param)

        self._hooks = [register_grad_ready_hook(p, on_ready) for p in self.params]
        self.communication_seconds = 0.0                     # time blocked in finish() (benchmarks)

    def _make_buckets(self, bucket_bytes: int) -> None:
        current, offsets, numel = [], [], 0

        def close():
            nonlocal current, offsets, numel
            if current:
                xp = get_array_module(current[0].data)
                padded = -(-numel // self.size) * self.size
                bucket = _Bucket(len(self.buckets), current, offsets, numel, padded, xp, current[0].data.dtype)
                self.buckets.append(bucket)
                for p, offset in zip(current, offsets):
                    self.bucket_of[id(p)] = (bucket, offset)
            current, offsets, numel = [], [], 0

        for p in reversed(self.params):                      # last layers first: their grads finish first
            if current and (p.data.dtype != current[0].data.dtype or numel * p.data.itemsize >= bucket_bytes):
                close()
            current.append(p)
            offsets.append(numel)
            numel += p.data.size
        close()

    def close(self) -> None:
        """Remove the gradient hooks (the parameters train alone again)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    # -- setup --------------------------------------------------------------------------------
    def broadcast_parameters(self) -> None:
        """Make every rank's parameters rank 0's (bucket by bucket, through the flat buffers)."""
        for bucket in self.buckets:
            for p, offset in zip(bucket.params, bucket.offsets):
                bucket.flat[offset:offset + p.data.size] = p.data.reshape(-1)
            self.transport.broadcast(bucket.flat, root=0)
            for p, offset in zip(bucket.params, bucket.offsets):
                p.data[...] = bucket.flat[offset:offset + p.data.size].reshape(p.data.shape)

    # -- one step -----------------------------------------------------------------------------
    def begin_step(self) -> None:
        for bucket in self.buckets:
            bucket.filled.clear()
            bucket.handle = None
        self._next_to_start = 0
        self._collecting = False

    def collect(self, last_micro_batch: bool) -> None:
        """Whether the coming backward is the step's last (its hooks then start the transfers)."""
        self._collecting = bool(last_micro_batch)

    def _on_grad_ready(self, param) -> None:
        if not self._collecting:
            return
        bucket, offset = self.bucket_of[id(param)]
        bucket.flat[offset:offset + param.data.size] = param.grad.reshape(-1)
        bucket.filled.add(id(param))
        self._start_ready_buckets()
        self.transport.progress()

    def _start_ready_buckets(self, force: bool = False) -> None:
        """Start, in index order, every bucket whose gradients are all in (``force``: all the
        remaining ones, their missing gradients as zeros)."""
        while self._next_to_start < len(self.buckets):
            bucket = self.buckets[self._next_to_start]
            if len(bucket.filled) < len(bucket.params):
                if not force:
                    return
                for p, offset in zip(bucket.params, bucket.offsets):
                    if id(p) not in bucket.filled:
                        size = p.data.size
                        bucket.flat[offset:offset + size] = 0 if p.grad is None else p.grad.reshape(-1)
            bucket.flat[bucket.numel:] = 0
            if self.shard:                        # in place: the reduced slice is a view of the flat buffer
                bucket.handle, bucket.shard = self.transport.reduce_scatter_sum_start(bucket.flat)
            else:
                bucket.handle = self.transport.allreduce_sum_start(bucket.flat)
            self._next_to_start += 1

    def finish(self) -> None:
        """Wait for every bucket; average. Without sharding each ``p.grad`` becomes its slice of
        the averaged flat buffer; with sharding the averaged slices stay in ``bucket.shard``."""
        self._start_ready_buckets(force=True)
        started = time.perf_counter()
        for bucket in self.buckets:
            bucket.handle.wait()
        self.communication_seconds += time.perf_counter() - started
        scale = 1.0 / self.size
        for bucket in self.buckets:
            if self.shard:
                if self.size > 1:
                    bucket.shard *= scale
                continue
            if self.size > 1:
                bucket.flat *= scale
            for p, offset in zip(bucket.params, bucket.offsets):
                p.grad = bucket.flat[offset:offset + p.data.size].reshape(p.data.shape)
        self._collecting = False


class ShardedAdamW(Optimizer):
    """ZeRO stage 1 around an :class:`~minillm.optim.AdamW`: the same hyperparameters and param
    groups (``param_groups`` is the wrapped optimizer's, so schedules set its learning rate), the
    moments only for this rank's slices of the :class:`DataParallel` buckets (``shard=True``).

    ``state_dict()`` gathers the slices into AdamW's own layout (a collective: every rank calls
    it), so a checkpoint resumes with or without ZeRO, on any number of ranks;
    ``load_state_dict`` takes that layout and keeps this rank's slices.
    """

    def __init__(self, base: AdamW, parallel: DataParallel):
        if not isinstance(base, AdamW):
            raise TypeError(f"ShardedAdamW: ZeRO stage 1 shards AdamW, got {type(base).__name__}")
        if not parallel.shard:
            raise ValueError("ShardedAdamW: the DataParallel must be built with shard=True")
        self.base, self.parallel = base, parallel
        self.defaults = base.defaults
        self._scratch = {}
        self.step_count = 0
        self._segments = self._make_segments()
        self.moments: dict[int, tuple] = {}                  # bucket index -> (exp_avg, exp_avg_sq) slices
        self._shard_params: dict[int, object] = {}

    @property
    def param_groups(self):
        return self.base.param_groups

    @property
    def state(self):
        return self.base.state

    def _group_of(self) -> dict[int, dict]:
        return {id(p): group for group in self.base.param_groups for p in group["params"]}

    def _make_segments(self) -> dict[int, list]:
        """bucket index -> [(param, first element in the param, first in the shard, count)]: the
        parts of this rank's slice ``[rank·k, (rank+1)·k)`` of each bucket, parameter by parameter."""
        optimized = {id(p) for group in self.base.param_groups for p in group["params"]}
        segments = {}
        rank = self.parallel.rank
        for bucket in self.parallel.buckets:
            k = bucket.flat.size // self.parallel.size
            lo, hi = rank * k, (rank + 1) * k
            parts = []
            for p, offset in zip(bucket.params, bucket.offsets):
                start, stop = max(lo, offset), min(hi, offset + p.data.size)
                if start < stop:
                    if id(p) not in optimized:
                        raise ValueError("ShardedAdamW: a trainable parameter is not in the optimizer's groups")
                    parts.append((p, start - offset, start - lo, stop - start))
            segments[bucket.index] = parts
        return segments

    def zero_grad(self) -> None:
        self.base.zero_grad()

    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds."""
        return sum(m.nbytes + v.nbytes for m, v in self.moments.values())

    def clip_grad_norm(self, max_norm: float) -> float:
        """The global L2 norm of the averaged gradient (every rank's slices); scale the slices by
        ``max_norm / (norm + 1e-6)`` when it is above ``max_norm`` (as ``clip_grad_norm_``)."""
        local = 0.0
        for bucket in self.parallel.buckets:
            xp = get_array_module(bucket.shard)
            local += float(to_numpy(xp.square(bucket.shard.astype(xp.float64)).sum()))
        total = float(self.parallel.transport.allreduce_host(np.array([local]))[0])  # host: one scalar
        norm = math.sqrt(total)
        if math.isfinite(norm) and norm > max_norm:
            scale = max_norm / (norm + 1e-6)
            for bucket in self.parallel.buckets:
                bucket.shard *= scale
        return norm

    def step(self) -> None:
        """AdamW on this rank's slices, then all-gather the updated parameters."""
        self.step_count += 1
        group_of = self._group_of()
        for bucket in self.parallel.buckets:
            xp = get_array_module(bucket.flat)
            k = bucket.shard.size
            if bucket.index not in self.moments:
                self.moments[bucket.index] = (xp.zeros(k, dtype=bucket.flat.dtype), xp.zeros(k, dtype=bucket.flat.dtype))
            exp_avg, exp_avg_sq = self.moments[bucket.index]
            shard_param = self._shard_params.get(bucket.index)
            if shard_param is None:               # this rank's slice of the parameters, reused every step
                shard_param = self._shard_params[bucket.index] = xp.zeros(k, dtype=bucket.flat.dtype)
            for p, in_param, in_shard, count in self._segments[bucket.index]:
                part = slice(in_shard, in_shard + count)
                shard_param[part] = p.data.reshape(-1)[in_param:in_param + count]
                state = {"step": self.step_count, "exp_avg": exp_avg[part], "exp_avg_sq": exp_avg_sq[part]}
                self.base._update(shard_param[part], bucket.shard[part], state, group_of[id(p)],
                                  self._scratch_for(shard_param[part]))
            # The gradient slice was used: the flat buffer (which holds it) receives the parameters.
            self.parallel.transport.allgather(shard_param, bucket.flat)
            for p, offset in zip(bucket.params, bucket.offsets):
                p.data[...] = bucket.flat[offset:offset + p.data.size].reshape(p.data.shape)

    # -- state dicts --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """AdamW's state dict with the full moments (gathered from every rank: a collective)."""
        positions = {id(p): i for i, p in enumerate(p for g in self.base.param_groups for p in g["params"])}
        full_state = {}
        if self.step_count:
            for bucket in self.parallel.buckets:
                xp = get_array_module(bucket.flat)
                gathered = []
                for moment in self.moments[bucket.index]:
                    whole = xp.empty(bucket.flat.size, dtype=bucket.flat.dtype)
                    self.parallel.transport.allgather(moment, whole)
                    gathered.append(whole)
                for p, offset in zip(bucket.params, bucket.offsets):
                    view = slice(offset, offset + p.data.size)
                    full_state[positions[id(p)]] = {"step": self.step_count,
                                                    "exp_avg": gathered[0][view].reshape(p.data.shape),
                                                    "exp_avg_sq": gathered[1][view].reshape(p.data.shape)}
        self.base.state = full_state
        try:
            return self.base.state_dict()
        finally:
            self.base.state = {}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take AdamW's layout (any number of ranks wrote it); keep this rank's slices."""
        self.base.load_state_dict(state_dict)
        full, self.base.state = self.base.state, {}
        positions = {id(p): i for i, p in enumerate(p for g in self.base.param_groups for p in g["params"])}
        steps = {entry["step"] for entry in full.values()}
        if len(steps) > 1:
            raise ValueError(f"ShardedAdamW.load_state_dict: the parameters were updated different numbers of times "
                             f"({sorted(steps)}); ZeRO keeps one step count for all")
        self.step_count = steps.pop() if steps else 0
        self.moments = {}
        if not self.step_count:
            return
        for bucket in self.parallel.buckets:
            xp = get_array_module(bucket.flat)
            k = bucket.flat.size // self.parallel.size
            exp_avg, exp_avg_sq = xp.zeros(k, dtype=bucket.flat.dtype), xp.zeros(k, dtype=bucket.flat.dtype)
            for p, in_param, in_shard, count in self._segments[bucket.index]:
                entry = full.get(positions[id(p)])
                if entry is None:
                    continue
                exp_avg[in_shard:in_shard + count] = entry["exp_avg"].reshape(-1)[in_param:in_param + count]
                exp_avg_sq[in_shard:in_shard + count] = entry["exp_avg_sq"].reshape(-1)[in_param:in_param + count]
            self.moments[bucket.index] = (exp_avg, exp_avg_sq)
