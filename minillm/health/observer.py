"""What ``--health_interval N`` measures on a sampled training step: :class:`HealthObserver`.

On a health step (step 1 and every N-th step) the trainer asks the observer to watch the first
micro-batch's forward pass, to read the gradients once they are complete (after the fp16 loss
scale is divided out, before clipping), and to compare the weights before and after the
optimizer step. Everything it computes is a reduction of arrays the step produces anyway: it
reads, never writes, draws no random numbers and changes no module, so a run with health on
follows exactly the same trajectory as one without (same seed, same losses, bit for bit).

Per parameter tensor (every trainable one, by its dotted name):

    grad_norm     ‖g‖₂ of the gradient of the step's mean loss (before clipping)
    param_norm    ‖θ‖₂ before the step
    update_ratio  ‖θ_after − θ_before‖₂ / ‖θ_before‖₂: the size of the step the optimizer took,
                  relative to the weights (Karpathy's rule of thumb: about 1e-3 for a healthy
                  learning rate; 1e-1 rewrites a tenth of the weights per step); null for a
                  tensor that is all zeros (a bias at initialisation)
    shape         the tensor's shape (the report compares matrices with matrices)

A value that is NaN/Inf is written as null.

Per activation (the first micro-batch of the step, B·T positions, H units each):

    blocks.i            the block's output (the residual stream after the block), H = C
    blocks.i.mlp        the feed-forward's hidden layer, the input of down_proj: gelu(W_up x) for
                        the GELU MLP, silu(W_gate x) ⊙ (W_up x) for SwiGLU
    with  mean, std     over all B·T·H values
          max_abs       max |h|
          dead          the fraction of units (columns) whose |h| stays below DEAD_THRESHOLD (1%)
                        of the layer's RMS at every position of the batch. ReLU's dead units are
                        exactly 0; GELU and SiLU are never exactly 0, but a unit that small
                        everywhere passes no signal (deep in GELU's negative tail, or a SwiGLU
                        unit whose gate or up projection stays ~0, no gradient either). Relative
                        to the RMS, so the test does not depend on the layer's overall scale (a
                        narrow model at initialisation has small activations everywhere)
          outliers      the fraction of values with |h| > OUTLIER_FACTOR (10) x the RMS of the
                        layer. GELU and SwiGLU have no upper saturation, so this is what the
                        "saturated" end of an unbounded activation looks like: a few huge values
                        that dominate the norms and overflow float16 first

Per attention layer (blocks.i.attn) and query head h:

    entropy       mean over the batch and the query positions i of −Σ_j p_ij ln p_ij, the
                  entropy of the causal attention distribution p_i = softmax(q_i·k_j/√D, j ≤ i)
                  (before attention dropout). Query i can spread over i + 1 keys, so the uniform
                  distribution gives ln(i + 1); ``max_entropy`` in the record is the mean of that
                  over the positions, the ceiling of every head. 0 means every query looks at one key.
                  The fused attention ops do not keep the weights (the GPU's never builds them),
                  so they are recomputed on the side from q and k, for the sampled step only
    output_rms    the RMS of the head's output (its D columns of the input to o_proj): ~0 is a
                  head that contributes nothing

At the head: ``logits`` std (over all B·T·V values) and max |logit|.

The record the trainer writes to metrics.jsonl (one JSON line, ``"kind": "health"``)::

    {"kind": "health", "step": 50, "seconds": 0.41, "max_entropy": 3.86,
     "params": {"blocks.0.attn.q_proj.weight": {"grad_norm": ..., "param_norm": ..., "update_ratio": ...}, ...},
     "activations": {"blocks.0": {"mean": ..., "std": ..., "max_abs": ..., "dead": ..., "outliers": ...},
                     "blocks.0.mlp": {...}, ...},
     "attention": {"blocks.0.attn": {"entropy": [per head], "output_rms": [per head]}, ...},
     "logits": {"std": ..., "max_abs": ...}}

``seconds`` is the observer's own time on that step (the watching, the side attention, the norms
and the weight snapshot). All sums run on the parameters' device; the numbers are read back once
per step.
"""
from __future__ import annotations

