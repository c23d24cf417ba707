"""Mixed precision: the precision policy (``autocast``) and the dynamic loss scaler (``GradScaler``).

    from minillm import amp
    scaler = amp.GradScaler()                       # fp16 only; bf16 needs none
    with amp.autocast("fp16"):                      # or "bf16"
        logits, loss = model(idx, targets)          # matmuls and attention in fp16
    scaler.scale(loss).backward()                   # gradients of loss · scale
    scaler.unscale_(optimizer)                      # gradients / scale, and an inf/NaN check
    clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)                          # skipped when a gradient overflowed
    scaler.update()                                 # halve on overflow, double after N clean steps

``Trainer`` does all of this when ``precision`` is "fp16" or "bf16" (``minillm train --precision fp16``).

The policy (what runs in which precision)
-----------------------------------------
Under ``autocast`` the ops fall into three groups, as in PyTorch's autocast:

- **low-precision ops** -- ``linear``, ``matmul``, ``scaled_dot_product_attention``: their inputs
  enter the matrix products as values of the format (rounded to it), the products are summed in
  float32, and the result is rounded to the format. Backward does the same (dL/dy and the saved
  inputs enter the matmuls in the format). Weight gradients are rounded to the format like any
  matmul result, then widened to float32 for the float32 master weight (the cast's backward), so
  the engine's rule "a gradient has its input's dtype" holds everywhere.
- **float32 ops** -- ``layer_norm``, ``rms_norm``, ``softmax``, ``log_softmax``, ``cross_entropy``:
  means, variances, exponentials, sums and the loss are computed in float32 (the loss is float32).
  One deviation from PyTorch, for memory: a norm *stores* its output in the format, because its
  consumers are matmuls that round it to the format anyway (pre-norm blocks, the final norm).
- **everything else keeps its input dtype**: the residual stream stays float32 (float32 + float16
  promotes to float32; the gradient is cast back to each input's dtype); GELU, SiLU, SwiGLU and
  RoPE of float16 inputs compute in float32 and round once; dropout multiplies in the input dtype.

Parameters ("master weights"), their gradients and the optimizer state stay float32.

fp16 and bf16
-------------
- **fp16** (IEEE half: 5 exponent bits, 10 mantissa bits, largest 65504) is a real dtype in NumPy
  and CuPy. Activations flow between ops as float16 arrays, so every array the graph keeps for
  backward is half the size: that is where the memory goes down. Its small range is why fp16
  needs loss scaling (below).
- **bf16** (bfloat16: float32's 8 exponent bits, 7 mantissa bits) has no dtype in NumPy or CuPy.
  It is *emulated*: values are rounded to bfloat16 (round to nearest even on the float32 bit
  pattern, :func:`minillm.backend.round_to_bf16`, tested bit for bit) at exactly the points where
  a bf16 run rounds, and kept in float32 arrays. The numerics are bf16's; the memory is not,
  except where an op keeps an array of its own for backward (the attention weights), which it
  stores as raw bfloat16 bits (uint16). The graph itself must keep float32 arrays: the autograd
  engine adds gradients with ``+`` and checks gradient dtype = input dtype, which rules out
  uint16 stand-ins for bf16 activations.

Where the cast happens (host vs GPU)
------------------------------------
- **NumPy (host)**: float16 matrix products have no BLAS kernel in NumPy (a generic loop, ~100x
  slower than float32), so the host *emulates* a low-precision matmul: the inputs are rounded to
  the format, widened to float32, multiplied with float32 BLAS (float32 accumulation, which is
  also what tensor cores do) and the result rounded to the format. The values are exactly the
  format's; only the summation order differs from a GPU. NumPy's float16 <-> float32 casts are
  not vectorised (~2-4 ns per element), so fp16 on the host is slower than fp32: it is there to
  study the numerics and the memory, not for speed.
- **CuPy (GPU)**: fp16 matmuls run on float16 arrays (cuBLAS GEMM with CUBLAS_COMPUTE_32F and the
  tensor-op algorithm: tensor cores with float32 accumulation, CuPy's default compute type for
  float16). bf16 2-D matmuls (every ``linear``) run on real bfloat16 operands where CuPy takes
  ``ml_dtypes.bfloat16`` (CuPy 14: tensor cores, float32 accumulation, a bfloat16 result widened
  exactly to float32); batched products (attention) stay float32 products of bf16 values, since
  CuPy 14.2's batched matmul refuses the dtype;
  storage and everything else stay float32 holding bf16 values, so bf16 saves time on a GPU but
  no memory. Without ml_dtypes (or with ``MINILLM_BF16_GEMM=0``) bf16 is emulated in float32 there
  too. The strict test backend follows the GPU path (it stands for CuPy).

Dynamic loss scaling (fp16)
---------------------------
Gradients of activations live in float16 too; values under ~6e-8 flush to zero. Multiplying the
loss by S (2^16 to start) scales every gradient by S into float16's range; the optimizer sees
the gradients divided by S again. When a gradient overflows (inf/NaN), the step is skipped and S
is halved; after ``growth_interval`` clean steps in a row S is doubled. bf16 has float32's range
and needs no scaling.
"""
from __future__ import annotations

