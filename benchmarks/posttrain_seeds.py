"""The SFT -> DPO pipeline of the post-training examples over several seeds: per-seed figures
with 95% intervals, then mean +- sd per figure.

    python benchmarks/posttrain_seeds.py --seeds 3                       # pretrain once, then 3 seeds
    python benchmarks/posttrain_seeds.py --seeds 3 --checkpoint runs/posttrain/pretrain/last.safetensors

Every seed runs, each in a fresh process (as ``benchmarks/common.py`` wants), with ``--seed S``:
``examples/finetune_sft.py`` (SFT from one shared pretrained checkpoint; the seed sets the task
data, the held-out prompts, the initialisation of the chat rows and the batch order), then
``examples/align_dpo.py`` from that SFT model with the NLL term (``--nll-alpha 1``) and as plain
DPO (``--nll-alpha 0``, the documented contrast, whose claims are expected to fail). The figures
come from each run's ``summary.json``; an example's exit status (1 = a claim failed) is recorded
beside them. Results: ``benchmarks/results/posttrain_seeds.{json,md}`` (``--results-dir``), with
the other processes' CPU use during the runs.

The pretraining seed is TrainConfig's default: the seeds vary post-training only.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import OtherCpu, format_table, save_results  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
# (run folder, column label) of the three stages each seed runs
STAGES = (("sft", "SFT"), ("dpo_alpha1", "DPO a=1"), ("dpo_alpha0", "DPO a=0"))
FIGURES = ("exact match", "end marker", "taught mistake", "preference accuracy")


def stage_figures(summary: dict) -> dict:
    """``{figure: (successes, trials)}`` after one stage (see ``cli.headline_rates``)."""
    from minillm.posttrain.cli import headline_rates  # noqa: PLC0415  (the driver process needs no minillm to start)

    return headline_rates(summary["after"], summary.get("heldout_pairs"))


def mean_sd(values: list[float]) -> str:
    """``"0.452 +- 0.013"`` (sample standard deviation; ``+- -`` for a single value)."""
    if len(values) == 1:
        return f"{values[0]:.3f} +- -"
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def tables(per_seed: dict) -> str:
    """The per-seed table (rate [95% interval]) and the mean +- sd table, in Markdown.

    ``per_seed`` maps seed -> stage folder -> ``{figure: [successes, trials]}``."""
    from minillm.posttrain.tasks import format_rate  # noqa: PLC0415

    headers = ["seed", "figure"] + [label for _, label in STAGES]
    rows = []
    for seed, stages in sorted(per_seed.items()):
        for figure in FIGURES:
            cells = [format_rate(*stages[name][figure]) if figure in stages.get(name, {}) else "-"
                     for name, _ in STAGES]
            if any(cell != "-" for cell in cells):
                rows.append([str(seed), figure] + cells)
    summary_rows = []
    for figure in FIGURES:
        cells = []
        for name, _ in STAGES:
            values = [stages[name][figure][0] / stages[name][figure][1] for stages in per_seed.values()
                      if figure in stages.get(name, {})]
            cells.append(mean_sd(values) if values else "-")
        if any(cell != "-" for cell in cells):
            summary_rows.append([figure] + cells)
    return (format_table(headers, rows) + "\n\nmean +- sd over seeds " + ", ".join(map(str, sorted(per_seed)))
            + ":\n\n" + format_table(["figure"] + [label for _, label in STAGES], summary_rows))


def run_example(script: str, args: list[str], log_path: str) -> tuple[int, float]:
    """Run ``examples/script`` in a fresh process, its output into ``log_path``; (exit status, seconds)."""
    started = time.perf_counter()
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log_path, "w", encoding="utf-8") as log:
        done = subprocess.run([sys.executable, os.path.join(EXAMPLES, script), *args], stdout=log,
                              stderr=subprocess.STDOUT, env=env, cwd=ROOT, check=False)
    return done.returncode, time.perf_counter() - started


def run_pretraining(out_dir: str) -> tuple[int, float]:
    """The examples' pretraining (``finetune_sft.pretrain_config``, its default steps) into
    ``out_dir``, in a fresh process; (exit status, seconds)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import finetune_sft; "
            "from minillm.train.pretrain import run_pretraining; "
            "run_pretraining(finetune_sft.pretrain_config(sys.argv[2], finetune_sft.PRETRAIN_STEPS))")
    started = time.perf_counter()
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
    with open(out_dir.rstrip(os.sep) + ".log", "w", encoding="utf-8") as log:
        done = subprocess.run([sys.executable, "-c", code, EXAMPLES, out_dir], stdout=log, stderr=subprocess.STDOUT,
                              env=env, cwd=ROOT, check=False)
    return done.returncode, time.perf_counter() - started


