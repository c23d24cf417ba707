"""Dynamic loss scaling for fp16 training: :class:`GradScaler` (see :mod:`minillm.amp`)."""
from __future__ import annotations

import math

from minillm.backend import get_array_module, item


class GradScaler:
    """Dynamic loss scaling for fp16 training (PyTorch's ``torch.amp.GradScaler``, same names).

    Per optimizer step::

        scaler.scale(loss).backward()    # d(loss·S)/dθ: small gradients stay representable in fp16
        scaler.unscale_(optimizer)       # grads ← grads / S; found_inf ← any grad is inf/NaN
        ... clip_grad_norm_ ...          # on the true gradients
        scaler.step(optimizer)           # optimizer.step() unless found_inf (then: skipped)
        scaler.update()                  # found_inf: S ← S · backoff_factor, else count a clean
                                         # step; growth_interval clean steps in a row: S ← S · growth_factor

    Args:
        init_scale: S at the start (2^16).
        growth_factor: > 1, S's factor after ``growth_interval`` clean steps (2).
        backoff_factor: in (0, 1), S's factor on an overflow (0.5).
        growth_interval: clean steps in a row before S grows (2000).
        enabled: False makes every method a pass-through (scale 1, never skips).

    ``state_dict()`` is plain JSON (scale, growth tracker, settings, skipped-step count), stored in
    checkpoints by the Trainer, so a resumed run scales exactly as an uninterrupted one.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        for name, value, ok in (("init_scale", init_scale, init_scale > 0),
                                ("growth_factor", growth_factor, growth_factor > 1),
                                ("backoff_factor", backoff_factor, 0 < backoff_factor < 1)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok:
                raise ValueError(f"GradScaler: {name}={value!r} is out of range (init_scale > 0, "
                                 "growth_factor > 1, 0 < backoff_factor < 1)")
        if isinstance(growth_interval, bool) or not isinstance(growth_interval, int) or growth_interval < 1:
            raise ValueError(f"GradScaler: growth_interval={growth_interval!r}; expected an int >= 1")
        self.enabled = bool(enabled)
        self._scale = float(init_scale)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.growth_interval = growth_interval
        self._growth_tracker = 0        # clean steps in a row since the last change of scale
        self.skipped_steps = 0          # overflow steps skipped so far
        self.found_inf: bool | None = None   # set by unscale_, cleared by update

    def get_scale(self) -> float:
        """The current loss scale S (1.0 when disabled)."""
        return self._scale if self.enabled else 1.0

    def scale(self, loss):
        """``loss · S`` (a new Tensor; call ``.backward()`` on it)."""
        return loss * self._scale if self.enabled else loss

    def unscale_(self, optimizer) -> bool:
        """Divide every gradient of ``optimizer``'s parameters by S (new arrays, as the engine may
        share gradient arrays) and record whether any is inf/NaN; returns that flag. Once per step."""
        if not self.enabled:
            self.found_inf = False
            return False
        if self.found_inf is not None:
            raise RuntimeError("GradScaler.unscale_ was already called since the last update()")
        inverse = 1.0 / self._scale
        checks = []
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.grad = p.grad * inverse                   # float32 grads stay float32
                checks.append(get_array_module(p.grad).isfinite(p.grad).all())
        if checks:
            xp = get_array_module(checks[0])
            self.found_inf = not bool(item(xp.stack(checks).all()))   # one device sync
        else:
            self.found_inf = False
        return self.found_inf

    def step(self, optimizer) -> bool:
        """``optimizer.step()`` unless a gradient overflowed (unscales first if not done yet).
        Returns True when the step was taken."""
        if not self.enabled:
            optimizer.step()
            return True
        if self.found_inf is None:
            self.unscale_(optimizer)
        if self.found_inf:
            return False
        optimizer.step()
        return True

    def update(self) -> None:
        """Adjust S after a step: back off on an overflow, grow after enough clean steps."""
        if not self.enabled:
            return
        if self.found_inf is None:
            raise RuntimeError("GradScaler.update() before unscale_()/step(): nothing to update from")
        if self.found_inf:
            self._scale *= self.backoff_factor
            self._growth_tracker = 0
            self.skipped_steps += 1
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                self._scale *= self.growth_factor
                self._growth_tracker = 0
        self.found_inf = None

    def state_dict(self) -> dict:
        return {"scale": self._scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "growth_tracker": self._growth_tracker,
                "skipped_steps": self.skipped_steps, "enabled": self.enabled}

    def load_state_dict(self, state: dict) -> None:
        missing = {"scale", "growth_tracker"} - set(state or {})
        if missing:
            raise ValueError(f"GradScaler.load_state_dict: missing keys {sorted(missing)} in {state!r:.200}")
        self._scale = float(state["scale"])
        self._growth_tracker = int(state["growth_tracker"])
        self.growth_factor = float(state.get("growth_factor", self.growth_factor))
        self.backoff_factor = float(state.get("backoff_factor", self.backoff_factor))
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        self.enabled = bool(state.get("enabled", self.enabled))
        self.found_inf = None

    def __repr__(self) -> str:
        return (f"GradScaler(scale={self._scale:g}, growth_interval={self.growth_interval}, "
                f"skipped_steps={self.skipped_steps}, enabled={self.enabled})")
