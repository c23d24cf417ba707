"""Data-parallel training on one machine: ``mpiexec -n 2`` (one thread each) against one process
with two threads, the same global batch; loopback all-reduce bandwidth; a scaling projection.

    python benchmarks/bench_dataparallel.py                        # configs B,C, 3 rounds, + all-reduce
    python benchmarks/bench_dataparallel.py --configs B --rounds 2 --steps 5
    python benchmarks/bench_dataparallel.py --no-step              # the all-reduce sweep and projection only

Contenders (configs from bench_train_step.py: GPT-2 preset, dropout 0, AdamW, clipping at 1.0):

- ``1 process x 2 threads``: the plain step (forward, backward, clip, AdamW) on the whole batch.
- ``2 ranks x 1 thread``: ``mpiexec -n 2`` (its "other cores" counts the other rank: ~1), each rank the same step on its half of the rows with
  :class:`minillm.distributed.DataParallel` (bucketed non-blocking all-reduce from the
  gradient-ready hooks, waited on before clipping); ``comm wait`` is the share of the step the
  ranks spent blocked in that wait (rank 0's), i.e. communication not hidden behind backward.

Each contender runs in fresh processes, rounds alternating the order (benchmarks/common.py);
the table gives the median step time over all timed steps of all rounds, the spread of the
per-round medians, tokens/s and the ratio (2 ranks over 1 process: goal >= 0.9x).

Memory: ``mpiexec -n 2``, two steps of config ``--memory-config`` (C) with ZeRO 0 and 1: the
optimizer state each rank holds and its resident high-water mark (VmHWM, the whole process).

All-reduce: ``mpiexec -n 2``, ``Allreduce`` (sum, float32, in place) of 1 KB .. 64 MB, median of
repeats; algorithm bandwidth = bytes / time, bus bandwidth = 2(N-1)/N x that (what a ring moves
per rank; Thakur et al.'s cost model).

Projection (on paper): GPT-2 small (config G) with the per-GPU step time measured on one H200
(benchmarks/gpu/MEASURED.md, minillm fp32, 8 x 1024 tokens per rank), fp32 gradients, ring
all-reduce time 2(N-1)/N x bytes / bandwidth + 2(N-1) x latency per bucket, at a stated network
bandwidth; efficiency without overlap = t_step / (t_step + t_comm), with full overlap
= t_step / max(t_step, t_comm).

Results: benchmarks/results/dataparallel_<time>.json and .md (git-ignored), or ``--out DIR``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import common  # noqa: E402

CONTENDERS = ("1 process x 2 threads", "2 ranks x 1 thread")
SIZES = [1 << 10, 1 << 14, 1 << 17, 1 << 20, 1 << 22, 1 << 24, 1 << 26]      # bytes: 1 KB .. 64 MB
GPT2_SMALL_STEP_S = 0.198       # config G, minillm fp32, one H200 (benchmarks/gpu/MEASURED.md)
GPT2_SMALL_TOKENS_PER_RANK = 8 * 1024
NETWORK_GBYTES_PER_S = 25.0     # stated: 200 Gb/s per rank (one InfiniBand HDR port)
LATENCY_S = 5e-6                # stated: per ring hop
BUCKET_BYTES = 4 << 20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="B,C")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-step", action="store_true", help="skip the step comparison")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)      # step | allreduce
    parser.add_argument("--config", default="B", help=argparse.SUPPRESS)
    parser.add_argument("--zero", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--memory-config", default="C", help="config of the ZeRO-1 memory measurement")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------------
def child_step(args) -> None:
    from bench_train_step import ADAMW, host_model, make_batch

    from minillm.distributed import DataParallel, current_world, split_rows
    from minillm.optim import AdamW, clip_grad_norm_

    world = current_world()
    model = host_model(args.config)
    optimizer = AdamW(model.parameters(), **ADAMW)
    inputs, targets = make_batch(args.config)
    parallel = None
    if world.under_mpi:
        parallel = DataParallel(model.parameters(), world.transport("cpu"))
        inputs, targets = split_rows((inputs, targets), world.rank, world.size)
    params = list(model.parameters())

    def step():
        if parallel is not None:
            parallel.begin_step()
            parallel.collect(True)
        _, loss = model(inputs, targets)
        loss.backward()
        if parallel is not None:
            parallel.finish()
        clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(args.warmup):
        step()
    if parallel is not None:
        world.control().barrier()
        parallel.communication_seconds = 0.0
    result = common.time_calls(step, args.steps, warmup=0)
    if parallel is not None:
        result["comm_wait_s"] = parallel.communication_seconds
        result["buckets"] = len(parallel.buckets)
    result["threads"] = common.minillm_host()["threads"]
    if world.is_main:
        print("RESULT " + json.dumps(result), flush=True)


def child_memory(args) -> None:
    """Under mpiexec: two data-parallel steps with or without ZeRO-1 (``--zero``); per rank the
    optimizer state held and the resident high-water mark."""
    from bench_train_step import ADAMW, host_model, make_batch

    from minillm.distributed import DataParallel, ShardedAdamW, current_world, split_rows
    from minillm.optim import AdamW

    world = current_world()
    model = host_model(args.config)
    optimizer = AdamW(model.parameters(), **ADAMW)
    parallel = DataParallel(model.parameters(), world.transport("cpu"), shard=bool(args.zero))
    if args.zero:
        optimizer = ShardedAdamW(optimizer, parallel)
    inputs, targets = split_rows(make_batch(args.config), world.rank, world.size)
    for _ in range(2):
        parallel.begin_step()
        parallel.collect(True)
        _, loss = model(inputs, targets)
        loss.backward()
        parallel.finish()
        optimizer.step()
        optimizer.zero_grad()
    if args.zero:
        state = optimizer.state_bytes()
    else:
        state = sum(a.nbytes for entry in optimizer.state.values() for k, a in entry.items() if k != "step")
    with open("/proc/self/status") as status:
        hwm_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
    rows = world.control().allgather_json({"rank": world.rank, "state_bytes": state, "hwm_kib": hwm_kib})
    if world.is_main:
        print("RESULT " + json.dumps({"ranks": rows, "parameters": model.num_parameters()}), flush=True)


def child_allreduce(args) -> None:
    import numpy as np
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rows = []
    for size in SIZES:
        buffer = np.ones(size // 4, dtype=np.float32)
        repeats = max(5, min(200, (64 << 20) // size // 4))
        for _ in range(2):
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
        times = []
        for _ in range(repeats):
            comm.Barrier()
            started = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            times.append(time.perf_counter() - started)
        rows.append({"bytes": size, "seconds": statistics.median(times), "repeats": repeats})
    if comm.Get_rank() == 0:
        print("RESULT " + json.dumps({"rows": rows, "ranks": comm.Get_size()}), flush=True)


# ---------------------------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------------------------
def mpiexec() -> str:
    found = shutil.which("mpiexec", path=os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))
    if found is None:
        raise SystemExit("bench_dataparallel: no mpiexec (pip install -e '.[mpi]')")
    return found


def run_contender(contender: str, config: str, args) -> dict:
    argv = ["--child", "step", "--config", config, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    script = os.path.abspath(__file__)
    if contender.startswith("1 process"):
        env = common.set_threads(2, os.environ.copy())
        env["MINILLM_NUM_THREADS"] = "2"
        return common.run_json_child([sys.executable, script, *argv], env, timeout=900)
    env = common.set_threads(1, os.environ.copy())
    env["MINILLM_NUM_THREADS"] = "1"
    return common.run_json_child([mpiexec(), "-n", "2", sys.executable, script, *argv], env, timeout=900)


def gpt2_parameters(vocab: int, block: int, layers: int, width: int) -> int:
    """GPT-2 preset parameters (biases, tied head): embeddings + per block (two LayerNorms,
    attention qkv and projection, MLP 4C) + the final LayerNorm."""
    c = width
    block_params = 2 * c + (c * 3 * c + 3 * c) + (c * c + c) + 2 * c + (c * 4 * c + 4 * c) + (4 * c * c + c)
    return vocab * c + block * c + layers * block_params + 2 * c


def projection(param_count: int) -> list[list]:
    grad_bytes = 4 * param_count
    buckets = math.ceil(grad_bytes / BUCKET_BYTES)
    rows = []
    for ranks in (8, 64, 512):
        ring = 2 * (ranks - 1) / ranks * grad_bytes / (NETWORK_GBYTES_PER_S * 1e9)
        latency = 2 * (ranks - 1) * LATENCY_S * buckets
        comm = ring + latency
        serial = GPT2_SMALL_STEP_S / (GPT2_SMALL_STEP_S + comm)
        overlapped = GPT2_SMALL_STEP_S / max(GPT2_SMALL_STEP_S, comm)
        tokens = ranks * GPT2_SMALL_TOKENS_PER_RANK
        rows.append([ranks, f"{grad_bytes / 1e6:.0f}", f"{comm * 1e3:.1f}", f"{tokens / (GPT2_SMALL_STEP_S + comm):.3g}",
                     f"{serial:.2f}", f"{tokens / max(GPT2_SMALL_STEP_S, comm):.3g}", f"{overlapped:.2f}"])
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child == "step":
        child_step(args)
        return 0
    if args.child == "memory":
        child_memory(args)
        return 0
    if args.child == "allreduce":
        child_allreduce(args)
        return 0
    payload, tables = {}, []
    if not args.no_step:
        from bench_train_step import CONFIGS

        rows = []
        for config in args.configs.split(","):
            runs = common.alternate_rounds(list(CONTENDERS), args.rounds, lambda c: run_contender(c, config, args),
                                           label=f"{config} ")
            summaries = {c: common.summarise(runs[c], scale=1e3) for c in CONTENDERS}
            payload[config] = {"runs": runs, "summaries": summaries}
            tokens = CONFIGS[config]["batch"] * CONFIGS[config]["block_size"]
            base = summaries[CONTENDERS[0]].get("median")
            for contender in CONTENDERS:
                s = summaries[contender]
                if "median" not in s:
                    rows.append([config, contender, "error", "", "", "", "", ""])
                    continue
                good = [r for r in runs[contender] if "error" not in r]
                waits = [r["comm_wait_s"] / sum(r["times"]) for r in good if "comm_wait_s" in r]
                rows.append([config, contender, f"{s['median']:.1f}", common.spread(s["round_medians"]),
                             f"{tokens / (s['median'] / 1e3):.0f}",
                             f"{base / s['median']:.2f}x" if base else "",
                             f"{100 * statistics.median(waits):.1f}%" if waits else "",
                             f"{s['other_cores']:.2f}"])
        tables.append(common.format_table(["cfg", "contender", "ms/step (median)", "round medians", "tokens/s",
                                           "tokens/s ratio", "comm wait", "other cores"], rows))
    env = common.set_threads(1, os.environ.copy())
    rows = []
    for zero in (0, 1):
        found = common.run_json_child([mpiexec(), "-n", "2", sys.executable, os.path.abspath(__file__), "--child",
                                       "memory", "--config", args.memory_config, "--zero", str(zero)], env, timeout=900)
        payload[f"memory_zero{zero}"] = found
        for entry in found.get("ranks", []):
            rows.append([args.memory_config, zero, entry["rank"], f"{entry['state_bytes'] / 2**20:.1f}",
                         f"{entry['hwm_kib'] / 1024:.0f}"])
        if "error" in found:
            rows.append([args.memory_config, zero, "error", found["error"][-200:], ""])
    tables.append(common.format_table(["cfg", "zero", "rank", "optimizer state MiB", "peak RSS MiB (VmHWM)"], rows))
    sweep = common.run_json_child([mpiexec(), "-n", "2", sys.executable, os.path.abspath(__file__),
                                   "--child", "allreduce"], env, timeout=900)
    payload["allreduce"] = sweep
    if "rows" in sweep:
        ranks = sweep["ranks"]
        rows = [[f"{r['bytes'] / 1024:.0f} KB" if r["bytes"] < 1 << 20 else f"{r['bytes'] >> 20} MB",
                 f"{r['seconds'] * 1e6:.1f}", f"{r['bytes'] / r['seconds'] / 1e9:.2f}",
                 f"{2 * (ranks - 1) / ranks * r['bytes'] / r['seconds'] / 1e9:.2f}"] for r in sweep["rows"]]
        tables.append(common.format_table(["message", "time µs (median)", "algbw GB/s", "busbw GB/s"], rows))
    else:
        tables.append(f"all-reduce sweep failed: {sweep.get('error')}")
    params = gpt2_parameters(vocab=50304, block=1024, layers=12, width=768)
    payload["projection"] = {"parameters": params, "step_s": GPT2_SMALL_STEP_S, "network_GBps": NETWORK_GBYTES_PER_S,
                             "latency_s": LATENCY_S}
    tables.append(f"PROJECTION (on paper, not measured): GPT-2 small, {params:,} parameters, fp32 gradients, "
                  f"{GPT2_SMALL_STEP_S * 1e3:.0f} ms per step of {GPT2_SMALL_TOKENS_PER_RANK} tokens per rank "
                  f"(one H200, measured), ring all-reduce at {NETWORK_GBYTES_PER_S:g} GB/s per rank and "
                  f"{LATENCY_S * 1e6:g} µs per hop, {BUCKET_BYTES >> 20} MB buckets\n" + common.format_table(
                      ["ranks", "MB per all-reduce", "all-reduce ms", "tokens/s (no overlap)", "efficiency",
                       "tokens/s (full overlap)", "efficiency"], projection(params)))
    table = "\n\n".join(tables)
    print(table)
    path = common.save_results("dataparallel", payload, table, args.out)
    print(f"\nsaved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
