"""Engine overhead per op on tiny tensors, and a large matmul forward+backward, beside PyTorch.

    python benchmarks/bench_ops.py                       # chain 200, 15 repeats, 1024 matmul, 3 rounds
    python benchmarks/bench_ops.py --rounds 5 --threads 2
    python benchmarks/bench_ops.py --rounds 1 --chain 5 --repeats 2 --matmul-size 64   # a smoke test

Tiny tensors (4x4 float32) make the arithmetic free, so the time per op is the Python cost of
the engine: building the Function, the output Tensor, the graph links, and the backward
bookkeeping. Each row chains the op ``--chain`` times, then runs backward; the figure is
(forward + backward time) / chain. Targets (issue 2): at most 3x PyTorch eager per op; the
1024x1024 matmul forward+backward within 1.1x of PyTorch (both are BLAS-bound).

Method
- Every contender (minillm, PyTorch eager) runs in a fresh process of its own (never two
  libraries' thread pools in one process), with the BLAS / OpenMP thread count (``--threads``,
  both libraries alike) set in its environment before it imports NumPy or torch; minillm is
  imported before NumPy (its host module sets OpenBLAS's thread wait first). Rounds alternate
  the order of the contenders (A B, B A, ...); in each, a process times every row: ``--warmup``
  untimed runs, then ``--repeats`` timed ones (the matmul: ``--matmul-repeats``). Both start
  from the same arrays (NumPy's generator, seed 0).
- The table gives per row the median over every timed repeat of every round and the spread
  (min-max) of the per-round medians, and the ratio minillm / PyTorch of the medians.
- Other load: the CPU that other processes used while a row's repeats were timed (from
  /proc/stat minus the process's own: ``common.OtherCpu``), in cores, the median over the
  rounds; a warning above 0.1. /proc/stat counts in 10 ms clock ticks and a row is timed for
  tens of ms, so the note under the tables also gives the reading over each process's rows
  together (a second or so), with its own warning.

Results: benchmarks/results/bench_ops.json and .md (git-ignored), or ``--out DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import common  # noqa: E402  (imports neither NumPy nor torch: the children set threads first)

OPS = ("add", "mul", "tanh", "matmul", "softmax", "sum(keepdims)", "reshape", "getitem")
CONTENDERS = ("minillm", "torch")
TARGET_OP_RATIO = 3.0
TARGET_MATMUL_RATIO = 1.1


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chain", type=int, default=200, help="ops chained per timed run")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per op, contender and round")
    parser.add_argument("--matmul-size", type=int, default=1024)
    parser.add_argument("--matmul-repeats", type=int, default=None,
                        help="timed matmuls per contender and round (default: max(5, repeats // 2))")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first, per row")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (one process per contender)")
    parser.add_argument("--threads", type=int, default=common.blas_threads(),
                        help="BLAS / intra-op threads for both (default: the environment's, else the cores)")
    parser.add_argument("--no-torch", action="store_true", help="time minillm alone")
    parser.add_argument("--out", default=None, help="write the JSON and Markdown results here")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per contender process")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.matmul_repeats is None:
        args.matmul_repeats = max(5, args.repeats // 2)
    if min(args.chain, args.repeats, args.matmul_size, args.matmul_repeats, args.rounds, args.threads) < 1 \
            or args.warmup < 0:
        parser.error("--chain, --repeats, --matmul-size, --matmul-repeats, --rounds and --threads must be "
                     "positive, --warmup >= 0")
    return args


# ---------------------------------------------------------------------------------------------
# The contenders (each runs in a child process)
# ---------------------------------------------------------------------------------------------
def minillm_ops() -> dict:
    from minillm import functional as F

    return {
        "add": lambda y, w: y + w,
        "mul": lambda y, w: y * w,
        "tanh": lambda y, w: F.tanh(y),
        "matmul": lambda y, w: F.matmul(y, w),
        "softmax": lambda y, w: F.softmax(y),
        "sum(keepdims)": lambda y, w: F.sum(y, axis=-1, keepdims=True),
        "reshape": lambda y, w: F.reshape(y, (16,)) if y.ndim == 2 else F.reshape(y, (4, 4)),
        "getitem": lambda y, w: y[1:, :],
    }


def torch_ops() -> dict:
    import torch

    return {
        "add": lambda y, w: y + w,
        "mul": lambda y, w: y * w,
        "tanh": lambda y, w: torch.tanh(y),
        "matmul": lambda y, w: y @ w,
        "softmax": lambda y, w: torch.softmax(y, -1),
        "sum(keepdims)": lambda y, w: y.sum(-1, keepdim=True),
        "reshape": lambda y, w: y.reshape(16) if y.ndim == 2 else y.reshape(4, 4),
        "getitem": lambda y, w: y[1:, :],
    }


def make_arrays(n: int) -> dict:
    """The inputs, the same for both contenders: 4x4 tensors, and n x n matmul operands."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {"x": rng.standard_normal((4, 4)).astype(np.float32) * 0.1,
              "w": rng.standard_normal((4, 4)).astype(np.float32) * 0.1}
    for name in ("a", "b", "gy"):
        arrays[name] = rng.standard_normal((n, n)).astype(np.float32)
    return arrays


