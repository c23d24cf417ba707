"""The model-facing scheduler of ``minillm serve``: continuous batching in one background thread.

Requests (``Job``) are submitted from any thread into a bounded waiting queue. The scheduler
thread loops:

1. admit: take waiting jobs while rows are free (cancelled ones are dropped), prefill them into
   the running :class:`~minillm.generation.batch.DecodeBatch` and sample each one's first token;
2. step: feed every row its newest token at its own position, one batched forward for all,
   and sample each row's next token with the row's own sampler (rows with equal settings are
   filtered together, :func:`~minillm.generation.batch.choose_rows`);
3. a job leaves the batch when it emits a stop id, its text reaches a stop string, it has
   produced ``max_tokens`` tokens, or its client went away (``cancel()``); its row is reused at
   once by the next waiting job.

Each job has its own :class:`~minillm.generation.sampling.Sampler` (its temperature, top-p,
top-k and its own seeded generator), so a seeded request gives the same tokens whether it runs
alone or batched with others (up to float rounding of the batched products, which flips a token
only at an exact near-tie). Output goes to the job's ``emit`` callback, called in the scheduler
thread: ``emit("text", chunk)`` for each piece of released text, then exactly one
``emit("done", finish_reason)`` ("stop" or "length") or ``emit("error", message)``.

A failure inside a step (NaN logits from broken weights, a bug) ends the jobs in the batch with
an error and the scheduler goes on with the next ones: the server never dies with it.
"""
from __future__ import annotations

import collections
import itertools
import threading
import time

from minillm.generation.batch import DecodeBatch, choose_rows
from minillm.generation.sampling import Sampler
from minillm.generation.text import IncrementalDetokenizer


class QueueFull(Exception):
    """The waiting queue holds ``max_queue`` jobs already (the HTTP layer answers 429)."""


class Job:
    """One sequence to generate: prompt ids, limits, sampling, and where its output goes.

    Args:
        prompt: token ids (1..block_size - max_tokens of them, checked by the caller).
        max_tokens: the most tokens to generate (>= 1).
        emit: ``emit(kind, value)`` (see the module docstring), called in the scheduler thread.
        stop_ids: token ids that end the sequence (not part of its text).
        stop_strings: strings that end it (cut from its text).
        sampling: Sampler's temperature, top_k, top_p, repetition_penalty, seed (an int seed
            gives this job its own generator).
    Attributes after it ran: ``completion_tokens`` (tokens sampled, stop ids included),
    ``finish_reason``, ``first_token_time`` (``time.perf_counter()`` of its first token).
    """

    _ids = itertools.count()

    def __init__(self, prompt: list[int], max_tokens: int, emit, stop_ids=(), stop_strings=(), **sampling):
        self.id = next(Job._ids)
        self.prompt, self.max_tokens, self.emit = list(prompt), int(max_tokens), emit
        self.stop_ids, self.stop_strings = set(stop_ids), tuple(stop_strings)
        self.sampling = sampling
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.first_token_time: float | None = None
        self.cancelled = False
        self.finished = False                                    # "done" or "error" was emitted
        self.sampler = None
        self.detokenizer = None
        self.pending: int | None = None                          # the sampled token not yet fed

    def cancel(self) -> None:
        """Stop generating (the client went away); safe from any thread."""
        self.cancelled = True


