"""The training loop shared by pretraining, SFT and DPO.

One optimizer step:

1. lr ← cosine_schedule(step) (linear warmup, cosine decay to a floor);
2. for each of ``grad_accum_steps`` micro-batches: loss_k = compute_loss(model, batch_k),
   backward of loss_k / grad_accum_steps, so the summed gradient is that of the mean loss over
   all micro-batches (equal-sized micro-batches assumed, as the loaders produce);
3. a non-finite loss or gradient norm stops the run (naming the step and the last good
   checkpoint), or with ``on_nonfinite="skip"`` drops the step and logs it;
4. clip the global gradient norm; log a spike when it exceeds ``spike_factor`` times its
   running mean; AdamW step; zero the gradients.

Mixed precision (``precision`` "fp16"/"bf16", see :mod:`minillm.amp`): the loss (and evaluation)
runs under ``amp.autocast``; for fp16 a :class:`~minillm.amp.GradScaler` multiplies the loss by
its scale before backward, divides the gradients again before clipping, and on an inf/NaN
gradient skips the step (logged with ``skipped`` and ``overflow``) and halves the scale. Every
train record then carries ``loss_scale``; the scaler's state travels in checkpoints.

Every ``eval_interval`` steps (and at the end) ``evaluate(model)`` runs; the lowest validation
loss is saved as ``best.safetensors``; ``last.safetensors`` holds the newest state and is what
``resume`` continues from, exactly: weights, optimizer moments, step, RNG state and the batch
sampler's position all come back.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
from tqdm import tqdm

from minillm.amp import GradScaler, autocast, check_precision
from minillm.backend import get_rng_state, set_rng_state, to_device
from minillm.optim import clip_grad_norm_, cosine_schedule
from minillm.train.checkpoint import load_checkpoint, save_checkpoint
from minillm.train.metrics import MetricsLog, plot_loss_curve


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/Inf and the run was told to stop."""


@dataclass
class LoopSettings:
    """The knobs of :class:`Trainer` (a subset of TrainConfig, reused by SFT and DPO)."""

    max_steps: int
    lr: float
    min_lr: float = 0.0
    warmup_steps: int = 0
    grad_accum_steps: int = 1
    grad_clip: float = 1.0
    eval_interval: int = 100
    log_interval: int = 10
    save_interval: int = 0
    on_nonfinite: str = "stop"
    spike_factor: float = 5.0
    progress: bool = True
    out_dir: str | None = None
    precision: str = "fp32"

    def __post_init__(self):
        check_precision(self.precision, "LoopSettings: precision")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"on_nonfinite={self.on_nonfinite!r}; expected 'stop' or 'skip'")
        if self.max_steps <= 0 or self.grad_accum_steps <= 0:
            raise ValueError(f"max_steps={self.max_steps} and grad_accum_steps={self.grad_accum_steps} "
                             "must be positive")


