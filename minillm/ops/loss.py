"""Cross-entropy from logits, fused: log-softmax, target pick, smoothing and reduction in one op.

For a row of logits z (V values) and its target t, with label smoothing ε,

    loss = lse(z) - (1 - ε) z_t - ε · mean_j z_j,     lse(z) = m + ln Σ_j e^{z_j - m},  m = max z

(the cross-entropy against the smoothed distribution (1 - ε)·onehot(t) + ε/V). Rows whose
target equals ``ignore_index`` contribute nothing and are not counted by the mean.

Memory: the logits are the biggest array of a language model (N × V), so the op never holds
more than one other (N, V) float array. In float32 (no autocast) forward writes the
exponentials E = e^{z - m} (m = the row max) into one (N, V) array and keeps it with the row sums
s = Σ_j E_j, instead of the logits; backward turns E into the gradient in place,
softmax = E / s, so the softmax's exponentials are computed once, not again in backward (half of
the op's time on a 4,096-word vocabulary), and backward allocates nothing of size (N, V) when the
graph is freed after it (``Function.may_overwrite_saved``; a retained graph gets a new array).
Under ``amp.autocast`` (the op wrapped by ``InFloat32``), where the graph keeps the float16
logits and a float32 E would double that, forward computes lse block by block of rows in a
small reused scratch buffer (no (N, V) array) and saves only lse (N, 1); backward recomputes
softmax = e^{z - lse} straight into the (N, V) gradient it returns.
Both then subtract the smoothed one-hot in place.
``cross_entropy_composed`` is the reference twin built from primitive ops.
Under ``amp.autocast`` float16 logits run inside ``InFloat32`` (:mod:`minillm.ops.lowp.adapter`):
float32 inside, a float32 loss, a float16 gradient.

On a GPU (CuPy arrays, float32 or float16 logits) two fused kernels replace the blocked array
code: forward is one pass per row (max, then Σ e^{z - m} and Σ z, one thread block per row),
writing lse and the row's loss; backward writes (softmax - smoothed one-hot) · weight straight
into the gradient. Same memory rule: no (N, V) array but the gradient.
"""
from __future__ import annotations

from minillm import amp
from minillm.autograd import Function
from minillm.backend import cupy_module, device_of, fusable, get_array_module, to_device
from minillm.ops import _cuda
from minillm.ops import activation as act
from minillm.ops import elementwise as ew
from minillm.ops import reduce as rd
from minillm.ops import shape as sh
from minillm.ops._util import for_rows
from minillm.ops.lowp.adapter import adapt
from minillm.tensor import Tensor

_REDUCTIONS = ("mean", "sum", "none")
_BLOCK_ELEMENTS = 1 << 18    # forward scratch: blocks of rows of about 256K values (1 MiB in float32)