def chain_runner(op, x, w, length):
    def run():
        y = x
        for _ in range(length):
            y = op(y, w)
            if y.shape[0] < 2:       # getitem/sum shrink: restart from x
                y = y + x[: y.shape[0], : y.shape[-1]] if y.ndim == 2 else y
        y.sum().backward()
    return run


def child(args) -> None:
    """One contender in this process: every row's warm-up and timed repeats; prints one JSON line."""
    result = {}
    if args.child == "torch":
        import torch

        torch.set_num_threads(args.threads)
        ops, leaf = torch_ops(), (lambda array: torch.tensor(array, requires_grad=True))
        result["torch_threads"] = torch.get_num_threads()
    else:
        import minillm as mm  # first: minillm.host sets OpenBLAS's thread wait before NumPy loads it
        from minillm import functional as F

        ops, leaf = minillm_ops(), (lambda array: mm.tensor(array, requires_grad=True))
        result["host"] = common.minillm_host()
    assert tuple(ops) == OPS
    arrays = make_arrays(args.matmul_size)
    if args.child == "torch":
        ta, tb, tgy = (torch.tensor(arrays[k]) for k in ("a", "b", "gy"))

        def matmul():
            a, b = ta.clone().requires_grad_(), tb.clone().requires_grad_()
            (a @ b).backward(tgy)
    else:
        def matmul():
            a, b = mm.tensor(arrays["a"], requires_grad=True), mm.tensor(arrays["b"], requires_grad=True)
            F.matmul(a, b).backward(arrays["gy"])
    rows = {}
    with common.OtherCpu() as whole:       # all rows: a steadier reading than one row's tens of ms
        for name, op in ops.items():
            timed = common.time_calls(chain_runner(op, leaf(arrays["x"]), leaf(arrays["w"]), args.chain),
                                      args.repeats, warmup=args.warmup)
            timed["times"] = [t / args.chain for t in timed["times"]]          # seconds per op
            rows[name] = timed
        rows["matmul fwd+bwd"] = common.time_calls(matmul, args.matmul_repeats, warmup=args.warmup)
    result.update(rows=rows, other_cores_all_rows=whole.other_cores)
    print("RESULT " + json.dumps(result), flush=True)


def run_child(contender: str, args) -> dict:
    argv = ["--chain", str(args.chain), "--repeats", str(args.repeats), "--matmul-size", str(args.matmul_size),
            "--matmul-repeats", str(args.matmul_repeats), "--warmup", str(args.warmup),
            "--threads", str(args.threads), "--child", contender]
    return common.run_script_child(__file__, argv, args.threads, args.timeout)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def row_summary(runs: dict, row: str, scale: float) -> dict:
    """Each contender's summary of one row over its rounds (see common.summarise)."""
    return {c: common.summarise([r["rows"][row] if "error" not in r else r for r in results], scale)
            for c, results in runs.items()}