class Trainer:
    """Runs the loop described in the module docstring.

    Args:
        model: a Module; ``model.config.to_dict()`` is stored in checkpoints.
        optimizer: an Optimizer over the model's parameters.
        settings: LoopSettings.
        compute_loss: ``(model, batch) -> (loss Tensor, {metric: float})``.
        batches: the training batch source: ``next_batch()``, ``state_dict()``, ``load_state_dict()``.
        evaluate: ``model -> {"val_loss": float, ...}`` or None.
        tokens_per_batch: tokens in one micro-batch (for tokens/s and MFU).
        flops_per_token: training FLOPs per token (6N + attention), for MFU; None = no MFU.
        peak_flops: the device's measured matmul FLOP/s (the MFU denominator).
        checkpoint_metadata: extra things stored in every checkpoint (``tokenizer``, ``train_config``).
        device: where batches go.
        grad_scaler: the fp16 loss scaler; None builds ``GradScaler()`` when ``settings.precision``
            is "fp16" (bf16 and fp32 use none).
    """

    def __init__(self, model, optimizer, settings: LoopSettings, compute_loss: Callable, batches,
                 evaluate: Callable | None = None, tokens_per_batch: int = 0,
                 flops_per_token: float | None = None, peak_flops: float | None = None,
                 checkpoint_metadata: dict | None = None, device: str = "cpu",
                 grad_scaler: GradScaler | None = None):
        self.model, self.optimizer, self.settings = model, optimizer, settings
        self.compute_loss, self.batches, self.evaluate = compute_loss, batches, evaluate
        self.tokens_per_batch, self.flops_per_token, self.peak_flops = tokens_per_batch, flops_per_token, peak_flops
        self.checkpoint_metadata = checkpoint_metadata or {}
        self.device = device
        if grad_scaler is None and settings.precision == "fp16":
            grad_scaler = GradScaler()
        self.scaler = grad_scaler
        self.step = 0
        self.best_val_loss = math.inf
        self.grad_norm_mean: float | None = None
        self.last_good_checkpoint: str | None = None
        out_dir = settings.out_dir
        self.metrics = MetricsLog(os.path.join(out_dir, "metrics.jsonl") if out_dir else None)

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_path(self, kind: str) -> str | None:
        return os.path.join(self.settings.out_dir, f"{kind}.safetensors") if self.settings.out_dir else None

    def save(self, path: str) -> None:
        save_checkpoint(path, model=self.model, step=self.step, optimizer=self.optimizer,
                        loader_state=self.batches.state_dict(), rng_state=get_rng_state(),
                        tokenizer=self.checkpoint_metadata.get("tokenizer"),
                        train_config=self.checkpoint_metadata.get("train_config"),
                        extra={"best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
                               "grad_norm_mean": self.grad_norm_mean,
                               **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
                               **self.checkpoint_metadata.get("extra", {})})
        self.last_good_checkpoint = path

    def resume(self, path: str) -> None:
        """Restore everything from a checkpoint written by :meth:`save`."""
        checkpoint = load_checkpoint(path)
        if checkpoint.model_config != self.model.config.to_dict():
            raise ValueError(f"checkpoint {path!r} is for a different model shape: it has "
                             f"{checkpoint.model_config}, this run builds {self.model.config.to_dict()}")
        self.model.load_state_dict(checkpoint.model_state)
        if checkpoint.optimizer_state is None:
            raise ValueError(f"checkpoint {path!r} holds no optimizer state; it cannot resume training")
        self.optimizer.load_state_dict(checkpoint.optimizer_state)
        if checkpoint.loader_state is not None:
            self.batches.load_state_dict(checkpoint.loader_state)
        if checkpoint.rng_state is not None:
            set_rng_state(checkpoint.rng_state)
        self.step = checkpoint.step
        best = checkpoint.extra.get("best_val_loss")
        self.best_val_loss = math.inf if best is None else float(best)
        self.grad_norm_mean = checkpoint.extra.get("grad_norm_mean")
        if self.scaler is not None and checkpoint.extra.get("grad_scaler") is not None:
            self.scaler.load_state_dict(checkpoint.extra["grad_scaler"])
        self.last_good_checkpoint = path

    # -- one step ---------------------------------------------------------------------------------
    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self) -> dict:
        """One optimizer step (with accumulation); returns its metrics."""
        s = self.settings
        lr = cosine_schedule(self.step, s.lr, s.warmup_steps, s.max_steps, s.min_lr)
        self._set_lr(lr)
        self.model.train()
        scaler = self.scaler
        # the loss scale (fp16) and the 1/K of accumulation in one factor (fp32: exactly 1/K as before)
        loss_weight = (1.0 if scaler is None else scaler.get_scale()) / s.grad_accum_steps
        total_loss, extra = 0.0, {}
        for _ in range(s.grad_accum_steps):
            batch = self._to_device(self.batches.next_batch())
            with autocast(s.precision):
                loss, metrics = self.compute_loss(self.model, batch)
            if scaler is None:
                (loss * loss_weight).backward()
            else:
                with np.errstate(over="ignore", invalid="ignore"):   # fp16 overflow: the scaler's business
                    (loss * loss_weight).backward()
            total_loss += loss.item() / s.grad_accum_steps
            for key, value in metrics.items():
                extra[key] = extra.get(key, 0.0) + value / s.grad_accum_steps
        params = [p for p in self.model.parameters() if p.requires_grad]
        overflow = scaler is not None and scaler.unscale_(self.optimizer)   # grads / scale, inf/NaN check
        if overflow:
            grad_norm = math.inf
        else:
            grad_norm = clip_grad_norm_(params, s.grad_clip) if s.grad_clip > 0 else clip_grad_norm_(params, math.inf)
        record = {"kind": "train", "step": self.step + 1, "loss": total_loss, "lr": lr, "grad_norm": grad_norm, **extra}
        if scaler is not None:
            record["loss_scale"] = scaler.get_scale()
        if overflow and math.isfinite(total_loss):
            # fp16 gradients overflowed at this loss scale: skip the step, halve the scale
            self.optimizer.zero_grad()
            scaler.update()
            record.update(skipped=True, overflow=True, next_loss_scale=scaler.get_scale(),
                          skipped_steps=scaler.skipped_steps)
            self.step += 1
            return record
        if not (math.isfinite(total_loss) and math.isfinite(grad_norm)):
            self.optimizer.zero_grad()
            if scaler is not None:
                scaler.update()
            if s.on_nonfinite == "stop":
                where = self.last_good_checkpoint or "none saved yet"
                raise NonFiniteLossError(
                    f"non-finite loss {total_loss} (gradient norm {grad_norm}) at step {self.step + 1}; "
                    f"the last good checkpoint is {where}. Lower the learning rate, or set "
                    "on_nonfinite='skip' to drop such steps")
            record["skipped"] = True
            self.step += 1
            return record
        if self.grad_norm_mean is not None and grad_norm > s.spike_factor * self.grad_norm_mean:
            record["grad_norm_spike"] = True
        self.grad_norm_mean = grad_norm if self.grad_norm_mean is None else 0.95 * self.grad_norm_mean + 0.05 * grad_norm
        self.optimizer.step()
        self.optimizer.zero_grad()
        if scaler is not None:
            scaler.update()
        self.step += 1
        return record

    def _to_device(self, batch):
        if isinstance(batch, tuple):
            return tuple(self._to_device(b) for b in batch)
        if isinstance(batch, dict):
            return {k: self._to_device(v) for k, v in batch.items()}
        if hasattr(batch, "dtype") and hasattr(batch, "shape"):
            return to_device(batch, self.device)
        return batch

    # -- the loop ---------------------------------------------------------------------------------
    def run_evaluation(self) -> dict:
        with autocast(self.settings.precision):
            result = self.evaluate(self.model)
        record = {"kind": "eval", "step": self.step, **result}
        self.metrics.write(**record)
        val = result.get("val_loss")
        if val is not None and val < self.best_val_loss and self.settings.out_dir:
            self.best_val_loss = val
            self.save(self.checkpoint_path("best"))
        elif val is not None and val < self.best_val_loss:
            self.best_val_loss = val
        return record

    def fit(self, stop_at: int | None = None) -> list[dict]:
        """Train until ``max_steps`` (or pause at ``stop_at``: the schedule still spans
        ``max_steps``, and the 'last' checkpoint there resumes exactly); returns the records."""
        s = self.settings
        stop_at = s.max_steps if stop_at is None else min(stop_at, s.max_steps)
        self.metrics.truncate_after(self.step)
        bar = tqdm(total=s.max_steps, initial=self.step, disable=not s.progress, dynamic_ncols=True,
                   desc="train", leave=True)
        window_start, window_tokens = time.perf_counter(), 0
        try:
            while self.step < stop_at:
                record = self.train_step()
                window_tokens += self.tokens_per_batch * s.grad_accum_steps
                if record.get("skipped"):
                    self.metrics.write(**record)
                elif record.get("grad_norm_spike") or self.step % s.log_interval == 0 or self.step == s.max_steps:
                    elapsed = time.perf_counter() - window_start
                    tokens_per_s = window_tokens / elapsed if elapsed > 0 else 0.0
                    record["tokens_per_s"] = tokens_per_s
                    if self.flops_per_token and self.peak_flops:
                        record["mfu"] = tokens_per_s * self.flops_per_token / self.peak_flops
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
                    bar.write(f"step {self.step}: " + ", ".join(
                        f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float)))
                save_now = (s.save_interval and self.step % s.save_interval == 0) or \
                    (not s.save_interval and at_eval) or self.step in (stop_at, s.max_steps)
                if save_now and s.out_dir:
                    self.save(self.checkpoint_path("last"))
        finally:
            bar.close()
            if s.out_dir and self.metrics.records:
                plot_loss_curve(self.metrics.records, os.path.join(s.out_dir, "loss.png"))
        return self.metrics.records
