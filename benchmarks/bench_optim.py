"""Optimizer step time: minillm's AdamW vs torch.optim.AdamW (and minillm's Muon) on a ~10M-parameter
set of float32 arrays.

    python benchmarks/bench_optim.py                  # 10.45M params, 3 rounds x 20 timed steps
    python benchmarks/bench_optim.py --rounds 5 --steps 20 --layers 8
    python benchmarks/bench_optim.py --rounds 1 --steps 2 --vocab 64 --n-embd 32 --layers 1   # a smoke test
    python benchmarks/bench_optim.py --contenders minillm,minillm-muon --ns-steps 3    # what Muon costs

The parameter shapes are those of a small GPT (vocab 4096, n_embd 384, 5 layers: embedding,
attention and MLP matrices, their biases, LayerNorm gains and biases), with gradients set once;
each timed call is one ``step()``. Contenders: ``minillm.optim.AdamW``, and
``torch.optim.AdamW`` three ways: ``foreach=False`` (a loop over the parameters),
its default (foreach on the CPU), and ``fused=True``. Same hyperparameters, the same arrays.
``minillm-muon`` is ``minillm.optim.Muon`` on the same arrays (the blocks' matrices
orthogonalised with ``--ns-steps`` Newton-Schulz iterations, AdamW for the embedding and the
vectors): what Muon adds to a step.

Method
- Every contender runs in a fresh process of its own (never two libraries' thread pools in one
  process), with the BLAS / OpenMP thread count (``--threads``, all alike) set in its
  environment before it imports NumPy or torch; minillm is imported before NumPy (its host
  module sets OpenBLAS's thread wait first, and AdamW splits its update across minillm's host
  threads). Rounds alternate the order of the contenders (A B C D, D C B A, ...); each process
  builds the parameters and gradients (NumPy's generator, seed 0), runs ``--warmup`` untimed
  steps (the first allocate the state) and then ``--steps`` timed ones.
- The table gives the median over every timed step of every round, the spread (min-max) of the
  per-round medians, and minillm's median over each torch variant's.
- Other load: the CPU that other processes used during a process's timed steps (from
  /proc/stat minus the process's own: ``common.OtherCpu``), in cores, the median over the
  rounds; a warning above 0.1.

Results: benchmarks/results/bench_optim.json and .md (git-ignored), or ``--out DIR``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import common  # noqa: E402  (imports neither NumPy nor torch: the children set threads first)

HYPER = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}
TORCH_VARIANTS = {"torch-foreach-false": ("torch foreach=False", {"foreach": False}),
                  "torch-default": ("torch default", {}),
                  "torch-fused": ("torch fused=True", {"fused": True})}
CONTENDERS = ("minillm", "minillm-muon", *TORCH_VARIANTS)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (one process per contender)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per contender and round")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first allocate the state)")
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--threads", type=int, default=common.blas_threads(),
                        help="BLAS / intra-op threads for all (default: the environment's, else the cores)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma-separated subset of {','.join(CONTENDERS)}")
    parser.add_argument("--ns-steps", type=int, default=5, help="minillm-muon's Newton-Schulz iterations")
    parser.add_argument("--no-torch", action="store_true", help="time minillm alone")
    parser.add_argument("--out", default=None, help="write the JSON and Markdown results here")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per contender process")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [c for c in args.contenders if c not in CONTENDERS]
    if bad:
        parser.error(f"--contenders: unknown {bad}; expected a subset of {list(CONTENDERS)}")
    if args.no_torch:
        args.contenders = [c for c in args.contenders if c.startswith("minillm")]
    if min(args.rounds, args.steps, args.threads, args.vocab, args.n_embd, args.layers, args.ns_steps) < 1 \
            or args.warmup < 0:
        parser.error("--rounds, --steps, --threads, --vocab, --n-embd, --layers and --ns-steps must be positive, "
                     "--warmup >= 0")
    return args


def gpt_shapes(vocab: int, n_embd: int, layers: int) -> list[tuple[int, ...]]:
    c = n_embd
    block = [(c,), (c,), (c, 3 * c), (3 * c,), (c, c), (c,),          # ln_1, attention
             (c,), (c,), (c, 4 * c), (4 * c,), (4 * c, c), (c,)]      # ln_2, MLP
    return [(vocab, c)] + block * layers + [(c,), (c,)]


# ---------------------------------------------------------------------------------------------
# The contenders (each runs in a child process)
# ---------------------------------------------------------------------------------------------
def make_arrays(shapes):
    """Parameters and gradients, the same for every contender."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) * 0.02 for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) * 1e-3 for s in shapes]
    return arrays, grads


