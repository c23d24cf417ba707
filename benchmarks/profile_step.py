"""Where one training step's time goes: minillm's profiler around whole steps (forward, backward,
AdamW, zero_grad) of a config of bench_train_step.py, on the CPU or a GPU.

    python benchmarks/profile_step.py                                  # config C, CPU, 2 threads
    python benchmarks/profile_step.py --config A --threads 1 --out profile.json
    python benchmarks/profile_step.py --device cuda --config G --precision fp16

After ``--warmup`` unprofiled steps (allocations, caches, compiled kernels), ``--steps`` steps
run inside one ``minillm.profiler.profile(model)``; it prints the table by op (BLAS = the matrix
products: Linear, MatMul, attention) and by module (each block's parts, the layers added up),
and with ``--out`` writes the profile as JSON (``minillm.profiler.load_json`` reads it back).
The optimizer is not an op: its time is in the wall time only (the footer's "outside ops").
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from bench_train_step import CONFIGS  # after the path set-up above; imports no NumPy
from common import set_threads


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="C", choices=sorted(CONFIGS), help="a config of bench_train_step.py")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads (the CPU)")
    parser.add_argument("--warmup", type=int, default=1, help="unprofiled steps first")
    parser.add_argument("--steps", type=int, default=1, help="profiled steps (the tables hold their totals)")
    parser.add_argument("--out", default="", help="write the profile as JSON to this file")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.steps < 1 or args.warmup < 0:
        parser.error(f"--threads {args.threads}, --steps {args.steps}, --warmup {args.warmup}: expected "
                     "--threads and --steps >= 1, --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)                  # before NumPy loads: BLAS reads it once
    from bench_train_step import MinillmStep

    from minillm import profiler

    step = MinillmStep(args.config, args.device, args.precision)
    for _ in range(args.warmup):
        step()
    step.sync()
    prof = profiler.profile(step.model)
    for _ in range(args.steps):
        with prof:
            step()
            step.sync()
    shape = CONFIGS[args.config]
    print(f"config {args.config} ({shape}), {args.device}, {args.precision}, {args.threads} BLAS thread(s); "
          f"{args.steps} step(s) after {args.warmup} warm-up\n")
    print(prof.table())
    print()
    print(prof.table(group_by="module", depth=3, merge_indices=True))
    if args.out:
        prof.save_json(args.out)
        print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
