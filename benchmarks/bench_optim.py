"""AdamW step time: minillm vs torch.optim.AdamW on a ~10M-parameter set of float32 arrays.

    python benchmarks/bench_optim.py                  # 10.4M params, 15 rounds
    python benchmarks/bench_optim.py --rounds 25 --layers 8

The parameter shapes are those of a small GPT (vocab 4096, n_embd 384, 5 layers: embedding,
attention and MLP matrices, their biases, LayerNorm gains and biases). Each round times one
step of every contender in turn (A B C A B C ...), so a burst of load from another process
hits them all alike; medians and ratios are reported, with the CPU time that *other*
processes used during the timed rounds (from /proc/stat): re-run when it is not near 0.
Results go to benchmarks/results/bench_optim.json (git-ignored).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import common  # noqa: E402

import minillm as mm  # noqa: E402
from minillm.optim import AdamW  # noqa: E402

HYPER = {"lr": 3e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1}


def gpt_shapes(vocab: int, n_embd: int, layers: int) -> list[tuple[int, ...]]:
    c = n_embd
    block = [(c,), (c,), (c, 3 * c), (3 * c,), (c, c), (c,),          # ln_1, attention
             (c,), (c,), (c, 4 * c), (4 * c,), (4 * c, c), (c,)]      # ln_2, MLP
    return [(vocab, c)] + block * layers + [(c,), (c,)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "bench_optim.json"))
    args = parser.parse_args()

    shapes = gpt_shapes(args.vocab, args.n_embd, args.layers)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s).astype(np.float32) * 0.02 for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) * 1e-3 for s in shapes]
    n_params = sum(a.size for a in arrays)

    params = [mm.tensor(a.copy(), requires_grad=True) for a in arrays]
    for p, g in zip(params, grads):
        p.grad = g
    contenders = {"minillm": AdamW(params, **HYPER).step}
    try:
        import torch  # noqa: PLC0415  (optional)
    except ImportError:
        torch = None
        print("torch is not installed: timing minillm alone")
    if torch is not None:
        for label, kwargs in [("torch foreach=False", {"foreach": False}), ("torch default", {}),
                              ("torch fused=True", {"fused": True})]:
            tensors = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
            for t, g in zip(tensors, grads):
                t.grad = torch.tensor(g)
            contenders[label] = torch.optim.AdamW(tensors, **HYPER, **kwargs).step

    for _ in range(args.warmup):          # first steps allocate the state
        for step in contenders.values():
            step()
    times = {label: [] for label in contenders}
    with common.OtherCpu() as cpu:
        for _ in range(args.rounds):
            for label, step in contenders.items():
                start = time.perf_counter()
                step()
                times[label].append(time.perf_counter() - start)
    wall = cpu.wall
    other_cpu = None if cpu.other != cpu.other else cpu.other   # NaN off Linux

    medians = {label: statistics.median(t) * 1e3 for label, t in times.items()}
    print(f"AdamW step, {n_params / 1e6:.2f}M float32 parameters in {len(shapes)} arrays, "
          f"{args.rounds} alternating rounds" + (f", torch threads {torch.get_num_threads()}" if torch else ""))
    for label, ms in medians.items():
        ratio = ms / medians["minillm"]
        print(f"  {label:<22} median {ms:8.2f} ms   min {min(times[label]) * 1e3:8.2f} ms   "
              f"{ratio:5.2f}x minillm's time")
    if other_cpu is not None:
        print(f"  CPU used by other processes during the timed rounds: {other_cpu:.2f} s over "
              f"{wall:.2f} s wall ({'idle enough' if other_cpu < 0.05 * wall else 'NOT idle: re-run'})")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"n_params": int(n_params), "rounds": args.rounds, "median_ms": medians,
                   "other_processes_cpu_s": other_cpu, "wall_s": wall}, handle, indent=2)
    print(f"  written to {args.out}")


if __name__ == "__main__":
    main()
