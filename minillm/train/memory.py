"""``minillm memory``: the memory ledger of one training step of a config, with its step time.

    minillm memory                                   # the main job's model and batch
    minillm memory --recompute                       # the same with per-block recomputation
    minillm memory --preset gpt2 --n_layer 6 --n_head 6 --n_kv_head 6 --n_embd 384 --block_size 256 \\
        --vocab_size 65 --batch_size 8 --json ledger.json

It takes the options of ``minillm train`` (the model, the batch size, precision, device, seed,
``--recompute``), builds the model and its optimizer as training would (AdamW or Muon, their groups, the
schedule's first learning rate, fp16's loss scaler), and feeds it random token ids of one
micro-batch (``loop.batch_size`` x ``block_size``; no corpus or tokenizer is read: the vocabulary
is ``model.vocab_size``, else ``data.vocab_size``). One warm-up step creates the optimizer's state,
then ``time_steps`` steps are timed (the median is printed, with the load average), then one more
step runs under :func:`minillm.profiler.memory_ledger`, whose tables are printed (and written as
JSON with ``--json FILE``; an existing file is replaced only with ``--overwrite``).
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from minillm import commandline
from minillm.amp import GradScaler, autocast
from minillm.backend import check_device, manual_seed, synchronize
from minillm.config import Section, option
from minillm.fileio import refuse_to_overwrite
from minillm.nn import GPT
from minillm.profiler import memory_ledger
from minillm.train.config import TrainConfig


@dataclass
class MemorySection(Section):
    name: ClassVar[str] = "memory"
    title: ClassVar[str] = "the memory ledger's output"

    json: str = option("", "also write the ledger as JSON to this file")
    depth: int = option(3, "module paths in the table cut to this many names (blocks.*.attn)", minimum=1)
    time_steps: int = option(3, "timed steps before the ledger's step (their median is printed); 0 = none",
                             minimum=0)


@dataclass
class MemoryConfig(TrainConfig):
    """``minillm memory``: a training config (the options of ``minillm train``) and the ledger's output."""

    description: ClassVar[str] = ("Where the memory of one training step goes: parameters, gradients, AdamW state "
                                  "and the activations each module and op keeps for backward, against the measured "
                                  "peak; with the step time (try --recompute).")

    memory: MemorySection = field(default_factory=MemorySection)


class TrainingStep:
    """One optimizer step of a config on a fixed random batch, split so the ledger can see
    between forward and backward: :meth:`forward` -> loss, :meth:`backward`, :meth:`update`."""

    def __init__(self, cfg: TrainConfig):
        loop = cfg.loop
        check_device(loop.device)
        vocab = cfg.model.vocab_size or cfg.data.vocab_size
        self.config = cfg.model.build(vocab)
        manual_seed(loop.seed)
        self.model = GPT(self.config).to(loop.device)
        self.model.recompute = loop.recompute
        self.model.train()
        schedule = cfg.optim.schedule(loop.max_steps)
        self.optimizer = cfg.optim.build_optimizer(cfg.optim.param_groups(self.model.named_parameters()), schedule)
        self.scaler = GradScaler() if loop.precision == "fp16" else None
        self.precision, self.device = loop.precision, loop.device
        rng = np.random.default_rng(loop.seed)              # host: the batch is made on the host, as a loader would
        shape = (loop.batch_size, self.config.block_size)
        self.ids = rng.integers(0, self.config.vocab_size, size=shape).astype(np.int64)       # host: random ids
        self.targets = rng.integers(0, self.config.vocab_size, size=shape).astype(np.int64)   # host: random ids

    def forward(self):
        with autocast(self.precision):
            _, loss = self.model(self.ids, self.targets)
        return loss

    def backward(self, loss) -> None:
        if self.scaler is None:
            loss.backward()
            return
        with np.errstate(over="ignore", invalid="ignore"):      # fp16 overflow: the scaler's business
            self.scaler.scale(loss).backward()

    def update(self) -> None:
        """The optimizer's step (fp16: unscale, step unless a gradient overflowed, update the scale)."""
        if self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.unscale_(self.optimizer)
            self.scaler.step(self.optimizer)
            self.scaler.update()

    def __call__(self) -> None:
        self.backward(self.forward())
        self.update()
        self.optimizer.zero_grad()
        if self.device != "cpu":
            synchronize(self.device)

    def ledger(self):
        """One step under :func:`minillm.profiler.memory_ledger`."""
        return memory_ledger(self.model, self.forward, self.optimizer, backward=self.backward, update=self.update,
                             labels={"precision": self.precision, "batch_size": int(self.ids.shape[0]),
                                     "block_size": int(self.ids.shape[1])})


def time_steps(step: TrainingStep, count: int) -> list[float]:
    """Seconds of ``count`` steps, each timed alone."""
    seconds = []
    for _ in range(count):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    return seconds


def run_memory(cfg: MemoryConfig) -> int:
    args = cfg.memory
    if args.json:
        refuse_to_overwrite(f"--json {args.json!r}", "", [args.json] if os.path.lexists(args.json) else [],
                            cfg.loop.overwrite, "pick another file or pass --overwrite to replace it")
    step = TrainingStep(cfg)
    c = step.config
    print(f"minillm memory: {cfg.model.preset} model, {c.n_layer} layers x {c.n_embd} wide, {c.n_head}/{c.n_kv_head} "
          f"heads, vocab {c.vocab_size}, context {c.block_size}; batch {cfg.loop.batch_size} (one micro-batch), "
          f"{cfg.loop.precision} on {cfg.loop.device}, recompute {'on' if cfg.loop.recompute else 'off'}; "
          f"{step.model.num_parameters():,} parameters\n")
    step()                                           # warm-up: the optimizer's state, the allocator's pools
    seconds = time_steps(step, args.time_steps)
    ledger = step.ledger()
    print(ledger.table(depth=args.depth))
    if seconds:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"\nstep time: median {1e3 * statistics.median(seconds):.1f} ms over {len(seconds)} steps "
              f"({', '.join(f'{1e3 * s:.0f}' for s in seconds)} ms; load average {load:.2f}); the ledger's own "
              "step ran slower (tracemalloc)")
    if args.json:
        ledger.info["step_seconds"] = seconds
        ledger.save_json(args.json)
        print(f"\nwritten to {args.json}")
    return 0


def register(subparsers) -> None:
    commandline.register(subparsers, "memory", MemoryConfig, run_memory,
                         help="where one training step's memory goes (parameters, gradients, optimizer state, "
                              "activations per module and op) against the measured peak")