import contextlib
import math

import numpy as np

from minillm.backend import (
    bf16_bits_to_float32, cast, float32_to_bf16_bits, get_array_module, gpu_bfloat16, is_cupy_array, item,
    round_to_bf16, to_gpu_bfloat16,
)

PRECISIONS = ("fp32", "fp16", "bf16")


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------
class LowPrecisionFormat:
    """A low-precision compute format: how its values are stored and multiplied.

    Attributes:
        name: "fp16" or "bf16".
        storage_dtype: the dtype of activations flowing between ops (float16; float32 holding
            bfloat16 values for the emulated bf16).
        packed_dtype: the dtype of arrays an op keeps for backward (float16; uint16 bits for bf16).

    Methods (every array argument may be any floating dtype; results are new arrays or the input):
        to_storage(x): x rounded to the format, in ``storage_dtype``.
        to_float32(x): x rounded to the format, as float32 (for float32 arithmetic).
        pack(x) / unpack(p): the compact copy kept for backward, and its float32 values.
        operand(x): x as a matmul operand: the format's values as float32 on the host (NumPy
            multiplies them with float32 BLAS), float16 on the GPU for fp16 (a float16 GEMM).
        unpack_operand(p): a packed array as a matmul operand (no second rounding).
        result(product): a product of operands ready for float arithmetic (a real bfloat16 product
            widened to float32; otherwise as it is).
        batched_operand(x) / batched_unpack_operand(p): the same for batched (3-D and up) products.
        matmul(a, b): operand(a) @ operand(b): the format's values, float32 accumulation; the
            result is float32, or float16 from a GPU GEMM: pass it to ``to_storage``.
    """

    name: str
    storage_dtype: np.dtype
    packed_dtype: np.dtype

    def __repr__(self) -> str:
        return f"LowPrecisionFormat({self.name!r})"


class Float16Format(LowPrecisionFormat):
    """IEEE half precision, a real dtype on both devices."""

    name = "fp16"
    storage_dtype = np.dtype(np.float16)
    packed_dtype = np.dtype(np.float16)

    # backend.cast is astype with fast host conversions (NumPy's float16 casts are slow)
    def to_storage(self, x):
        return cast(x, np.float16)

    def to_float32(self, x):
        return cast(cast(x, np.float16), np.float32)   # rounded first (past 65504: inf)

    def pack(self, x):
        return cast(x, np.float16)

    def unpack(self, packed):
        return cast(packed, np.float32)

    def operand(self, x):
        if get_array_module(x) is np:
            return self.to_float32(x)      # host: NumPy has no float16 BLAS; float32 products of fp16 values
        return self.to_storage(x)          # GPU: float16 GEMM operands (tensor cores, float32 accumulation)

    def unpack_operand(self, packed):
        return cast(packed, np.float32) if get_array_module(packed) is np else packed

    def result(self, product):
        """A product of operands, as it is (float32 on the host, a float16 GEMM's float16 on a GPU)."""
        return product

    def batched_operand(self, x):
        """An operand of a batched (3-D and up) product: as :meth:`operand`."""
        return self.operand(x)

    def batched_unpack_operand(self, packed):
        return self.unpack_operand(packed)

    def matmul(self, a, b):
        return self.operand(a) @ self.operand(b)


