"""The training loop shared by pretraining, SFT and DPO.

One optimizer step (:meth:`Trainer.train_step`), in fp32 just the plain loop::

    lr = schedule(step); set it on every param group
    for each of grad_accum_steps micro-batches:
        loss = compute_loss(model, batch); (loss / grad_accum_steps).backward()
    grad_norm = clip_grad_norm_(params, grad_clip)
    optimizer.step(); optimizer.zero_grad()

around which three small named steps handle what can go wrong:

- a non-finite loss or gradient norm stops the run (naming the step and the last good
  checkpoint), or with ``on_nonfinite="skip"`` drops the step and logs it
  (:meth:`Trainer._handle_nonfinite`); ``max_skips`` consecutive skipped steps stop the run too;
- a gradient-norm spike above ``spike_factor`` times its running mean is logged
  (:meth:`Trainer._note_spike`);
- mixed precision (``precision`` "fp16"/"bf16", see :mod:`minillm.amp`): the loss (and evaluation)
  runs under ``amp.autocast``; for fp16 a :class:`~minillm.amp.GradScaler` multiplies the loss by
  its scale before backward, divides the gradients again before clipping, and on an inf/NaN
  gradient skips the step (logged with ``skipped`` and ``overflow``) and halves the scale
  (:meth:`Trainer._skip_overflow`). Every train record then carries ``loss_scale``; the scaler's
  state travels in checkpoints.

The learning rate belongs to the schedule alone (a :class:`~minillm.optim.CosineSchedule`: warmup
then cosine decay); the gradient is that of the mean loss over the micro-batches (equal-sized
micro-batches assumed, as the loaders produce).

With ``recompute`` (``minillm train --recompute``) the model's blocks recompute their activations
in backward instead of keeping them (:mod:`minillm.nn.recompute`): less memory, more time, the same
gradients bit for bit.

With ``health_interval`` N > 0 (``minillm train --health_interval N``), step 1 and every N-th step
are observed by a :class:`minillm.health.HealthObserver`: per-parameter gradient and weight norms
and update ratios, activation statistics, attention entropy per head and the logit scale, written
to the metrics log as a ``"kind": "health"`` record (read by ``minillm health RUN_DIR``). The
observer only reads arrays, so the run is the same as without it; with N = 0 the only cost is one
integer test per step.

With ``profile`` N > 0 (``minillm train --profile N``), the N steps after the first one of a
:meth:`Trainer.fit` (the first warms up: allocations, caches) run inside one
:class:`minillm.profiler.Profile`; its tables, by op and by module, are printed once and it is
written to ``out_dir/profile.json``. Profiling only times and reads the arrays, so the results
are the same as without it (the profiled steps run slower, which their tokens/s shows).

Every ``eval_interval`` steps (and at the end) ``evaluate(model)`` runs; the lowest validation
loss is saved as ``best.safetensors``; ``last.safetensors`` holds the newest state and is what
``resume`` continues from, exactly: weights, optimizer moments, step, RNG state and the batch
sampler's position all come back.

Data parallelism (``mpiexec -n N minillm train ...``, :mod:`minillm.distributed`): under an MPI
launcher every rank runs this same loop on the same global batches (same seed, same batch order)
and takes its 1/N of each batch's rows; a :class:`~minillm.distributed.DataParallel` averages the
gradients (bucketed non-blocking all-reduce started from gradient-ready hooks) before clipping and
the step, and the logged loss is the mean over the ranks. A loss that is a mean over masked tokens
(SFT, DPO's NLL term) reads the job's :class:`~minillm.distributed.BatchShare`, installed while
``compute_loss`` runs, to scale its rank's part by the global token count (see
:mod:`minillm.distributed.batch_share`), so that mean over the ranks is the global batch's. ``loop.zero`` 1 shards AdamW's moments
across the ranks (:class:`~minillm.distributed.ShardedAdamW`). Rank 0 alone logs, evaluates (the
result is broadcast, so every rank takes the same decisions) and writes checkpoints; saving is
called on every rank (gathering sharded optimizer state is a collective). Ranks other than 0
draw dropout masks from a generator seeded with (seed, rank); checkpoints keep every rank's
generator state.

Only good states are saved (:meth:`Trainer.checkpoint_problem`): before every save the weights
are checked, and a checkpoint is written only when every parameter is finite, their global L2
norm is at most ``MAX_WEIGHT_NORM_GROWTH`` (100) times the norm when training started (the
reference travels in checkpoints, so a resumed run keeps it; floored at 1), and no validation
loss measured at these weights is NaN/Inf (a training step with a non-finite loss is never
applied). Otherwise the run stops with :class:`NonFiniteLossError` naming the last good
checkpoint, so ``best``/``last`` on disk are never poisoned.

SIGINT (Ctrl-C) and SIGTERM (what ``kill``, schedulers and ``docker stop`` send) do not kill a
:meth:`Trainer.fit` in the middle: the current step finishes, ``last.safetensors`` is saved, and
:class:`TrainingInterrupted` is raised (exit status 130 and 143 at the command line). A second
signal stops at once, without that save; atomic writes leave the previous checkpoint intact.
The handlers are only installed from the main thread and the previous ones come back after.

:func:`prepare_run_folder` is what the commands call before writing anything into ``out_dir``:
it refuses to start a new run over an earlier one (unless ``overwrite``; resuming from a
checkpoint in the folder is fine) and removes temporary files left by interrupted saves.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from typing import Callable, Sequence

import numpy as np
from tqdm import tqdm

from minillm.amp import GradScaler, autocast
from minillm.backend import get_array_module, get_rng_state, item, set_rng_state, to_device, to_numpy
from minillm.distributed import (
    BatchShare,
    DataParallel,
    ShardedAdamW,
    World,
    check_batch_split,
    current_world,
    sharing_batch,
    split_rows,
)
from minillm.errors import TrainingDiverged
from minillm.fileio import refuse_to_overwrite, remove_stale_temp_files
from minillm.health import HealthObserver, is_health_step
from minillm.optim import AdamW, clip_grad_norm_, set_lr
from minillm.profiler import Profile
from minillm.train.checkpoint import load_checkpoint, save_checkpoint
from minillm.train.config import LoopSection
from minillm.train.metrics import MetricsLog, measure_matmul_peak, plot_loss_curve

# A run's outputs in out_dir: any of these means the folder holds a run (prepare_run_folder).
RUN_FILES = ("last.safetensors", "best.safetensors", "model.safetensors", "adapters.safetensors", "metrics.jsonl",
             "summary.json")
DERIVED_FILES = ("loss.png", "profile.json", "health.html")   # also removed by --overwrite
MAX_WEIGHT_NORM_GROWTH = 100.0    # a save needs |weights| <= this x |weights at the start| (module docstring)
STOP_SIGNALS = ("SIGINT", "SIGTERM")


class NonFiniteLossError(TrainingDiverged):
    """The run diverged and stopped: a NaN/Inf loss or gradient norm (``on_nonfinite="stop"``),
    ``max_skips`` skipped steps in a row, or weights not fit to save (see the module docstring).
    A RuntimeError (:class:`~minillm.errors.TrainingDiverged`): the ``minillm`` command prints its
    message alone and exits with status 3."""


class TrainingInterrupted(KeyboardInterrupt):
    """:meth:`Trainer.fit` stopped on a signal (SIGINT or SIGTERM) after saving ``last``.

    ``signal`` is the signal number and ``exit_status`` the conventional ``128 + signal``
    (130 for SIGINT, 143 for SIGTERM). A KeyboardInterrupt, so code that handles Ctrl-C handles it.
    """

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signal = int(signum)
        self.exit_status = 128 + int(signum)


def prepare_run_folder(loop: LoopSection, log=print, reads: Sequence[str] = ()) -> None:
    """Make ``loop.out_dir`` ready for a run, before anything is written into it.

    - A folder that holds an earlier run (any of ``RUN_FILES``) is refused with an
      :class:`~minillm.fileio.ExistingOutputError` (resume it, pick another ``out_dir``, or pass
      ``overwrite``), unless this run resumes from a checkpoint in that folder.
    - With ``overwrite`` the earlier run's files (``RUN_FILES`` and ``DERIVED_FILES``) are deleted
      first, except the files this run reads (``reads``: a starting checkpoint, data files), so
      the new run never mixes with the old one.
    - Temporary files left by interrupted atomic saves are removed (said once in the log).
    """
    out_dir = loop.out_dir
    os.makedirs(out_dir, exist_ok=True)
    existing = [name for name in RUN_FILES if os.path.exists(os.path.join(out_dir, name))]
    resuming_here = False
    if loop.resume and os.path.exists(loop.resume):
        resuming_here = os.path.samefile(os.path.dirname(os.path.abspath(loop.resume)), out_dir)
    if existing and not resuming_here:
        last = os.path.join(out_dir, "last.safetensors")
        resume = f"resume it with --resume {last}, " if "last.safetensors" in existing else ""
        refuse_to_overwrite(f"out_dir {out_dir!r}", "an earlier run", existing, loop.overwrite,
                            f"{resume}pick a new --out_dir, or pass --overwrite to replace it")
        keep = {os.path.realpath(path) for path in reads if path}
        removed = []
        for name in RUN_FILES + DERIVED_FILES:
            path = os.path.join(out_dir, name)
            if os.path.isfile(path) and os.path.realpath(path) not in keep:
                os.remove(path)
                removed.append(name)
        log(f"--overwrite: deleted the earlier run's {', '.join(removed) or 'nothing'} in {out_dir}")
    stale = remove_stale_temp_files(out_dir)
    if stale:
        size = sum(nbytes for _, nbytes in stale)
        log(f"removed {len(stale)} temporary file(s) ({size / 1e6:.1f} MB) left in {out_dir} by interrupted saves")


class _StopSignals:
    """While entered (from the main thread): the first SIGINT/SIGTERM is noted in ``received``
    (the loop finishes its step, saves and stops), a second one raises :class:`TrainingInterrupted`
    at once. The previous handlers come back on exit."""

    def __init__(self, out=None):
        self.received: int | None = None
        self.out = out                               # None: sys.stderr at the time of the signal
        self.previous: dict[int, object] = {}

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        for name in STOP_SIGNALS:
            number = getattr(signal, name, None)
            if number is None:
                continue
            try:
                self.previous[number] = signal.signal(number, self._handle)
            except (ValueError, OSError):        # not allowed here: leave that signal alone
                continue
        return self

    def _handle(self, number, frame) -> None:
        name = signal.Signals(number).name
        if self.received is None:
            self.received = number
            print(f"\n{name} received: finishing this step, then saving the 'last' checkpoint (send it again to "
                  "stop at once, without saving)", file=self.out or sys.stderr, flush=True)
            return
        raise TrainingInterrupted(number, f"{name} received again: stopped at once without saving; the checkpoints "
                                          "on disk are intact")

    def __exit__(self, *exc) -> None:
        for number, previous in self.previous.items():
            signal.signal(number, previous if previous is not None else signal.SIG_DFL)
        self.previous = {}


class Trainer:
    """Runs the loop described in the module docstring.

    Args:
        model: a Module; ``model.config.to_dict()`` is stored in checkpoints.
        optimizer: an Optimizer over the model's parameters.
        schedule: ``step -> learning rate`` (a :class:`~minillm.optim.CosineSchedule`).
        loop: the loop's settings (:class:`~minillm.train.config.LoopSection`).
        compute_loss: ``(model, batch) -> (loss Tensor, {metric: float})``.
        batches: the training batch source: ``next_batch()``, ``state_dict()``, ``load_state_dict()``.
        evaluate: ``model -> {"val_loss": float, ...}`` or None.
        grad_clip: clip the global gradient norm to this; 0 measures it only.
        tokens_per_batch: tokens in one micro-batch (for tokens/s and MFU).
        flops_per_token: training FLOPs per token (6N + attention), for MFU; None = no MFU.
        peak_flops: the device's measured matmul FLOP/s (the MFU denominator).
        checkpoint_metadata: extra things stored in every checkpoint (``tokenizer``, ``train_config``).
        grad_scaler: the fp16 loss scaler; None builds ``GradScaler()`` when ``loop.precision``
            is "fp16" (bf16 and fp32 use none).
        data_parallel: under an MPI launcher, train data-parallel across the ranks (the default);
            False trains this process alone (the doctor's private checks).
    """

    def __init__(self, model, optimizer, schedule: Callable[[int], float], loop: LoopSection, compute_loss: Callable,
                 batches, evaluate: Callable | None = None, grad_clip: float = 1.0, tokens_per_batch: int = 0,
                 flops_per_token: float | None = None, peak_flops: float | None = None,
                 checkpoint_metadata: dict | None = None, grad_scaler: GradScaler | None = None,
                 data_parallel: bool = True):
        if not isinstance(loop, LoopSection):
            raise TypeError(f"Trainer: loop must be a LoopSection, got {type(loop).__name__}")
        self.model, self.optimizer, self.schedule, self.loop = model, optimizer, schedule, loop
        self.compute_loss, self.batches, self.evaluate = compute_loss, batches, evaluate
        self.grad_clip = float(grad_clip)
        self.tokens_per_batch, self.flops_per_token, self.peak_flops = tokens_per_batch, flops_per_token, peak_flops
        self.checkpoint_metadata = checkpoint_metadata or {}
        self.device = loop.device
        if loop.recompute:
            if not hasattr(model, "recompute"):
                raise ValueError(f"loop.recompute=True: {type(model).__name__} has no per-block recomputation; "
                                 "expected a minillm GPT")
            model.recompute = True           # GPT.forward checkpoints each block (minillm.nn.recompute)
        if grad_scaler is None and loop.precision == "fp16":
            grad_scaler = GradScaler()
        self.scaler = grad_scaler
        self.step = 0
        self.best_val_loss = math.inf
        self.grad_norm_mean: float | None = None
        self.last_good_checkpoint: str | None = None
        self.last_good_step: int | None = None
        self.consecutive_skips = 0
        self.nonfinite_val_loss: float | None = None     # a NaN/Inf validation loss at the current weights
        self.world = current_world() if data_parallel else World()
        self.parallel = self._data_parallel()
        # What a loss that is a mean over masked tokens reads to stay the global batch's mean
        # (minillm.distributed.batch_share); None: a world of one.
        self.batch_share = BatchShare(self.world.size, self.parallel.transport) \
            if self.parallel is not None and self.world.distributed else None
        self.reference_weight_norm, _ = self.weight_norm()
        writes = loop.out_dir and self.world.is_main
        self.metrics = MetricsLog(os.path.join(loop.out_dir, "metrics.jsonl") if writes else None)
        # Only the rank that writes the metrics observes: the others' records would go nowhere.
        self.health = HealthObserver(model) if loop.health_interval and self.world.is_main else None
        for note in self.metrics.notes:
            print(note, file=sys.stderr)

    # -- data parallelism ---------------------------------------------------------------------------
    def parallel_summary(self) -> str | None:
        """One log line saying how the gradients move between ranks (None without data parallelism)."""
        if self.parallel is None:
            return None
        sharding = "; AdamW's moments sharded across the ranks (ZeRO-1)" if self.parallel.shard else ""
        return (f"data parallel: {self.world.size} rank(s), gradients averaged over "
                f"{self.parallel.transport.name} in {len(self.parallel.buckets)} bucket(s){sharding}")

    def _data_parallel(self) -> DataParallel | None:
        """Under an MPI launcher (or with ``loop.zero``): the gradient averager, the parameters made
        rank 0's, AdamW wrapped for ZeRO-1 and this rank's own dropout generator. None otherwise:
        one process trains exactly as without :mod:`minillm.distributed`."""
        loop, world = self.loop, self.world
        zero = getattr(loop, "zero", 0)
        if not world.under_mpi and not zero:
            return None
        check_batch_split(loop.batch_size, world.size)
        if zero and self.scaler is not None:
            raise ValueError(f"loop.zero={zero} with loop.precision={loop.precision!r}: ZeRO-1 does not support the "
                             "fp16 loss scaler; use precision fp32 or bf16, or loop.zero 0")
        if zero and not isinstance(self.optimizer, AdamW):
            raise ValueError(f"loop.zero={zero} with a {type(self.optimizer).__name__} optimizer: ZeRO-1 shards "
                             "AdamW's moments only; use optim.optimizer adamw, or loop.zero 0")
        parallel = DataParallel(self.model.parameters(), world.transport(self.device), shard=bool(zero))
        if world.distributed:
            parallel.broadcast_parameters()
            if world.rank > 0:           # rank 0 keeps the seed's stream: one rank = one process
                set_rng_state(rank_rng_state(loop.seed, world.rank))
        if zero:
            self.optimizer = ShardedAdamW(self.optimizer, parallel)
        return parallel

    def _all_ranks(self, values: list[float], op: str = "sum") -> list[float]:
        """``values`` reduced over the ranks (identity in one process)."""
        if self.parallel is None or not self.world.distributed:
            return values
        return [float(v) for v in self.parallel.transport.allreduce_host(np.array(values, dtype=np.float64), op)]  # host: scalars

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_path(self, kind: str) -> str | None:
        return os.path.join(self.loop.out_dir, f"{kind}.safetensors") if self.loop.out_dir else None

    def weight_norm(self) -> tuple[float, str | None]:
        """(global L2 norm of every parameter, the name of the first one holding NaN/Inf or None).

        Squares are summed in float64 on the parameters' device and read back once (a float32
        weight squared cannot overflow float64, so a non-finite sum means a non-finite weight)."""
        named = list(self.model.named_parameters())
        if not named:
            return 0.0, None
        xp = get_array_module(named[0][1].data)
        sums = xp.stack([xp.square(p.data.astype(xp.float64)).sum() for _, p in named])
        total = item(sums.sum())
        if math.isfinite(total):
            return math.sqrt(total), None
        bad = next(name for (name, _), value in zip(named, to_numpy(sums)) if not math.isfinite(value))
        return math.nan, bad

    def checkpoint_problem(self) -> str | None:
        """Why the model must not be saved now (the rule in the module docstring), or None."""
        norm, bad = self.weight_norm()
        if bad is not None:
            return f"parameter {bad!r} holds NaN/Inf values"
        limit = MAX_WEIGHT_NORM_GROWTH * max(self.reference_weight_norm, 1.0)
        if norm > limit:
            return (f"the weights' global norm {norm:.4g} is more than {MAX_WEIGHT_NORM_GROWTH:g} times their norm "
                    f"when training started ({self.reference_weight_norm:.4g})")
        if self.nonfinite_val_loss is not None:
            return f"the validation loss at these weights is {self.nonfinite_val_loss}"
        return None

    def _last_good(self) -> str:
        if self.last_good_checkpoint is None:
            return "none: nothing was saved yet"
        return f"{self.last_good_checkpoint} (step {self.last_good_step})"

    def save(self, path: str) -> None:
        """Write a checkpoint of everything to ``path``, if the weights are fit to save; if not,
        raise :class:`NonFiniteLossError` (nothing is written)."""
        problem = self.checkpoint_problem()
        if problem is not None:
            raise NonFiniteLossError(
                f"the run diverged at step {self.step}: {problem}; not saving {path}. The last good checkpoint is "
                f"{self._last_good()}. Lower the learning rate (optim.lr) or warm up for longer")
        parallel_extra = {}
        if self.parallel is not None and self.world.distributed:
            # every rank's generator (a resume on as many ranks continues each exactly)
            parallel_extra = {"world_size": self.world.size,
                              "rank_rng_states": self.parallel.transport.allgather_json(get_rng_state())}
        optimizer_state = self.optimizer.state_dict()     # under ZeRO-1 a gather: every rank takes part
        if not self.world.is_main:       # rank 0 writes
            self.last_good_checkpoint, self.last_good_step = path, self.step
            return
        save_checkpoint(path, model=self.model, step=self.step, optimizer_state=optimizer_state,
                        loader_state=self.batches.state_dict(), rng_state=get_rng_state(),
                        tokenizer=self.checkpoint_metadata.get("tokenizer"),
                        train_config=self.checkpoint_metadata.get("train_config"),
                        extra={"best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
                               "grad_norm_mean": self.grad_norm_mean,
                               "reference_weight_norm": self.reference_weight_norm,
                               **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
                               **parallel_extra, **self.checkpoint_metadata.get("extra", {})})
        self.last_good_checkpoint, self.last_good_step = path, self.step

    def resume(self, path: str) -> None:
        """Restore everything from a checkpoint written by :meth:`save`."""
        checkpoint = load_checkpoint(path)
        if checkpoint.model_config != self.model.config.to_dict():
            raise ValueError(f"checkpoint {path!r} is for a different model shape: it has "
                             f"{checkpoint.model_config}, this run builds {self.model.config.to_dict()}")
        self.model.load_state_dict(checkpoint.model_state)
        if checkpoint.optimizer_state is None:
            raise ValueError(f"checkpoint {path!r} holds no optimizer state; it cannot resume training")
        saved_by = checkpoint.optimizer_state.get("optimizer")
        ours = "AdamW" if isinstance(self.optimizer, ShardedAdamW) else type(self.optimizer).__name__
        if saved_by in ("AdamW", "Muon") and saved_by != ours:      # e.g. a run from before Muon became the default
            raise ValueError(f"checkpoint {path!r} was trained with {saved_by}, this run builds {ours}: resume it "
                             f"with --optim.optimizer {saved_by.lower()}")
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        if checkpoint.loader_state is not None:
            self.batches.load_state_dict(checkpoint.loader_state)
        if checkpoint.rng_state is not None:
            set_rng_state(checkpoint.rng_state)
        if self.world.rank > 0 and self.parallel is not None:
            saved = checkpoint.extra.get("rank_rng_states")
            if isinstance(saved, list) and len(saved) == self.world.size:
                set_rng_state(saved[self.world.rank])
            else:                        # another number of ranks wrote it: a fresh stream per (seed, rank, step)
                set_rng_state(rank_rng_state(self.loop.seed, self.world.rank, checkpoint.step))
        self.step = checkpoint.step
        best = checkpoint.extra.get("best_val_loss")
        self.best_val_loss = math.inf if best is None else float(best)
        self.grad_norm_mean = checkpoint.extra.get("grad_norm_mean")
        if self.scaler is not None and checkpoint.extra.get("grad_scaler") is not None:
            self.scaler.load_state_dict(checkpoint.extra["grad_scaler"])
        if checkpoint.extra.get("reference_weight_norm") is not None:
            self.reference_weight_norm = float(checkpoint.extra["reference_weight_norm"])
        self.consecutive_skips, self.nonfinite_val_loss = 0, None
        self.last_good_checkpoint, self.last_good_step = path, self.step

    # -- one step ---------------------------------------------------------------------------------
    def train_step(self) -> dict:
        """One optimizer step (with accumulation); returns its metrics record."""
        loop, scaler = self.loop, self.scaler
        lr = self.schedule(self.step)
        set_lr(self.optimizer, lr)
        self.model.train()
        health = self.health if self.health is not None and is_health_step(self.step + 1, loop.health_interval) \
            else None
        total_loss, extra = 0.0, {}
        parallel = self.parallel
        if parallel is not None:
            parallel.begin_step()
        for micro_batch in range(loop.grad_accum_steps):
            batch = self.batches.next_batch()
            if parallel is not None:     # this rank's rows of the global batch; the last backward communicates
                batch = split_rows(batch, self.world.rank, self.world.size)
                parallel.collect(micro_batch == loop.grad_accum_steps - 1)
            batch = self._to_device(batch)
            watch = health.watch() if health is not None and micro_batch == 0 else contextlib.nullcontext()
            with autocast(loop.precision), watch, sharing_batch(self.batch_share):
                loss, metrics = self.compute_loss(self.model, batch)
            self._backward(loss)
            total_loss += loss.item() / loop.grad_accum_steps
            for key, value in metrics.items():
                extra[key] = extra.get(key, 0.0) + value / loop.grad_accum_steps
        params = [p for p in self.model.parameters() if p.requires_grad]
        if parallel is not None:         # the mean over the ranks: the mean over the global batch
            parallel.finish()
            names = sorted(extra)
            means = self._all_ranks([total_loss, *(extra[name] for name in names)])
            total_loss = means[0] / self.world.size
            extra = {name: value / self.world.size for name, value in zip(names, means[1:])}
        overflow = scaler is not None and scaler.unscale_(self.optimizer)   # fp16: grads / scale, inf/NaN check
        if health is not None:
            health.read_gradients()                                         # before clipping
        if isinstance(self.optimizer, ShardedAdamW):
            grad_norm = self.optimizer.clip_grad_norm(self.grad_clip or math.inf)
        else:
            grad_norm = math.inf if overflow else clip_grad_norm_(params, self.grad_clip or math.inf)
        record = {"kind": "train", "step": self.step + 1, "loss": total_loss, "lr": lr, "grad_norm": grad_norm, **extra}
        if scaler is not None:
            record["loss_scale"] = scaler.get_scale()
        if health is not None and (overflow or not (math.isfinite(total_loss) and math.isfinite(grad_norm))):
            health.discard()                                                # the step is not applied
            health = None
        if overflow and math.isfinite(total_loss):
            return self._skip_overflow(record)
        if not (math.isfinite(total_loss) and math.isfinite(grad_norm)):
            return self._handle_nonfinite(record, total_loss, grad_norm)
        self._note_spike(record, grad_norm)
        if health is not None:
            health.before_update()
        self.optimizer.step()
        self.optimizer.zero_grad()
        if scaler is not None:
            scaler.update()
        self.step += 1
        if health is not None:
            self.metrics.write(**health.record(self.step))
        self.consecutive_skips, self.nonfinite_val_loss = 0, None     # new weights
        return record

    def _backward(self, loss) -> None:
        """Backward of the micro-batch's share of the mean loss (times the fp16 loss scale)."""
        weight = (1.0 if self.scaler is None else self.scaler.get_scale()) / self.loop.grad_accum_steps
        if self.scaler is None:
            (loss * weight).backward()
            return
        with np.errstate(over="ignore", invalid="ignore"):   # fp16 overflow: the scaler's business
            (loss * weight).backward()

    def _skip_overflow(self, record: dict) -> dict:
        """fp16 gradients overflowed at this loss scale: skip the step, halve the scale."""
        self.optimizer.zero_grad()
        self.scaler.update()
        record.update(skipped=True, overflow=True, next_loss_scale=self.scaler.get_scale(),
                      skipped_steps=self.scaler.skipped_steps)
        self.step += 1
        return record

    def _handle_nonfinite(self, record: dict, total_loss: float, grad_norm: float) -> dict:
        """A NaN/Inf loss or gradient norm: stop with a clear error, or skip the step and log it."""
        self.optimizer.zero_grad()
        if self.scaler is not None:
            self.scaler.update()
        if self.loop.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"non-finite loss {total_loss} (gradient norm {grad_norm}) at step {self.step + 1}; "
                f"the last good checkpoint is {self._last_good()}. Lower the learning rate, or set "
                "on_nonfinite='skip' to drop such steps")
        record["skipped"] = True
        self.consecutive_skips += 1
        if self.consecutive_skips >= self.loop.max_skips:
            self.metrics.write(**record)
            raise NonFiniteLossError(
                f"{self.consecutive_skips} steps in a row (up to step {self.step + 1}) had a non-finite loss or "
                f"gradient norm (last: loss {total_loss}, gradient norm {grad_norm}) and were skipped; stopping "
                f"(loop.max_skips={self.loop.max_skips}). The last good checkpoint is {self._last_good()}. "
                "Lower the learning rate (optim.lr)")
        self.step += 1
        return record

    def _note_spike(self, record: dict, grad_norm: float) -> None:
        """Flag a gradient norm far above its running mean, then update the mean."""
        if self.grad_norm_mean is not None and grad_norm > self.loop.spike_factor * self.grad_norm_mean:
            record["grad_norm_spike"] = True
        self.grad_norm_mean = grad_norm if self.grad_norm_mean is None else \
            0.95 * self.grad_norm_mean + 0.05 * grad_norm

    def _to_device(self, batch):
        if isinstance(batch, tuple):
            return tuple(self._to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if hasattr(batch, "dtype") and hasattr(batch, "shape"):
            return to_device(batch, self.device)
        return batch

    def _profile_report(self, profile: Profile, first_step: int) -> str:
        """Write ``out_dir/profile.json``; return the tables to print (by op; by module, each
        block's parts with the layers added up)."""
        where = ""
        if self.loop.out_dir:
            path = os.path.join(self.loop.out_dir, "profile.json")
            profile.save_json(path)
            where = f", saved to {path}"
        steps = f"step {first_step}" if profile.steps == 1 else f"steps {first_step}-{first_step + profile.steps - 1}"
        return (f"profile of {steps}{where}\n\n{profile.table()}\n\n"
                f"{profile.table(group_by='module', depth=3, merge_indices=True)}\n")

    # -- the loop ---------------------------------------------------------------------------------
    def run_evaluation(self) -> dict:
        result = None
        if self.world.is_main:
            with autocast(self.loop.precision):
                result = self.evaluate(self.model)
        if self.parallel is not None and self.world.distributed:    # every rank decides alike
            result = self.parallel.transport.broadcast_json(result, root=0)
        record = {"kind": "eval", "step": self.step, **result}
        self.metrics.write(**record)
        val = result.get("val_loss")
        if val is not None and not math.isfinite(val):
            self.nonfinite_val_loss = val            # these weights must not be saved (checkpoint_problem)
        if val is not None and val < self.best_val_loss and self.loop.out_dir:
            self.best_val_loss = val
            self.save(self.checkpoint_path("best"))
        elif val is not None and val < self.best_val_loss:
            self.best_val_loss = val
        return record

    def fit(self, stop_at: int | None = None) -> list[dict]:
        """Train until ``max_steps`` (or pause at ``stop_at``: the schedule still spans
        ``max_steps``, and the 'last' checkpoint there resumes exactly); returns the records.

        On SIGINT/SIGTERM: finish the step, save ``last`` and raise :class:`TrainingInterrupted`."""
        with _StopSignals() as stop:
            return self._fit(stop_at, stop)

    def _stop_on_signal(self, number: int, saved: bool) -> None:
        """The loop was asked to stop by signal ``number``: save 'last' (unless just saved), then raise."""
        name = signal.Signals(number).name
        path = self.checkpoint_path("last")
        if path is None:
            raise TrainingInterrupted(number, f"stopped by {name} after step {self.step} (no out_dir: nothing saved)")
        if not saved:
            self.save(path)
        raise TrainingInterrupted(number, f"stopped by {name} after step {self.step}; saved {path} (continue with "
                                          f"--resume {path})")

    def _fit(self, stop_at: int | None, stop: _StopSignals) -> list[dict]:
        s = self.loop
        stop_at = s.max_steps if stop_at is None else min(stop_at, s.max_steps)
        self.metrics.truncate_after(self.step)
        main = self.world.is_main
        bar = tqdm(total=s.max_steps, initial=self.step, disable=not (s.progress and main), dynamic_ncols=True,
                   desc="train", leave=True)
        window_start, window_tokens = time.perf_counter(), 0
        profile = Profile(self.model) if s.profile and main else None
        steps_run, profiled_from = 0, None       # steps of this call: the first warms up, unprofiled
        try:
            while self.step < stop_at:
                if profile is not None and steps_run >= 1:
                    profiled_from = profiled_from or self.step + 1
                    with profile:
                        record = self.train_step()
                    if profile.steps == s.profile:
                        bar.write(self._profile_report(profile, profiled_from))
                        profile = None
                else:
                    record = self.train_step()
                steps_run += 1
                window_tokens += self.tokens_per_batch * s.grad_accum_steps
                if record.get("skipped"):
                    self.metrics.write(**record)
                elif record.get("grad_norm_spike") or self.step % s.log_interval == 0 or self.step == s.max_steps:
                    elapsed = time.perf_counter() - window_start
                    tokens_per_s = window_tokens / elapsed if elapsed > 0 else 0.0
                    record["tokens_per_s"] = tokens_per_s
                    if self.flops_per_token and self.peak_flops:
                        # tokens/s is the job's (the global batch); the peak is one rank's
                        rank_flops = tokens_per_s * self.flops_per_token / self.world.size
                        if rank_flops > self.peak_flops:
                            # The peak was measured while other work held the cores (a few matmuls at
                            # start-up): the model cannot beat the machine, so measure it again now.
                            self.peak_flops = max(self.peak_flops, measure_matmul_peak(self.device))
                        record["mfu"] = rank_flops / self.peak_flops
                    self.metrics.write(**record)
                    window_start, window_tokens = time.perf_counter(), 0
                    postfix = {"loss": f"{record['loss']:.3f}", "lr": f"{record['lr']:.1e}",
                               "tok/s": f"{tokens_per_s:.0f}"}
                    if "mfu" in record:
                        postfix["mfu"] = f"{100 * record['mfu']:.1f}%"
                    if "loss_scale" in record:
                        postfix["scale"] = f"{record['loss_scale']:g}"
                    bar.set_postfix(postfix, refresh=False)
                bar.update(1)
                at_eval = self.step % s.eval_interval == 0 or self.step == s.max_steps
                if self.evaluate is not None and at_eval:
                    result = self.run_evaluation()
                    if main:
                        bar.write(f"step {self.step}: " + ", ".join(
                            f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))
                save_now = (s.save_interval and self.step % s.save_interval == 0) or \
                    (not s.save_interval and at_eval) or self.step in (stop_at, s.max_steps)
                if save_now and s.out_dir:
                    self.save(self.checkpoint_path("last"))
                received = stop.received
                if self.parallel is not None and self.world.distributed:   # all ranks stop at the same step
                    received = int(self._all_ranks([received or 0], op="max")[0]) or None
                if received is not None:
                    self._stop_on_signal(received, saved=bool(save_now))
            if profile is not None:              # the run ended before N steps were profiled
                bar.write(self._profile_report(profile, profiled_from) if profile.steps else
                          f"profile: nothing profiled (--profile {s.profile}): this run had no step after its first, "
                          "which warms up")
            if stop.received is not None:        # the signal came after the last step
                self._stop_on_signal(stop.received, saved=True)
        finally:
            bar.close()
            if s.out_dir and self.metrics.records and main:
                plot_loss_curve(self.metrics.records, os.path.join(s.out_dir, "loss.png"))
        return self.metrics.records


def rank_rng_state(seed: int, rank: int, step: int = 0) -> dict:
    """The generator state for rank ``rank`` > 0 of a data-parallel run (dropout masks differ
    across ranks and repeat across runs): PCG64 seeded with (seed, rank) -- and the step, for a
    resume on another number of ranks, whose saved states do not map onto these ranks."""
    generator = np.random.PCG64(np.random.SeedSequence([int(seed), int(rank), int(step)]))  # host: seeding
    state = generator.state
    return {"bit_generator": state["bit_generator"],
            "state": {"state": int(state["state"]["state"]), "inc": int(state["state"]["inc"])},
            "has_uint32": int(state["has_uint32"]), "uinteger": int(state["uinteger"])}