def child(args) -> None:
    """One contender in this process: warm-up and timed steps; prints one JSON line."""
    result = {}
    shapes = gpt_shapes(args.vocab, args.n_embd, args.layers)
    if args.child.startswith("minillm"):
        import minillm as mm  # first: minillm.host sets OpenBLAS's thread wait before NumPy loads it
        from minillm.optim import AdamW, Muon

        arrays, grads = make_arrays(shapes)
        params = [mm.tensor(a.copy(), requires_grad=True) for a in arrays]
        for p, g in zip(params, grads):
            p.grad = g
        if args.child == "minillm":
            step = AdamW(params, **HYPER).step
        else:                       # the blocks' matrices (not the embedding, params[0]) orthogonalised
            hidden = [p for p in params[1:] if p.ndim == 2]
            rest = [params[0]] + [p for p in params[1:] if p.ndim != 2]
            step = Muon([{"params": hidden}, {"params": rest, "orthogonalize": False}], ns_steps=args.ns_steps,
                        **HYPER).step
        result["host"] = common.minillm_host()
    else:
        import torch

        torch.set_num_threads(args.threads)
        arrays, grads = make_arrays(shapes)
        tensors = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        step = torch.optim.AdamW(tensors, **HYPER, **TORCH_VARIANTS[args.child][1]).step
        result["torch_threads"] = torch.get_num_threads()
    del arrays, grads
    result.update(common.time_calls(step, args.steps, warmup=args.warmup))
    print("RESULT " + json.dumps(result), flush=True)


def run_child(contender: str, args) -> dict:
    argv = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--vocab", str(args.vocab),
            "--n-embd", str(args.n_embd), "--layers", str(args.layers), "--threads", str(args.threads),
            "--ns-steps", str(args.ns_steps), "--child", contender]
    return common.run_script_child(__file__, argv, args.threads, args.timeout)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    common.set_threads(args.threads)
    if args.child:
        child(args)
        return 0
    import importlib.util
    import platform

    contenders = list(args.contenders)
    if any(not c.startswith("minillm") for c in contenders) and importlib.util.find_spec("torch") is None:
        print("torch is not installed: timing minillm alone")
        contenders = [c for c in contenders if c.startswith("minillm")]
    shapes = gpt_shapes(args.vocab, args.n_embd, args.layers)
    n_params = sum(math.prod(s) for s in shapes)
    runs = common.alternate_rounds(contenders, args.rounds, lambda c: run_child(c, args),
                                   describe=lambda r: f"median {1e3 * common.median(r['times']):.2f} ms")
    summary = {c: common.summarise(runs[c], 1e3) for c in contenders}            # milliseconds
    ours = summary.get("minillm", {}).get("median")
    rows, warnings = [], []
    for contender, s in summary.items():
        label = {"minillm": "minillm AdamW", "minillm-muon": f"minillm Muon ({args.ns_steps} Newton-Schulz "
                 "iterations)"}.get(contender) or TORCH_VARIANTS[contender][0]
        if "median" not in s:
            rows.append([label, "failed", "", "", ""])
            continue
        ratio = f"{ours / s['median']:.2f}x" if ours is not None and not contender.startswith("minillm") else ""
        rows.append([label, s["median"], common.spread(s["round_medians"]), ratio, f"{s['other_cores']:.2f}"])
        if s["other_cores"] > common.BUSY_CORES:
            warnings.append(f"{label}: other processes kept {s['other_cores']:.2f} cores busy: re-run")
    text = common.format_table(["optimizer step", "ms/step (median)", "round medians", "minillm / this", "other cores"],
                               rows)
    hosts = {json.dumps(r["host"], sort_keys=True) for r in runs.get("minillm", []) if "host" in r}
    text += (f"\n\n{n_params / 1e6:.2f}M float32 parameters in {len(shapes)} arrays; {args.threads} threads; "
             f"{args.rounds} alternating rounds, each contender its own process, {args.steps} timed steps per "
             f"round after {args.warmup} warm-up; medians over every timed step, the round medians' min-max "
             "beside them; 'other cores' = median CPU cores that other processes used during a process's "
             "timed steps." + "".join(f"\nminillm host: {h}." for h in sorted(hosts)))
    for contender, s in summary.items():
        text += "".join(f"\nERROR {contender}: {e[-600:]}" for e in s["errors"])
    text += "".join("\nWARNING: " + w for w in warnings)
    print(text)
    payload = {"args": {k: v for k, v in vars(args).items() if k != "child"},
               "machine": platform.processor() or platform.machine(), "n_params": n_params,
               "n_arrays": len(shapes), "hyper": HYPER, "summary": summary, "runs": runs,
               "median_ms": {c: s.get("median") for c, s in summary.items()}}
    print("saved", common.save_results("bench_optim", payload, text, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
