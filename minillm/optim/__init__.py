"""Optimizers, gradient clipping and learning-rate schedules.

    from minillm.optim import AdamW, clip_grad_norm_, cosine_schedule, decay_groups, set_lr

    opt = AdamW(decay_groups(model.named_parameters(), 0.1), lr=3e-4, betas=(0.9, 0.95))
    for step in range(total_steps):
        set_lr(opt, cosine_schedule(step, 3e-4, warmup_steps=100, total_steps=total_steps))
        logits, loss = model(x, y)
        loss.backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
"""
from minillm.optim.adamw import AdamW
from minillm.optim.clip import clip_grad_norm_
from minillm.optim.groups import decay_groups
from minillm.optim.muon import Muon, muon_groups, orthogonalize
from minillm.optim.optimizer import Optimizer
from minillm.optim.schedule import CosineSchedule, cosine_schedule, set_lr
from minillm.optim.sgd import SGD

__all__ = ["SGD", "AdamW", "CosineSchedule", "Muon", "Optimizer", "clip_grad_norm_", "cosine_schedule", "decay_groups",
           "muon_groups", "orthogonalize", "set_lr"]
