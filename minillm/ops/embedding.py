"""Embedding lookup: rows of a weight table picked by integer ids.

The gradient of a lookup is a scatter-add: every occurrence of id v adds its upstream row to
row v of the table gradient. Repeated ids must accumulate, which NumPy's fancy ``+=`` would not
do, so the scatter goes through :func:`minillm.backend.scatter_add`. ``embedding_composed`` is
the reference twin (``getitem`` with an integer array, whose backward scatter-adds too).

On a GPU a scatter-add with atomics would add a row's contributions in whatever order the threads
arrive, so the same step could give different last bits from run to run. The CUDA path sorts the
ids instead (a stable sort) and one kernel sums each run of equal ids in that fixed order:
deterministic, and every table row is written once.
"""
from __future__ import annotations

from minillm.autograd import Function
from minillm.backend import cupy_module, device_of, fusable, get_array_module, scatter_add, to_device
from minillm.ops import _cuda
from minillm.ops import shape as sh
from minillm.tensor import Tensor


class Embedding(Function):
    """y[..., :] = W[ids[...], :].

    Shapes: ids (...) integers in [0, V), W (V, C) -> y (..., C).
    Saves: the ids (integers, not differentiated).
    """

    def __init__(self, ids):
        self.ids = ids

    def forward(self, weight):
        self.num_embeddings = weight.shape[0]
        return weight[self.ids]                                  # (..., C)

    def backward(self, gy):
        # dL/dW[v] = sum of gy[p] over every position p with ids[p] == v
        if fusable(gy):
            return _embedding_backward_cuda(self.ids, gy, self.num_embeddings)
        xp = get_array_module(gy)
        c = gy.shape[-1]
        gw = xp.zeros((self.num_embeddings, c), dtype=gy.dtype)  # (V, C)
        scatter_add(gw, self.ids.reshape(-1), gy.reshape(-1, c))  # rows (N,), values (N, C)
        return gw


_EMBEDDING_KERNELS = _cuda.RowKernels(r"""
// One block per position i of the sorted ids; the block that starts a run of equal ids sums the
// run's rows of dL/dy (in sorted order: deterministic) into its table row; the others return.
extern "C" __global__ void embedding_backward_sorted(
        const long long* sorted_ids, const long long* order, const G_T* gy, G_T* table_grad,
        long long rows, long long width) {
    long long i = blockIdx.x;
    long long id = sorted_ids[i];
    if (i > 0 && sorted_ids[i - 1] == id) return;
    long long end = i + 1;
    while (end < rows && sorted_ids[end] == id) ++end;
    for (long long c = threadIdx.x; c < width; c += blockDim.x) {
        float total = 0.0f;
        for (long long r = i; r < end; ++r) total += LOAD_G(gy, order[r] * width + c);
        STORE_G(table_grad, id * width + c, total);
    }
}
""", ("G",))


def _embedding_backward_cuda(ids, gy, num_embeddings: int):
    """dL/dW (V, C) from the (..., C) upstream gradient: sort, then sum each run of equal ids."""
    cp = cupy_module()
    c = gy.shape[-1]
    flat = ids.reshape(-1).astype(cp.int64, copy=False)          # (N,)
    rows = _cuda.contiguous(gy).reshape(-1, c)                   # (N, C)
    gw = cp.zeros((num_embeddings, c), dtype=gy.dtype)           # (V, C)
    if flat.size and c:
        order = cp.argsort(flat).astype(cp.int64, copy=False)    # (N,) positions sorted by id
        sorted_ids = flat[order]
        kernel = _EMBEDDING_KERNELS.get("embedding_backward_sorted", G=gy.dtype)
        kernel((flat.size,), (_cuda.row_threads(c),), (sorted_ids, order, rows, gw, _cuda.i64(flat.size), _cuda.i64(c)))
    return gw


def _ids_array(ids, weight: Tensor, op: str, check_range: bool = True):
    """``ids`` as an integer array on the weight's device (moved there), range-checked where they
    came from (host ids on the host: nothing is read back from a GPU)."""
    array = ids.data if isinstance(ids, Tensor) else ids
    if not hasattr(array, "dtype") or array.dtype.kind not in "iu":
        kind = getattr(array, "dtype", type(array).__name__)
        raise TypeError(f"{op}: ids must be an integer array or Tensor, got {kind}")
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        raise ValueError(f"{op}: weight must be a 2-D Tensor (num_embeddings, embedding_dim), got "
                         f"{getattr(weight, 'shape', type(weight).__name__)}")
    if check_range and array.size:
        xp = get_array_module(array)
        low, high = int(xp.min(array)), int(xp.max(array))
        if low < 0 or high >= weight.shape[0]:
            bad = low if low < 0 else high
            raise ValueError(f"{op}: token id {bad} is out of range; expected ids in "
                             f"[0, {weight.shape[0]}) for a table of {weight.shape[0]} rows")
    return to_device(array, device_of(weight.data))              # explicit transfer if needed


def embedding(ids, weight: Tensor, check_range: bool = True) -> Tensor:
    """Look up rows of ``weight`` (V, C) at integer ``ids`` (...) -> (..., C).

    ``check_range=False`` skips the check that every id is in [0, V) (for callers that checked
    already; on a GPU the check reads two numbers back, a synchronisation).
    """
    return Embedding(_ids_array(ids, weight, "embedding", check_range)).apply(weight)


def embedding_composed(ids, weight: Tensor) -> Tensor:
    """embedding from primitives: ``weight[ids]`` (getitem scatter-adds in backward)."""
    return sh.getitem(weight, _ids_array(ids, weight, "embedding_composed"))