class BFloat16Format(LowPrecisionFormat):
    """bfloat16, emulated on float32 (no NumPy dtype): values rounded to bf16, float32 arrays.
    On a GPU whose CuPy takes ``ml_dtypes.bfloat16`` (:func:`minillm.backend.gpu_bfloat16`), matrix
    product operands are real bfloat16 arrays (tensor cores, float32 accumulation, a bfloat16
    result): the same values, rounded by the same rule; storage stays float32."""
    name = "bf16"
    storage_dtype = np.dtype(np.float32)
    packed_dtype = np.dtype(np.uint16)

    def to_storage(self, x):
        if x.dtype.char == "E":                # a real bfloat16 product: widening is exact
            return x.astype(np.float32)
        return round_to_bf16(x)

    def to_float32(self, x):
        return self.to_storage(x)

    def pack(self, x):
        return float32_to_bf16_bits(x)

    def unpack(self, packed):
        return bf16_bits_to_float32(packed)

    def operand(self, x):
        if is_cupy_array(x) and gpu_bfloat16() is not None:
            return x if x.dtype.char == "E" else to_gpu_bfloat16(x)   # bfloat16 GEMM operands
        return round_to_bf16(x)            # float32 products of bf16 values

    def unpack_operand(self, packed):
        if is_cupy_array(packed) and gpu_bfloat16() is not None:
            return packed.view(gpu_bfloat16())             # the bits are bfloat16 already
        return bf16_bits_to_float32(packed)

    def result(self, product):
        """A product of operands as a float32 array for more arithmetic (bias, scale): exact."""
        return product.astype(np.float32) if product.dtype.char == "E" else product

    def batched_operand(self, x):
        """An operand of a batched (3-D and up) product: bf16-rounded float32 everywhere (CuPy 14.2's
        batched matmul refuses the bfloat16 dtype; its 2-D products take it)."""
        return round_to_bf16(x)

    def batched_unpack_operand(self, packed):
        return bf16_bits_to_float32(packed)

    def matmul(self, a, b):
        return round_to_bf16(a) @ round_to_bf16(b)


FP16 = Float16Format()
BF16 = BFloat16Format()
_FORMATS = {"fp16": FP16, "bf16": BF16}


def check_precision(precision: str, where: str = "precision") -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"{where}={precision!r}; expected one of {PRECISIONS}")
    return precision


def format_for(precision: str) -> LowPrecisionFormat | None:
    """The format for "fp16"/"bf16"; None for "fp32"."""
    return _FORMATS.get(check_precision(precision))


# ---------------------------------------------------------------------------------------------
# autocast
# ---------------------------------------------------------------------------------------------
_active: LowPrecisionFormat | None = None


def active_format() -> LowPrecisionFormat | None:
    """The format of the innermost ``autocast`` in force, or None (float32 everywhere)."""
    return _active


def is_autocast_enabled() -> bool:
    return _active is not None


@contextlib.contextmanager
def autocast(precision: str = "fp16", enabled: bool = True):
    """Run the ops inside in ``precision`` ("fp16", "bf16"; "fp32" or enabled=False: off), by the
    policy in the module docstring. Nests; the previous policy comes back on exit. Backward may run
    outside: each op records its format when it runs forward."""
    global _active
    fmt = format_for(precision) if enabled else None
    previous = _active
    _active = fmt
    try:
        yield fmt
    finally:
        _active = previous


# ---------------------------------------------------------------------------------------------
# The dynamic loss scaler
# ---------------------------------------------------------------------------------------------
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
