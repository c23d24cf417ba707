"""Learning-rate schedules: linear warmup then cosine decay, and setting an optimizer's lr.

A schedule here is a pure function of the step number, so resuming a run needs nothing but
the step (which the checkpoint stores anyway)::

    schedule = CosineSchedule(lr=2e-3, min_lr=2e-4, warmup_steps=50, total_steps=400)
    opt = AdamW(params, lr=schedule(0))          # the schedule is the one owner of the rate
    for step in range(start_step, 400):
        set_lr(opt, schedule(step))
        ...
        opt.step()

(``cosine_schedule(step, max_lr, warmup_steps, total_steps, min_lr)`` is the same function with
every argument spelled out.)
"""
from __future__ import annotations

import math

from minillm.optim.optimizer import Optimizer, check_number


def cosine_schedule(step: int, max_lr: float, warmup_steps: int, total_steps: int,
                    min_lr: float = 0.0) -> float:
    """The learning rate for the update at ``step`` (counted from 0).

    ::

        step < warmup_steps:                 lr = max_lr · (step + 1) / warmup_steps
        warmup_steps <= step < total_steps:  lr = min_lr + ½ (max_lr − min_lr) (1 + cos(π·r)),
                                             r = (step − warmup_steps) / (total_steps − warmup_steps)
        step >= total_steps:                 lr = min_lr

    The warmup's first update already uses max_lr/warmup_steps (not 0, which would waste a
    step) and its last uses max_lr; the cosine starts at max_lr (r = 0) and would reach min_lr
    at step = total_steps (r = 1), from where min_lr is held.

    Args:
        step: >= 0, the index of the update about to be made.
        max_lr: peak learning rate, >= 0.
        warmup_steps: >= 0 (0: no warmup).
        total_steps: >= warmup_steps and >= 1; the step where the decay ends.
        min_lr: floor, in [0, max_lr].
    """
    step = _check_count("step", step)
    warmup_steps = _check_count("warmup_steps", warmup_steps)
    total_steps = _check_count("total_steps", total_steps)
    max_lr = check_number("cosine_schedule", "max_lr", max_lr)
    min_lr = check_number("cosine_schedule", "min_lr", min_lr)
    if min_lr > max_lr:
        raise ValueError(f"cosine_schedule: min_lr={min_lr!r} is above max_lr={max_lr!r}; expected "
                         "0 <= min_lr <= max_lr")
    if total_steps < 1 or total_steps < warmup_steps:
        raise ValueError(f"cosine_schedule: total_steps={total_steps!r} is invalid; expected "
                         f"total_steps >= 1 and >= warmup_steps={warmup_steps!r}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class CosineSchedule:
    """The learning rate of every step: linear warmup to ``lr``, cosine decay to ``min_lr`` at
    ``total_steps`` (see :func:`cosine_schedule`). A warmup longer than the run is clamped to the
    run (``warmup_clamped`` says so): a short trial run should just work.

    Attributes: lr, min_lr, warmup_steps (after clamping), total_steps, warmup_clamped.
    """

    def __init__(self, lr: float, min_lr: float, warmup_steps: int, total_steps: int):
        self.lr = check_number("CosineSchedule", "lr", lr)
        self.min_lr = check_number("CosineSchedule", "min_lr", min_lr)
        self.total_steps = _check_count("total_steps", total_steps)
        requested = _check_count("warmup_steps", warmup_steps)
        self.warmup_steps = min(requested, self.total_steps)
        self.warmup_clamped = requested > self.total_steps
        cosine_schedule(0, self.lr, self.warmup_steps, self.total_steps, self.min_lr)   # checks the rest

    def __call__(self, step: int) -> float:
        return cosine_schedule(step, self.lr, self.warmup_steps, self.total_steps, self.min_lr)

    def __repr__(self) -> str:
        return (f"CosineSchedule(lr={self.lr:g}, min_lr={self.min_lr:g}, warmup_steps={self.warmup_steps}, "
                f"total_steps={self.total_steps})")


def set_lr(optimizer: Optimizer, lr: float) -> None:
    """Set the learning rate of every param group of ``optimizer`` to ``lr`` (>= 0)."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"set_lr: optimizer is a {type(optimizer).__name__}, expected a "
                        "minillm.optim.Optimizer")
    lr = check_number("set_lr", "lr", lr)
    for group in optimizer.param_groups:
        group["lr"] = lr


def _check_count(name: str, value) -> int:
    """A non-negative integer (Python or NumPy int; bools and floats are refused)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"cosine_schedule: {name}={value!r} is not an integer")
    value = int(value.__index__())
    if value < 0:
        raise ValueError(f"cosine_schedule: {name}={value!r} is invalid; expected an integer >= 0")
    return value