import contextlib
import math
import time

from minillm.backend import get_array_module, to_numpy
from minillm.nn.attention import CausalSelfAttention
from minillm.nn.block import Block
from minillm.nn.mlp import MLP, SwiGLUMLP
from minillm.tensor import Tensor

DEAD_THRESHOLD = 1e-2        # a unit is dead when |h| < this x the layer's RMS at every position of the batch
OUTLIER_FACTOR = 10.0        # a value is an outlier when |h| > this x the RMS of its layer
_ATTENTION_BLOCK = 1 << 22   # side attention: scores per batch block (16 MiB in float32)


def is_health_step(step: int, interval: int) -> bool:
    """Whether optimizer step ``step`` (1-based, the number the metrics log gives it) is observed:
    the first step (the state at initialisation) and every ``interval``-th; never when interval is 0."""
    return interval > 0 and (step == 1 or step % interval == 0)


def attention_entropy(q, k):
    """Per-head entropy of causal attention, and its uniform ceiling.

    q (B, H, T, D) and k (B, H_kv, T, D) arrays (H a multiple of H_kv, query head h reads key head
    h // (H / H_kv)). Returns (entropy (H,) = mean over b, i of −Σ_{j≤i} p_bhij ln p_bhij with
    p = softmax_j(q·k/√D), and the mean over i of ln(i + 1)). Computed in float32 at least, over
    blocks of the batch: ln p = s − m − ln Z, so −Σ p ln p = m + ln Z − Σ_j p_j s_j.
    """
    xp = get_array_module(q)
    dtype = xp.result_type(q.dtype, xp.float32)
    b, h, t, d = q.shape
    h_kv = k.shape[1]
    g = h // h_kv
    visible = xp.arange(t).reshape(t, 1) >= xp.arange(t).reshape(1, t)          # (T, T) j <= i
    total = xp.zeros(h, dtype=xp.float64)
    step = max(1, _ATTENTION_BLOCK // max(h * t * t, 1))
    for start in range(0, b, step):
        qs = q[start:start + step].astype(dtype).reshape(-1, h_kv, g, t, d) / math.sqrt(d)
        ks = k[start:start + step].astype(dtype).reshape(-1, h_kv, 1, t, d)
        scores = xp.matmul(qs, ks.swapaxes(-1, -2))                              # (b', Hkv, g, T, T)
        scores = xp.where(visible, scores, -xp.inf)
        peak = scores.max(axis=-1, keepdims=True)
        weights = xp.exp(scores - peak)
        norm = weights.sum(axis=-1, keepdims=True)
        weights /= norm
        expected = (weights * xp.where(visible, scores, 0.0)).sum(axis=-1, keepdims=True)
        entropy = (peak + xp.log(norm) - expected)[..., 0]                       # (b', Hkv, g, T)
        total += entropy.astype(xp.float64).sum(axis=(0, 3)).reshape(h)
    ceiling = sum(math.log(i + 1) for i in range(t)) / t
    return total / (b * t), ceiling


def activation_stats(h):
    """(mean, std, max |h|, dead fraction, outlier fraction) of an activation (..., H) as one
    float64 array of 5 (see the module docstring for dead and outliers)."""
    xp = get_array_module(h)
    x = h.reshape(-1, h.shape[-1]).astype(xp.float64)                            # (N, H)
    size = x.size
    mean = x.sum() / size
    var = xp.square(x - mean).sum() / size
    rms = xp.sqrt(xp.square(x).sum() / size)
    magnitude = xp.abs(x)
    dead = (magnitude.max(axis=0) < DEAD_THRESHOLD * rms).sum() / x.shape[1]
    outliers = (magnitude > OUTLIER_FACTOR * rms).sum() / size
    return xp.stack([mean, xp.sqrt(var), magnitude.max(), dead.astype(xp.float64), outliers.astype(xp.float64)])


def _finite(value: float) -> float | None:
    """``value``, or None (JSON null) for NaN/Inf."""
    return value if math.isfinite(value) else None


def _sum_squares(array):
    xp = get_array_module(array)
    return xp.square(array.astype(xp.float64)).sum()


class HealthObserver:
    """Collects one health record per observed step of ``model`` (see the module docstring).

    The trainer calls, on an observed step: :meth:`watch` around the first micro-batch's forward,
    :meth:`read_gradients` once the gradients are final (before clipping), :meth:`before_update`
    just before ``optimizer.step()`` and :meth:`record` after it; :meth:`discard` on a step that
    is not applied (a skipped step).
    """

    def __init__(self, model):
        self.model = model
        self.params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, Block)]
        self.mlps = [(name, m) for name, m in model.named_modules() if isinstance(m, (MLP, SwiGLUMLP))]
        self.attentions = [(name, m) for name, m in model.named_modules() if isinstance(m, CausalSelfAttention)]
        self.discard()

    def discard(self) -> None:
        """Forget what was collected for the current step."""
        self._device_values: list[tuple[tuple, object]] = []     # (where in the record, xp array)
        self._host_values: dict = {}
        self._captured: set[tuple] = set()
        self._grad_squares = None
        self._before = None
        self._seconds = 0.0

    def _capture(self, where: tuple, compute) -> None:
        """Keep ``compute()`` (an xp array) at ``where`` in the record, unless something was kept
        there already (the first call of a module counts: DPO calls the model twice)."""
        if where in self._captured:
            return
        self._captured.add(where)
        start = time.perf_counter()
        self._device_values.append((where, compute()))
        self._seconds += time.perf_counter() - start

    # -- the forward pass -------------------------------------------------------------------------
    @contextlib.contextmanager
    def watch(self):
        """While entered, the blocks' outputs, the MLP hidden layers, the attention weights (from
        q, k) and the heads' outputs are reduced to statistics as the forward pass computes them
        (the first call of each module counts). The modules' ``forward`` (and ``attend``) are
        shadowed by instance attributes that call the original, and restored on exit: nothing is
        installed outside a health step."""
        patched = []

        def shadow(module, attribute, make):
            patched.append((module, attribute, module.__dict__.get(attribute)))
            object.__setattr__(module, attribute, make(getattr(module, attribute)))

        def after_call(where, original, pick):
            def wrapper(*args, **kwargs):
                out = original(*args, **kwargs)
                self._capture(where, lambda: activation_stats(pick(args, out).data))
                return out
            return wrapper

        for name, block in self.blocks:
            shadow(block, "forward", lambda f, n=name: after_call(("activations", n), f, lambda a, out: out))
        for name, mlp in self.mlps:
            shadow(mlp.down_proj, "forward", lambda f, n=name: after_call(("activations", n), f, lambda a, out: a[0]))
        for name, attn in self.attentions:
            shadow(attn, "attend", lambda f, n=name: self._watch_attend(n, f))
            shadow(attn.o_proj, "forward", lambda f, n=name, m=attn: self._watch_heads(n, m, f))
        shadow(self.model, "forward", self._watch_logits)
        try:
            yield self
        finally:
            for module, attribute, own in reversed(patched):
                if own is None:
                    object.__delattr__(module, attribute)              # the class's method again
                else:
                    object.__setattr__(module, attribute, own)

    def _timed(self, work):
        start = time.perf_counter()
        result = work()
        self._seconds += time.perf_counter() - start
        return result

    def _watch_attend(self, name, original):
        def attend(q, k, v, is_causal=True):
            if is_causal and q.shape[2] == k.shape[2]:
                def entropy():
                    values, ceiling = attention_entropy(q.data, k.data)
                    self._host_values.setdefault("max_entropy", ceiling)
                    return values
                self._capture(("attention", name, "entropy"), entropy)
            return original(q, k, v, is_causal)
        return attend

    def _watch_heads(self, name, attn, original):
        def forward(y):
            def head_rms():
                data = y.data                                          # (B, T, C): the heads side by side
                xp = get_array_module(data)
                heads = data.reshape(-1, attn.n_head, attn.head_dim).astype(xp.float64)
                return xp.sqrt(xp.square(heads).mean(axis=(0, 2)))
            self._capture(("attention", name, "output_rms"), head_rms)
            return original(y)
        return forward

    def _watch_logits(self, original):
        def forward(*args, **kwargs):
            out = original(*args, **kwargs)
            logits = out[0] if isinstance(out, tuple) and out else out
            if isinstance(logits, Tensor):
                def scale():
                    xp = get_array_module(logits.data)
                    x = logits.data                                    # (B, T, V): no float64 copy
                    return xp.stack([x.std(dtype=xp.float64), xp.abs(x).max().astype(xp.float64)])
                self._capture(("logits",), scale)
            return out
        return forward

    # -- gradients and the update -----------------------------------------------------------------
    def read_gradients(self) -> None:
        """Note every parameter's squared gradient norm (call before clipping)."""
        def squares():
            xp = get_array_module(self.params[0][1].data)
            self._grad_squares = xp.stack([_sum_squares(p.grad) if p.grad is not None else xp.zeros((), xp.float64)
                                           for _, p in self.params])
        if self.params:
            self._timed(squares)

    def before_update(self) -> None:
        """Copy the weights (to measure the step the optimizer is about to take)."""
        self._before = self._timed(lambda: [p.data.copy() for _, p in self.params])

    def record(self, step: int) -> dict:
        """The health record of ``step`` (call after ``optimizer.step()``); clears the collection."""
        def build():
            params = {}
            if self.params and self._before is not None:
                xp = get_array_module(self.params[0][1].data)
                weights = xp.stack([_sum_squares(before) for before in self._before])
                moved = xp.stack([_sum_squares(p.data - before) for (_, p), before in zip(self.params, self._before)])
                grads = self._grad_squares if self._grad_squares is not None else xp.full(len(self.params), xp.nan)
                table = to_numpy(xp.stack([grads, weights, moved])).tolist()   # the one read-back of the norms
                for (name, p), g2, w2, d2 in zip(self.params, *table):
                    norm = math.sqrt(w2)
                    params[name] = {"shape": list(p.shape), "grad_norm": _finite(math.sqrt(g2)), "param_norm": _finite(norm),
                                    "update_ratio": _finite(math.sqrt(d2) / norm) if norm > 0 else None}
            record = {"kind": "health", "step": int(step), "params": params, "activations": {}, "attention": {}}
            if self._device_values:
                xp = get_array_module(self._device_values[0][1])
                flat = to_numpy(xp.concatenate([a.reshape(-1).astype(xp.float64) for _, a in self._device_values]))
                offset = 0
                for where, array in self._device_values:
                    values = [_finite(v) for v in flat[offset:offset + array.size].tolist()]
                    offset += array.size
                    self._place(record, where, values)
            if "max_entropy" in self._host_values:
                record["max_entropy"] = self._host_values["max_entropy"]
            return record
        record = self._timed(build)
        record["seconds"] = self._seconds
        self.discard()
        return record

    @staticmethod
    def _place(record: dict, where: tuple, values: list) -> None:
        kind = where[0]
        if kind == "activations":
            record["activations"][where[1]] = dict(zip(("mean", "std", "max_abs", "dead", "outliers"), values))
        elif kind == "attention":
            record["attention"].setdefault(where[1], {})[where[2]] = values
        else:
            record["logits"] = {"std": values[0], "max_abs": values[1]}
