"""Where the memory of a training step goes, and what per-block recomputation saves and costs: the
memory ledger (``minillm.profiler.memory_ledger``) and the step time of a config of
bench_train_step.py, with and without ``--recompute``, on the CPU.

    python benchmarks/memory_ledger.py                        # config C, 2 rounds x 5 timed steps
    python benchmarks/memory_ledger.py --config B --rounds 3 --steps 10 --threads 2

The step is bench_train_step.py's (``MinillmStep``: the same GPT-2-preset model with seed 0, AdamW,
batch and float32); "recompute" sets ``model.recompute`` on it. Each contender runs in a fresh
process of its own, the order alternating over the rounds (benchmarks/common.py): ``--warmup``
untimed steps, ``--steps`` timed ones (medians over every timed step of every round, the spread of
the per-round medians, the CPU cores other processes used meanwhile), the resident high-water mark
over the timed steps above the process's size once minillm was imported ("step peak RSS", as in
bench_train_step.py), then one more step under the ledger (tracemalloc on, so that step is slower
and is not timed). The ledgers of the first round are printed in full.

Results: benchmarks/results/memory_ledger_<config>_<time>.json and .md (git-ignored), or ``--out DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import common  # noqa: E402  (imports no NumPy: the children set their threads first)
from bench_train_step import CONFIGS, _status_kib  # noqa: E402

CONTENDERS = ("plain", "recompute")
MIB = 2 ** 20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="C", choices=sorted(c for c in CONFIGS if c != "G"),
                        help="a config of bench_train_step.py (CPU sizes)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per contender and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (one process each)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads")
    parser.add_argument("--out", default=None, help="write the JSON and Markdown results here")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per contender process")
    parser.add_argument("--child", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1 or args.rounds < 1 or args.warmup < 1:
        parser.error("--steps, --threads, --rounds and --warmup must be positive (the warm-up creates AdamW's state)")
    return args


def child(args) -> None:
    """One contender in this process: warm-up, timed steps, the RSS peak, the ledger; one RESULT line."""
    import minillm  # noqa: F401  (before the baseline: the library's own memory is not the step's)

    baseline_kib = _status_kib("VmRSS")
    from bench_train_step import MinillmStep

    from minillm import profiler

    step = MinillmStep(args.config, "cpu")
    step.model.recompute = args.child == "recompute"
    for _ in range(args.warmup):
        step()
    timed = common.time_calls(step, args.steps, warmup=0)
    hwm_kib = _status_kib("VmHWM")

    def forward():
        return step.model(step.idx, step.targets)[1]

    ledger = profiler.memory_ledger(step.model, forward, step.opt, labels={"config": args.config})
    result = {**timed, "step_peak_rss": (hwm_kib - baseline_kib) * 1024, "process_peak_rss": hwm_kib * 1024,
              "ledger": ledger.to_dict(), "table": ledger.table(), "host": common.minillm_host()}
    print("RESULT " + json.dumps(result), flush=True)


def run_child(contender: str, args) -> dict:
    argv = ["--config", args.config, "--steps", str(args.steps), "--warmup", str(args.warmup), "--child", contender]
    return common.run_script_child(__file__, argv, args.threads, args.timeout)


def main(argv=None) -> int:
    args = parse_args(argv)
    common.set_threads(args.threads)
    if args.child:
        child(args)
        return 0
    runs = common.alternate_rounds(list(CONTENDERS), args.rounds, lambda c: run_child(c, args),
                                   label=f"config {args.config} ",
                                   describe=lambda r: f"median {1e3 * statistics.median(r['times']):.1f} ms")
    failed = {c: [r["error"] for r in results if "error" in r] for c, results in runs.items()}
    if any(failed.values()):
        print(f"errors: {failed}")
        return 1
    summary = {c: common.summarise(results, scale=1e3) for c, results in runs.items()}
    first = {c: results[0] for c, results in runs.items()}
    categories = list(first["plain"]["ledger"]["categories"])
    rows = []
    for name in categories + ["accounted total", "measured peak", "unexplained remainder", "step peak RSS"]:
        values = {}
        for c in CONTENDERS:
            ledger = first[c]["ledger"]
            values[c] = {"accounted total": ledger["accounted_total"], "measured peak": ledger["measured"]["peak"],
                         "unexplained remainder": ledger["measured"]["unexplained"],
                         "step peak RSS": statistics.median(r["step_peak_rss"] for r in runs[c])}.get(
                name, ledger["categories"].get(name))
        change = values["recompute"] - values["plain"]
        relative = values["plain"] > 0 and name != "unexplained remainder"
        rows.append([name.replace("_", " "), f"{values['plain'] / MIB:.1f}", f"{values['recompute'] / MIB:.1f}",
                     f"{change / MIB:+.1f}" + (f" ({100 * change / values['plain']:+.0f}%)" if relative else "")])
    plain_ms, recompute_ms = summary["plain"]["median"], summary["recompute"]["median"]
    def spread(c):
        medians = summary[c]["round_medians"]
        return f"{min(medians):.0f}-{max(medians):.0f}"

    rows.append(["step time, ms (median)", f"{plain_ms:.0f} ({spread('plain')})", f"{recompute_ms:.0f} ({spread('recompute')})",
                 f"{recompute_ms - plain_ms:+.0f} ({100 * (recompute_ms / plain_ms - 1):+.0f}%)"])
    table = common.format_table(["MiB", "plain", "--recompute", "change"], rows)
    busy = max(summary[c]["other_cores"] for c in CONTENDERS)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    shape = CONFIGS[args.config]
    note = (f"\nconfig {args.config} ({shape}), float32, {args.threads} BLAS threads; {args.rounds} alternating rounds x "
            f"{args.steps} timed steps per contender (each its own process) after {args.warmup} warm-up; ledger rows "
            f"from round 1; other processes used up to {busy:.2f} cores during the timed steps (load average "
            f"{load:.2f} at the end)" + ("\nWARNING: the machine was busy: re-run" if busy > common.BUSY_CORES else ""))
    text = "\n\n".join([table + note] + [f"### {c}\n\n{first[c]['table']}" for c in CONTENDERS])
    print(text)
    payload = {"args": {k: v for k, v in vars(args).items() if k != "child"}, "config": shape, "summary": summary,
               "runs": {c: [{k: v for k, v in r.items() if k != "table"} for r in results] for c, results in runs.items()}}
    label = f"memory_ledger_{args.config}_{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"results: {common.save_results(label, payload, text, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
