"""Engine overhead per op on tiny tensors, and a large matmul forward+backward, beside PyTorch.

    python benchmarks/bench_ops.py [--chain 200] [--repeats 15]

Tiny tensors (4x4 float32) make the arithmetic free, so the time per op is the Python cost of
the engine: building the Function, the output Tensor, the graph links, and the backward
bookkeeping. Each row chains the op ``--chain`` times, then runs backward; the figure is
(forward + backward time) / chain. Targets (issue 2): at most 3x PyTorch eager per op; the
1024x1024 matmul forward+backward within 1.1x of PyTorch (both are BLAS-bound).
Contenders alternate (A B A B ...); medians; PyTorch uses NumPy's BLAS thread count.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import common  # noqa: E402

import minillm as mm  # noqa: E402
from minillm import functional as F  # noqa: E402

try:
    import torch
except ImportError:  # the table then has minillm's column only
    torch = None

TINY_OPS = {
    "add": (lambda y, w: y + w, lambda y, w: y + w),
    "mul": (lambda y, w: y * w, lambda y, w: y * w),
    "tanh": (lambda y, w: F.tanh(y), lambda y, w: torch.tanh(y)),
    "matmul": (lambda y, w: F.matmul(y, w), lambda y, w: y @ w),
    "softmax": (lambda y, w: F.softmax(y), lambda y, w: torch.softmax(y, -1)),
    "sum(keepdims)": (lambda y, w: F.sum(y, axis=-1, keepdims=True), lambda y, w: y.sum(-1, keepdim=True)),
    "reshape": (lambda y, w: F.reshape(y, (16,)) if y.ndim == 2 else F.reshape(y, (4, 4)),
                lambda y, w: y.reshape(16) if y.ndim == 2 else y.reshape(4, 4)),
    "getitem": (lambda y, w: y[1:, :], lambda y, w: y[1:, :]),
}


def chain_runner(op, x, w, length, backward_kwargs):
    def run():
        y = x
        for _ in range(length):
            y = op(y, w)
            if y.shape[0] < 2:       # getitem/sum shrink: restart from x
                y = y + x[: y.shape[0], : y.shape[-1]] if y.ndim == 2 else y
        y.sum().backward(**backward_kwargs)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chain", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--matmul-size", type=int, default=1024)
    args = parser.parse_args()
    threads = common.blas_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((4, 4)).astype(np.float32) * 0.1
    w_np = rng.standard_normal((4, 4)).astype(np.float32) * 0.1
    rows, payload = [], {"threads": threads, "chain": args.chain, "ops": {}}
    with common.OtherCpu() as cpu:
        for name, (ours, theirs) in TINY_OPS.items():
            contenders = {"minillm": chain_runner(ours, mm.tensor(x_np, requires_grad=True),
                                                  mm.tensor(w_np, requires_grad=True), args.chain, {})}
            if torch is not None:
                contenders["torch"] = chain_runner(theirs, torch.tensor(x_np, requires_grad=True),
                                                   torch.tensor(w_np, requires_grad=True), args.chain, {})
            times = common.alternate(contenders, args.repeats)
            ours_us = common.median(times["minillm"]) / args.chain * 1e6
            theirs_us = common.median(times["torch"]) / args.chain * 1e6 if torch is not None else float("nan")
            rows.append([name, ours_us, theirs_us, ours_us / theirs_us])
            payload["ops"][name] = {"minillm_us": ours_us, "torch_us": theirs_us}

        n = args.matmul_size
        a_np = rng.standard_normal((n, n)).astype(np.float32)
        b_np = rng.standard_normal((n, n)).astype(np.float32)
        gy_np = rng.standard_normal((n, n)).astype(np.float32)

        def ours_matmul():
            a, b = mm.tensor(a_np, requires_grad=True), mm.tensor(b_np, requires_grad=True)
            F.matmul(a, b).backward(gy_np)

        contenders = {"minillm": ours_matmul}
        if torch is not None:
            ta, tb, tgy = torch.tensor(a_np), torch.tensor(b_np), torch.tensor(gy_np)

            def torch_matmul():
                a, b = ta.clone().requires_grad_(), tb.clone().requires_grad_()
                (a @ b).backward(tgy)

            contenders["torch"] = torch_matmul
        times = common.alternate(contenders, max(5, args.repeats // 2))
        ours_ms = common.median(times["minillm"]) * 1e3
        theirs_ms = common.median(times["torch"]) * 1e3 if torch is not None else float("nan")
        payload["matmul"] = {"size": n, "minillm_ms": ours_ms, "torch_ms": theirs_ms}

    table = common.format_table(["op (4x4, fwd+bwd)", "minillm us/op", "torch us/op", "ratio"], rows)
    table += "\n\n" + common.format_table(
        [f"{n}x{n} matmul fwd+bwd", "minillm ms", "torch ms", "ratio"],
        [["float32", ours_ms, theirs_ms, ours_ms / theirs_ms]])
    table += f"\n\nBLAS/torch threads: {threads}; {cpu.describe()}"
    payload["other_cpu"] = cpu.describe()
    print(table)
    print("saved", common.save_results("bench_ops", payload, table))


if __name__ == "__main__":
    main()