def table_row(label: str, summary: dict, target: float, warnings: list) -> list:
    cells = [label]
    for contender in CONTENDERS:
        s = summary.get(contender, {})
        cells += [s["median"], common.spread(s["round_medians"])] if "median" in s else \
            ["failed" if contender in summary else "", ""]
    if "median" in summary.get("minillm", {}) and "median" in summary.get("torch", {}):
        cells.append(f"{summary['minillm']['median'] / summary['torch']['median']:.2f}x (target <= {target}x)")
    else:
        cells.append("")
    busy = {c: s["other_cores"] for c, s in summary.items() if "other_cores" in s}
    cells.append(" / ".join(f"{busy[c]:.2f}" for c in CONTENDERS if c in busy))
    warnings += [f"{label} {c}: other processes kept {v:.2f} cores busy: re-run"
                 for c, v in busy.items() if v > common.BUSY_CORES]
    return cells


def main(argv=None) -> int:
    args = parse_args(argv)
    common.set_threads(args.threads)
    if args.child:
        child(args)
        return 0
    import importlib.util
    import platform

    contenders = ["minillm"] if args.no_torch else list(CONTENDERS)
    if "torch" in contenders and importlib.util.find_spec("torch") is None:
        print("torch is not installed: timing minillm alone")
        contenders.remove("torch")
    runs = common.alternate_rounds(contenders, args.rounds, lambda c: run_child(c, args))
    payload = {"args": {k: v for k, v in vars(args).items() if k != "child"},
               "machine": platform.processor() or platform.machine(), "runs": runs, "ops": {}}
    rows, warnings = [], []
    for name in OPS:
        summary = row_summary(runs, name, 1e6)                          # microseconds per op
        payload["ops"][name] = summary
        rows.append(table_row(name, summary, TARGET_OP_RATIO, warnings))
    matmul = row_summary(runs, "matmul fwd+bwd", 1e3)                   # milliseconds
    payload["matmul"] = matmul
    n = args.matmul_size
    matmul_row = table_row("float32", matmul, TARGET_MATMUL_RATIO, warnings)
    headers = ["minillm {}", "minillm round medians", "torch {}", "torch round medians", "minillm / torch",
               "other cores (minillm / torch)"]
    text = common.format_table(["op (4x4, fwd+bwd)", *(h.format("us/op") for h in headers)], rows)
    text += "\n\n" + common.format_table([f"{n}x{n} matmul fwd+bwd", *(h.format("ms") for h in headers)],
                                         [matmul_row])
    hosts = {json.dumps(r["host"], sort_keys=True) for r in runs["minillm"] if "host" in r}
    whole = {c: common.median([r["other_cores_all_rows"] for r in results if "error" not in r])
             for c, results in runs.items() if any("error" not in r for r in results)}
    payload["other_cores_all_rows"] = whole
    warnings += [f"{c}, all rows: other processes kept {v:.2f} cores busy: re-run"
                 for c, v in whole.items() if v > common.BUSY_CORES]
    text += (f"\n\n{args.threads} BLAS / torch threads; {args.rounds} alternating rounds, each contender its own "
             f"process; per round {args.repeats} timed runs of a chain of {args.chain} ops per row "
             f"({args.matmul_repeats} timed matmuls) after {args.warmup} warm-up; medians over every timed run, "
             "the round medians' min-max beside them; 'other cores' = median CPU cores that other processes "
             "used while a row was timed (/proc/stat counts 10 ms ticks: a row's tens of ms read coarsely); over "
             "each process's rows together, median over the rounds: "
             + ", ".join(f"{c} {v:.2f}" for c, v in whole.items()) + " cores."
             + "".join(f"\nminillm host: {h}." for h in sorted(hosts)))
    for contender, results in runs.items():
        text += "".join(f"\nERROR {contender}: {r['error'][-600:]}" for r in results if "error" in r)
    text += "".join("\nWARNING: " + w for w in warnings)
    print(text)
    print("saved", common.save_results("bench_ops", payload, text, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