class CrossEntropy(Function):
    """Cross-entropy of ``logits`` against integer ``targets`` (see the module docstring).

    Shapes: logits (..., V), targets (...) -> a scalar () for "mean"/"sum", (...) for "none"
    (0 at ignored positions).
    Saves: with ``keep_exponentials`` E = e^{z - m} (N, V) and the row sums s (N, 1), else the
    logits (an input) and lse (N, 1); the targets, the valid-row mask and the row count.
    ``keep_exponentials``: forward allocates E, backward writes the gradient into it (or into one
    new array when the graph is retained). Without: forward allocates no (N, V) array (lse is
    computed in blocks of rows); backward allocates exactly one, the gradient.
    """

    def __init__(self, targets, ignore_index: int, label_smoothing: float, reduction: str,
                 valid, count: int, keep_exponentials: bool = False):
        self.targets, self.ignore_index = targets, ignore_index
        self.label_smoothing, self.reduction = label_smoothing, reduction
        self.valid, self.count = valid, count          # valid (N,) bool; count = number of valid rows
        self.keep_exponentials = keep_exponentials

    def forward(self, logits):
        loss = self.kernel_forward(logits)
        if loss is not None:                                     # CuPy logits: the fused kernels ran
            return loss
        xp = get_array_module(logits)
        v = logits.shape[-1]
        z = logits.reshape(-1, v)                                # (N, V)
        n = z.shape[0]
        lse = xp.empty((n, 1), dtype=logits.dtype)               # (N, 1)
        keep = self.keep_exponentials
        if keep:
            self.exponentials = xp.empty((n, v), dtype=logits.dtype)   # (N, V) E = e^{z - m}
            self.row_sums = xp.empty((n, 1), dtype=logits.dtype)       # (N, 1) s = Σ_j E_j
        else:
            self.lse, self.logits = lse, logits

        def log_sum_exp(first, last):                            # rows first..last-1, block by block
            rows = max(1, min(last - first, _BLOCK_ELEMENTS // v))
            # without kept exponentials, a (rows, V) scratch reused per block (it stays in cache)
            scratch = None if keep else xp.empty((rows, v), dtype=logits.dtype)
            for start in range(first, last, rows):
                stop = min(start + rows, last)
                zb = z[start:stop]                               # (r, V)
                eb = self.exponentials[start:stop] if keep else scratch[:stop - start]   # (r, V)
                m = zb.max(axis=1, keepdims=True)                # (r, 1)
                xp.subtract(zb, m, out=eb)
                xp.exp(eb, out=eb)                               # e^{z - m}
                out = lse[start:stop]
                sums = eb.sum(axis=1, keepdims=True, out=self.row_sums[start:stop] if keep else out)
                xp.log(sums, out=out)
                out += m                                         # lse = m + ln Σ e^{z - m}

        for_rows(log_sum_exp, n, v, z)
        eps = self.label_smoothing
        self.rows = xp.arange(n)
        self.safe_targets = xp.where(self.valid, self.targets.reshape(-1), 0)   # (N,)
        loss = lse[:, 0] - z[self.rows, self.safe_targets] * (1.0 - eps)        # (N,)
        if eps:
            loss -= z.mean(axis=1) * eps
        loss *= self.valid                                       # ignored rows -> 0
        self.logits_shape = logits.shape
        if self.reduction == "none":
            return loss.reshape(logits.shape[:-1])               # (...)
        total = loss.sum(keepdims=True)                          # (1,): an array, never a scalar
        if self.reduction == "mean":
            total /= self.count
        return total.reshape(())

    def backward(self, gy):
        # dloss_i/dz_ij = softmax_ij - (1 - ε)[j = t_i] - ε/V   (times the row's weight:
        # 1/count for "mean", 1 for "sum", gy_i for "none"; 0 for ignored rows)
        if getattr(self, "fused", False):
            return self._backward_cuda(gy, self.logits.dtype)
        xp = get_array_module(gy)
        v = self.logits_shape[-1]
        eps = self.label_smoothing
        if self.reduction == "none":
            scale = gy.reshape(-1) * self.valid                  # (N,)
        else:
            scale = self.valid * (gy / self.count if self.reduction == "mean" else gy)
            scale = scale.astype(gy.dtype, copy=False)           # (N,)
        if self.keep_exponentials:
            g = self._gradient_from_exponentials(xp, scale)
            g[self.rows, self.safe_targets] -= scale * (1.0 - eps)
            return g.reshape(self.logits_shape)
        z = self.logits.reshape(-1, v)                           # (N, V)
        n = z.shape[0]
        g = xp.empty((n, v), dtype=gy.dtype)                     # (N, V): the gradient buffer

        def softmax_rows(first, last):                           # block by block: stays in cache
            rows = max(1, min(last - first, _BLOCK_ELEMENTS // v))
            for start in range(first, last, rows):
                stop = min(start + rows, last)
                gb = g[start:stop]                               # (r, V)
                xp.subtract(z[start:stop], self.lse[start:stop], out=gb)
                xp.exp(gb, out=gb)                               # softmax
                if eps:
                    gb -= eps / v
                gb *= scale[start:stop, None]

        for_rows(softmax_rows, n, v, g)
        g[self.rows, self.safe_targets] -= scale * (1.0 - eps)
        return g.reshape(self.logits_shape)

    def _gradient_from_exponentials(self, xp, scale):
        """(softmax - ε/V) · scale per row, softmax = E / s: written into E itself when the graph
        is freed after this backward, else into a new array. scale (N,) -> (N, V)."""
        e = self.exponentials
        n, v = e.shape
        g = e if self.may_overwrite_saved else xp.empty_like(e)
        factor = (scale[:, None] / self.row_sums).astype(e.dtype, copy=False)     # (N, 1) scale / s
        uniform = (scale[:, None] * (self.label_smoothing / v)).astype(e.dtype, copy=False) if self.label_smoothing else None

        def rows(first, last):
            gb = g[first:last]
            xp.multiply(e[first:last], factor[first:last], out=gb)
            if uniform is not None:
                gb -= uniform[first:last]

        for_rows(rows, n, v, g)
        return g

    # -- the CUDA kernels (CuPy arrays) -------------------------------------------------------
    def kernel_forward(self, logits, out_dtype=None, round_bf16=False):
        """The fused forward, or None where it does not run (not CuPy float32/float16 logits): the
        loss in ``out_dtype`` (the logits' by default; float32 under autocast, via ``InFloat32``)."""
        if not fusable(logits) or round_bf16:
            return None
        return self._forward_cuda(logits, logits.dtype if out_dtype is None else out_dtype)

    def _forward_cuda(self, logits, loss_dtype):
        """The fused forward: float32 arithmetic inside, the loss returned in ``loss_dtype``."""
        cp = cupy_module()
        v = logits.shape[-1]
        z = _cuda.contiguous(logits).reshape(-1, v)              # (N, V)
        n = z.shape[0]
        targets = self.targets.reshape(-1).astype(cp.int64, copy=False)   # (N,)
        lse = cp.empty(n, dtype=cp.float32)                      # (N,)
        loss = cp.empty(n, dtype=cp.float32)                     # (N,) 0 at ignored rows
        if n:
            kernel = _CE_KERNELS.get("cross_entropy_forward", X=z.dtype, G=cp.float32)
            kernel((n,), (_cuda.row_threads(v),), (z, targets, lse, loss, _cuda.i64(v),
                                                   _cuda.i64(self.ignore_index),
                                                   _cuda.f32(self.label_smoothing)))
        self.fused, self.logits, self.logits_shape, self.lse, self.flat_targets = True, logits, logits.shape, lse, targets
        if self.reduction == "none":
            return loss.reshape(logits.shape[:-1]).astype(loss_dtype, copy=False)   # (...)
        total = loss.sum(keepdims=True)                          # (1,)
        if self.reduction == "mean":
            total /= self.count
        return total.reshape(()).astype(loss_dtype, copy=False)

    def _backward_cuda(self, gy, grad_dtype):
        """The fused backward: the (N, V) gradient in ``grad_dtype``, written in one pass."""
        cp = cupy_module()
        v = self.logits_shape[-1]
        z = _cuda.contiguous(self.logits).reshape(-1, v)         # (N, V)
        n = z.shape[0]
        weights = _cuda.contiguous(gy.astype(cp.float32, copy=False)).reshape(-1)   # (N,) or (1,)
        row_scale = 1.0 / self.count if self.reduction == "mean" else 1.0
        g = cp.empty((n, v), dtype=grad_dtype)                   # (N, V): the gradient
        if n:
            kernel = _CE_KERNELS.get("cross_entropy_backward", X=z.dtype, G=grad_dtype)
            kernel((n,), (_cuda.row_threads(v),), (z, self.flat_targets, self.lse, weights, g, _cuda.i64(v),
                                                   _cuda.i64(1 if self.reduction == "none" else 0),
                                                   _cuda.f32(row_scale), _cuda.i64(self.ignore_index),
                                                   _cuda.f32(self.label_smoothing)))
        return g.reshape(self.logits_shape)


_CE_KERNELS = _cuda.RowKernels(r"""
// One block per row of V logits z: lse = m + ln sum_j exp(z_j - m) (m = max z) and the row's
// loss lse - (1 - eps) z_t - eps mean(z), 0 where the target is ignore_index.
extern "C" __global__ void cross_entropy_forward(
        const X_T* logits, const long long* targets, float* lse_out, float* loss_out,
        long long width, long long ignore_index, float smoothing) {
    __shared__ float scratch[32];
    long long row = blockIdx.x, base = row * width;
    float m = MINILLM_NEG_INF;
    for (long long j = threadIdx.x; j < width; j += blockDim.x) m = fmaxf(m, LOAD_X(logits, base + j));
    m = minillm_block_max(m, scratch);
    float s = 0.0f, total = 0.0f;
    for (long long j = threadIdx.x; j < width; j += blockDim.x) {
        float z = LOAD_X(logits, base + j);
        s += expf(z - m);
        total += z;
    }
    s = minillm_block_sum(s, scratch);
    total = minillm_block_sum(total, scratch);
    if (threadIdx.x == 0) {
        float lse = m + logf(s);
        long long t = targets[row];
        float loss = 0.0f;
        if (t != ignore_index) {
            loss = lse - (1.0f - smoothing) * LOAD_X(logits, base + t);
            if (smoothing != 0.0f) loss -= smoothing * (total / (float)width);
        }
        lse_out[row] = lse;
        loss_out[row] = loss;
    }
}

// dL/dz_j = (exp(z_j - lse) - eps/V - (1 - eps)[j == t]) * w,  w = upstream * row_scale (0 if
// ignored); the upstream gradient is one number (weights_stride 0) or one per row ("none").
extern "C" __global__ void cross_entropy_backward(
        const X_T* logits, const long long* targets, const float* lse, const float* weights, G_T* grad,
        long long width, long long weights_stride, float row_scale, long long ignore_index, float smoothing) {
    long long row = blockIdx.x, base = row * width;
    long long t = targets[row];
    float w = (t == ignore_index) ? 0.0f : weights[row * weights_stride] * row_scale;
    float l = lse[row], uniform = smoothing / (float)width, hit = (1.0f - smoothing) * w;
    for (long long j = threadIdx.x; j < width; j += blockDim.x) {
        float g = (expf(LOAD_X(logits, base + j) - l) - uniform) * w;
        if (j == t) g -= hit;
        STORE_G(grad, base + j, g);
    }
}
""", ("X", "G"))


def _check_cross_entropy(logits, targets, ignore_index, label_smoothing, reduction):
    if not isinstance(logits, Tensor):
        raise TypeError(f"cross_entropy: logits must be a Tensor, got {type(logits).__name__}")
    if logits.dtype.kind != "f" or logits.ndim < 1:
        raise TypeError(f"cross_entropy: logits must be a floating tensor of shape (..., V), got "
                        f"dtype {logits.dtype} and shape {logits.shape}")
    array = targets.data if isinstance(targets, Tensor) else targets
    if not hasattr(array, "dtype") or array.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: targets must be an integer array or Tensor, got "
                        f"{getattr(array, 'dtype', type(targets).__name__)}")
    if tuple(array.shape) != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets have shape {tuple(array.shape)} but logits have "
                         f"shape {logits.shape}; expected targets of shape {logits.shape[:-1]}")
    if not isinstance(ignore_index, int):
        raise TypeError(f"cross_entropy: ignore_index={ignore_index!r}; expected an int")
    if not isinstance(label_smoothing, (int, float)) or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing={label_smoothing!r}; expected a number "
                         "in [0, 1]")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cross_entropy: reduction={reduction!r}; expected one of {_REDUCTIONS}")
    return array


def _valid_rows(logits: Tensor, array, ignore_index: int, reduction: str):
    """The (N,) mask of rows whose target is not ignored, and their count; checks the range."""
    flat = array.reshape(-1)
    valid = flat != ignore_index
    count = int(valid.sum())
    v = logits.shape[-1]
    if count:
        used = flat[valid]
        low, high = int(used.min()), int(used.max())
        if low < 0 or high >= v:
            bad = low if low < 0 else high
            raise ValueError(f"cross_entropy: target {bad} is out of range; expected class ids in "
                             f"[0, {v}) or ignore_index={ignore_index}")
    elif reduction == "mean" and flat.size:
        raise ValueError(f"cross_entropy: every target equals ignore_index={ignore_index}, so the "
                         "mean over non-ignored targets is undefined (0/0); give at least one real "
                         "target or use reduction='sum'")
    if reduction == "mean" and not flat.size:
        raise ValueError("cross_entropy: no targets (empty batch); the mean is undefined")
    return valid, count


def cross_entropy(logits: Tensor, targets, ignore_index: int = -100, label_smoothing: float = 0.0,
                  reduction: str = "mean", num_valid: int | None = None) -> Tensor:
    """Cross-entropy loss from unnormalised logits (PyTorch's ``F.cross_entropy`` with class ids
    on the last axis); see :class:`CrossEntropy`.

    Args:
        logits: (..., V) floating tensor.
        targets: (...) integer class ids in [0, V), or ``ignore_index`` to skip a position. Host
            targets are checked on the host and then moved to the logits' device; device targets
            are checked on the device (that reads numbers back: a device synchronisation).
        ignore_index: target value that contributes no loss and is not counted by the mean.
        label_smoothing: ε in [0, 1]; the target distribution becomes (1-ε)·onehot + ε/V.
        reduction: "mean" over non-ignored targets (an error when there are none), "sum", or
            "none" (per-position losses, 0 where ignored).
        num_valid: the number of non-ignored targets, when the caller has already checked the
            targets' range and counted them (``GPT.forward`` does, once per forward): no check and
            no count here, so nothing is read back from the device.
    """
    array = _check_cross_entropy(logits, targets, ignore_index, label_smoothing, reduction)
    if num_valid is None:
        valid, count = _valid_rows(logits, array, ignore_index, reduction)   # on the targets' device
    else:
        valid, count = None, int(num_valid)
        if reduction == "mean" and count == 0:
            raise ValueError(f"cross_entropy: every target equals ignore_index={ignore_index}, so the "
                             "mean over non-ignored targets is undefined (0/0); give at least one real "
                             "target or use reduction='sum'")
    device = device_of(logits.data)
    array = to_device(array, device)                             # explicit transfer if needed
    valid = array.reshape(-1) != ignore_index if valid is None else to_device(valid, device)
    route = amp.dispatch("cross_entropy", logits)
    # Keep E = e^{z - m} for backward only without autocast's float32 copy (see the module docstring).
    op = CrossEntropy(array, ignore_index, float(label_smoothing), reduction, valid, count,
                      keep_exponentials=route.kind != amp.IN_FLOAT32)
    return adapt(op, route).apply(logits)


def cross_entropy_composed(logits: Tensor, targets, ignore_index: int = -100,
                           label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """cross_entropy from primitives: log_softmax_composed, an integer-array pick, masks."""
    array = _check_cross_entropy(logits, targets, ignore_index, label_smoothing, reduction)
    array = to_device(array, device_of(logits.data))
    valid, count = _valid_rows(logits, array, ignore_index, reduction)
    xp = get_array_module(array)
    v = logits.shape[-1]
    logp = act.log_softmax_composed(sh.reshape(logits, (-1, v)), axis=-1)   # (N, V)
    rows = xp.arange(logp.shape[0])
    safe = xp.where(valid, array.reshape(-1), 0)
    nll = ew.neg(sh.getitem(logp, (rows, safe)))                            # (N,)
    if label_smoothing:
        smooth = ew.neg(rd.mean(logp, axis=-1))                             # (N,)
        nll = ew.add(ew.mul(nll, 1.0 - label_smoothing), ew.mul(smooth, float(label_smoothing)))
    weights = Tensor._from_op(valid.astype(logits.dtype), None)
    per_row = ew.mul(nll, weights)
    if reduction == "none":
        return sh.reshape(per_row, logits.shape[:-1])
    total = rd.sum(per_row)
    return ew.div(total, float(count)) if reduction == "mean" else total