def report(per_seed: dict, runs: list, load: OtherCpu, results_dir: str | None):
    """Save the tables so far (``save_results``); returns the Markdown path. The machine line is the
    other processes' CPU use from the start up to now (``OtherCpu.__exit__`` measures from its start)."""
    load.__exit__(None, None, None)
    text = tables(per_seed)
    text += f"\n\nruns (exit 1 = a claim of align_dpo.py failed): {runs}\nmachine: {load.describe()}"
    return save_results("posttrain_seeds", {"per_seed": per_seed, "runs": runs, "other_cores": load.other_cores},
                        text, results_dir)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="run seeds 0 .. SEEDS-1")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--checkpoint", default="", help="a pretrained checkpoint; default: pretrain one first "
                        "(examples/finetune_sft.py does, into OUT_DIR/pretrain)")
    parser.add_argument("--out-dir", default="runs/posttrain_seeds")
    parser.add_argument("--eval-per-task", type=int, default=None, help="default: the examples' default")
    parser.add_argument("--sft-steps", type=int, default=None, help="default: the example's default")
    parser.add_argument("--dpo-steps", type=int, default=None, help="default: the example's default")
    parser.add_argument("--results-dir", default=None, help="default: benchmarks/results")
    parser.add_argument("--overwrite", action="store_true", help="replace the examples' earlier output")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.first_seed < 0:
        parser.error(f"--seeds={args.seeds} --first-seed={args.first_seed}; expected --seeds >= 1 and "
                     "--first-seed >= 0")
    if args.checkpoint and not os.path.exists(args.checkpoint):
        parser.error(f"--checkpoint {args.checkpoint!r} does not exist")

    common = (["--eval-per-task", str(args.eval_per_task)] if args.eval_per_task is not None else []) + \
        (["--overwrite"] if args.overwrite else [])
    checkpoint = args.checkpoint or os.path.join(args.out_dir, "pretrain", "last.safetensors")
    per_seed, runs = {}, []
    with OtherCpu() as load:
        if not os.path.exists(checkpoint):       # pretrained once, shared by every seed
            status, seconds = run_pretraining(os.path.dirname(checkpoint))
            runs.append({"seed": None, "stage": "pretrain", "exit": status, "seconds": round(seconds, 1)})
            if status != 0:
                print(f"pretraining failed (exit {status}); see {os.path.dirname(checkpoint)}.log", file=sys.stderr)
                return 1
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            out = os.path.join(args.out_dir, f"seed{seed}")
            os.makedirs(out, exist_ok=True)
            seed_args = ["--seed", str(seed), "--out-dir", out, *common]
            sft_args = ["--checkpoint", checkpoint, *seed_args] + (["--steps", str(args.sft_steps)] if args.sft_steps else [])
            steps = [("sft", "finetune_sft.py", sft_args)]
            for alpha in ("1", "0"):
                steps.append((f"dpo_alpha{alpha}", "align_dpo.py",
                              ["--checkpoint", os.path.join(out, "sft", "model.safetensors"), "--nll-alpha", alpha,
                               *seed_args] + (["--steps", str(args.dpo_steps)] if args.dpo_steps else [])))
            per_seed[seed] = {}
            for name, script, script_args in steps:
                status, seconds = run_example(script, script_args, os.path.join(out, f"{name}.log"))
                runs.append({"seed": seed, "stage": name, "exit": status, "seconds": round(seconds, 1)})
                print(f"seed {seed} {name}: exit {status} in {seconds:.0f} s", flush=True)
                summary_path = os.path.join(out, name, "summary.json")
                if status not in (0, 1) or not os.path.exists(summary_path):
                    print(f"  no summary (see {os.path.join(out, name + '.log')})", flush=True)
                    continue
                with open(summary_path, encoding="utf-8") as handle:
                    per_seed[seed][name] = stage_figures(json.load(handle))
            report(per_seed, runs, load, args.results_dir)        # after every seed: a cut-short run keeps its tables
    path = report(per_seed, runs, load, args.results_dir)
    print(path.read_text(encoding="utf-8"))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