class Scheduler:
    """Continuous batching over ``model`` (see the module docstring).

    Args:
        model, tokenizer: a GPT in eval mode and its tokenizer (``decode_bytes``).
        max_batch: rows decoded together at most.
        max_queue: jobs waiting for a row at most; ``submit`` raises QueueFull beyond.
    ``start()`` runs the loop in a daemon thread, ``close()`` stops it (waiting jobs end with an
    error). ``stats()`` reports rows, waiting jobs and totals (for /health and the benchmark).
    """

    def __init__(self, model, tokenizer, max_batch: int = 16, max_queue: int = 64):
        for name, value in (("max_batch", max_batch), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Scheduler: {name}={value!r}; expected an int >= 1")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        self.batch = DecodeBatch(model, max_batch)
        self.jobs: dict[int, Job] = {}                           # the jobs in the batch, by id
        self.waiting: collections.deque[Job] = collections.deque()
        self.wake = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None
        self.steps = 0
        self.tokens_generated = 0
        self.failures = 0

    # -- the other threads' side -----------------------------------------------------------------
    def submit(self, jobs: list[Job]) -> None:
        """Queue ``jobs`` (all or none); raises QueueFull when they do not fit, and ValueError or
        TypeError (from the Sampler) for sampling settings that are not valid, here in the caller's
        thread rather than in the batch."""
        for job in jobs:
            job.sampler = Sampler([job.prompt], self.model.config.vocab_size, **job.sampling)
            job.detokenizer = IncrementalDetokenizer(self.tokenizer, job.stop_strings)
        with self.wake:
            if not self.running:
                raise RuntimeError("Scheduler: not running (start() it first)")
            if len(self.waiting) + len(jobs) > self.max_queue:
                raise QueueFull(f"{len(self.waiting)} requests are waiting already (max_queue={self.max_queue})")
            self.waiting.extend(jobs)
            self.wake.notify()

    def stats(self) -> dict:
        return {"running": self.batch.rows, "waiting": len(self.waiting), "max_batch": self.max_batch,
                "max_queue": self.max_queue, "steps": self.steps, "tokens_generated": self.tokens_generated,
                "failures": self.failures}

    def start(self) -> "Scheduler":
        with self.wake:
            if self.running:
                return self
            self.running = True
        self.thread = threading.Thread(target=self._loop, name="minillm-scheduler", daemon=True)
        self.thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        with self.wake:
            self.running = False
            self.wake.notify()
        if self.thread is not None:
            self.thread.join(timeout)
        for job in list(self.waiting) + list(self.jobs.values()):
            self._finish(job, "error", "the server is shutting down")
        self.waiting.clear()

    # -- the scheduler thread --------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.wake:
                while self.running and not self.waiting and not self.jobs:
                    self.wake.wait()
                if not self.running:
                    return
                admitted = []
                while self.waiting and len(admitted) < self.batch.free:
                    job = self.waiting.popleft()
                    if not job.cancelled:
                        admitted.append(job)
            try:
                self._iteration(admitted)
            except Exception as error:                           # the boundary: the thread never dies
                self.failures += 1
                message = f"generation failed: {type(error).__name__}: {error}"
                for job in admitted + list(self.jobs.values()):
                    self._finish(job, "error", message)
                self.batch.clear()
                self.jobs.clear()

    def _iteration(self, admitted: list[Job]) -> None:
        if admitted:
            logits = self.batch.add([(job.id, job.prompt) for job in admitted])
            for job in admitted:
                self.jobs[job.id] = job
            for job, token in zip(admitted, choose_rows([job.sampler for job in admitted], logits)):
                self._accept_or_fail(job, token)
        self._drop_cancelled()
        if not self.jobs:
            return
        keys = list(self.batch.keys)
        logits = self.batch.step([self.jobs[key].pending for key in keys])
        self.steps += 1
        for key, token in zip(keys, choose_rows([self.jobs[key].sampler for key in keys], logits)):
            self._accept_or_fail(self.jobs[key], token)
        self._drop_cancelled()

    def _accept_or_fail(self, job: Job, token: int) -> None:
        """_accept, but a failure with this job's token (e.g. an id its tokenizer cannot decode,
        from a model whose vocabulary is larger) ends this job only, not the batch."""
        try:
            self._accept(job, token)
        except Exception as error:                               # the job's boundary
            self.failures += 1
            if job.id in self.jobs:
                self.batch.remove(job.id)
                del self.jobs[job.id]
            self._finish(job, "error", f"generation failed: {type(error).__name__}: {error}")

    def _accept(self, job: Job, token: int) -> None:
        """The job's newly sampled token: emit its text, and end the job when it is done."""
        job.completion_tokens += 1
        self.tokens_generated += 1
        if job.first_token_time is None:
            job.first_token_time = time.perf_counter()
        job.pending = token
        if token in job.stop_ids:
            self._leave(job, "stop")
            return
        chunk = job.detokenizer.push(token)
        if chunk:
            self._emit(job, "text", chunk)
        if job.detokenizer.stopped:
            self._leave(job, "stop")
        elif job.completion_tokens >= job.max_tokens:
            tail = job.detokenizer.finish()
            if tail:
                self._emit(job, "text", tail)
            self._leave(job, "length")

    def _drop_cancelled(self) -> None:
        for job in [job for job in self.jobs.values() if job.cancelled]:
            self.batch.remove(job.id)
            del self.jobs[job.id]

    def _leave(self, job: Job, reason: str) -> None:
        self.batch.remove(job.id)
        del self.jobs[job.id]
        self._finish(job, "done", reason)

    def _finish(self, job: Job, kind: str, value: str) -> None:
        if job.finished:
            return
        job.finished = True
        if kind == "done":
            job.finish_reason = value
        self._emit(job, kind, value)

    @staticmethod
    def _emit(job: Job, kind: str, value) -> None:
        try:
            job.emit(kind, value)
        except Exception:       # noqa: BLE001  (a closed client's callback may fail; the job is cancelled)
            job.cancel()
