"""The sweep that chose the main job's recipe: whole ``minillm train`` runs, end to end.

    python benchmarks/sweep_main_job.py                       # every recipe below, once each
    python benchmarks/sweep_main_job.py --only "llama-4x192,llama-4x192 vocab 4096 batch 16" --out /tmp/sweep

Each recipe is one fresh ``python -m minillm train`` process on the embedded Shakespeare corpus
(the tokenizer trained, the data cleaned and tokenized, the model trained and evaluated on the
whole validation split, samples printed), timed from start to exit, with the machine's other
load recorded; the final validation bits per byte and the run's wall time go in the table. The
runs share nothing (each its own out_dir), and run one after another, never two at once.

A recipe is a list of ``minillm train`` options (``recipe(...)``: BASE with some changed); the
chosen one ("llama-4x192 vocab 4096 batch 16 muon wd 1.0 ns 3") became ``minillm train``'s defaults
(minillm/train/config.py) and examples/configs/shakespeare_bpe.toml.
Results: benchmarks/results/sweep_main_job.json and .md (git-ignored), or in ``--out DIR``.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import OtherCpu, format_table, save_results  # noqa: E402

# Every recipe spells out each setting the sweep varies (so a row means the same run whatever
# minillm train's defaults are): BASE, with a recipe's changes on top.
BASE = {"preset": "llama", "n_layer": 4, "n_head": 4, "n_kv_head": 2, "n_embd": 192, "block_size": 128,
        "dropout": 0.0, "vocab_size": 1024, "batch_size": 32, "max_steps": 400, "eval_interval": 100,
        "lr": 2e-3, "min_lr": 2e-4, "optimizer": "adamw", "weight_decay": 0.1}
OPTION_NAMES = {"vocab_size": "data.vocab_size",     # the tokenizer's vocabulary (the model's follows it)
                "optimizer": "optim.optimizer", "weight_decay": "optim.weight_decay", "update_rms": "optim.update_rms",
                "ns_steps": "optim.ns_steps"}


def recipe(**changes) -> list[str]:
    """The ``minillm train`` options of BASE with ``changes``, e.g. recipe(vocab_size=2048)."""
    values = {**BASE, **changes}
    return [arg for key, value in values.items() for arg in (f"--{OPTION_NAMES.get(key, key)}", str(value))]


RECIPES = {
    "gpt2-4x192 (old default)": recipe(preset="gpt2", n_kv_head=4, dropout=0.1),
    "llama-4x192": recipe(),
    "llama-4x192 dropout 0.1": recipe(dropout=0.1),
    "llama-4x192 lr 4e-3": recipe(lr=4e-3, min_lr=4e-4),
    "llama-4x256": recipe(n_embd=256),
    "llama-6x192": recipe(n_layer=6),
    "llama-4x192 600 steps": recipe(dropout=0.1, max_steps=600),
    "llama-4x192 vocab 2048": recipe(vocab_size=2048),
    "llama-4x192 lr 4e-3 vocab 2048": recipe(vocab_size=2048, lr=4e-3, min_lr=4e-4),
    "llama-4x192 vocab 4096": recipe(vocab_size=4096),
    "llama-4x192 vocab 4096 300 steps": recipe(vocab_size=4096, max_steps=300),
    "llama-4x192 vocab 4096 batch 24": recipe(vocab_size=4096, batch_size=24),
    "llama-4x192 vocab 4096 batch 16": recipe(vocab_size=4096, batch_size=16, max_steps=600, eval_interval=150),
    "llama-4x192 vocab 4096 batch 8": recipe(vocab_size=4096, batch_size=8, max_steps=1200, eval_interval=300),
    "llama-4x192 vocab 4096 batch 16 decay to 0": recipe(vocab_size=4096, batch_size=16, max_steps=600,
                                                         eval_interval=150, min_lr=2e-5, warmup_steps=30),
    "llama-4x192 vocab 4096 batch 16 lr 3e-3 decay to 0": recipe(vocab_size=4096, batch_size=16, max_steps=600,
                                                                 eval_interval=150, lr=3e-3, min_lr=3e-5,
                                                                 warmup_steps=30),
    "llama-4x192 vocab 2048 block 256": recipe(vocab_size=2048, block_size=256, batch_size=16),
    # the same tokens per step as the default, arranged differently or spent on another shape
    "llama-4x192 vocab 4096 block 256 batch 8": recipe(vocab_size=4096, block_size=256, batch_size=8, max_steps=600,
                                                       eval_interval=150),
    "llama-4x192 vocab 4096 batch 16 kv 4": recipe(vocab_size=4096, batch_size=16, max_steps=600, eval_interval=150,
                                                   n_kv_head=4),
    "llama-4x192 vocab 4096 batch 16 tied": recipe(vocab_size=4096, batch_size=16, max_steps=600,
                                                   eval_interval=150, tie_weights="true"),
    # Muon for the blocks' matrices (AdamW for the rest): the update's RMS per unit of lr, the
    # cosine's floor, weight decay, dropout, Newton-Schulz iterations; and AdamW with Muon's decay
    **{f"llama-4x192 vocab 4096 batch 16 {name}": recipe(vocab_size=4096, batch_size=16, max_steps=600,
                                                        eval_interval=150, **changes)
       for name, changes in {
           "muon": dict(optimizer="muon"),
           "muon rms 0.4": dict(optimizer="muon", update_rms=0.4),
           "muon rms 0.15": dict(optimizer="muon", update_rms=0.15),
           "muon decay to 2e-5": dict(optimizer="muon", min_lr=2e-5),
           "muon dropout 0.1": dict(optimizer="muon", dropout=0.1),
           "muon wd 0.3": dict(optimizer="muon", weight_decay=0.3),
           "muon wd 0.3 ns 3": dict(optimizer="muon", weight_decay=0.3, ns_steps=3),
           "muon wd 0.6": dict(optimizer="muon", weight_decay=0.6),
           "muon wd 0.6 ns 3": dict(optimizer="muon", weight_decay=0.6, ns_steps=3),
           "muon wd 1.0": dict(optimizer="muon", weight_decay=1.0),
           "muon wd 1.0 ns 3": dict(optimizer="muon", weight_decay=1.0, ns_steps=3),
           "muon wd 2.0": dict(optimizer="muon", weight_decay=2.0),
           "wd 1.0": dict(weight_decay=1.0),
       }.items()},
}
FINAL = re.compile(r"final validation: loss ([0-9.]+) nats/token, perplexity ([0-9.]+), ([0-9.]+) bits/byte "
                   r"after (\d+) steps")
CURVE = re.compile(r"step (\d+): val_loss ([0-9.]+), val_ppl [0-9.]+, val_bpb ([0-9.]+)")


def run_recipe(name: str, overrides: list[str], out_root: str, timeout: float) -> dict:
    out_dir = os.path.join(out_root, re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
    command = [sys.executable, "-m", "minillm", "train", "--out_dir", out_dir, "--no-progress", *overrides]
    with OtherCpu() as load:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    text = done.stdout + done.stderr
    final = FINAL.search(text)
    result = {"name": name, "overrides": overrides, "wall_s": load.wall, "other_cores": load.other_cores,
              "returncode": done.returncode,
              "curve": [{"step": int(s), "val_loss": float(v), "val_bpb": float(b)} for s, v, b in CURVE.findall(text)]}
    if final:
        result.update(val_loss=float(final.group(1)), val_bpb=float(final.group(3)), steps=int(final.group(4)))
    else:
        result["error"] = text[-2000:]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated recipe names (default: all)")
    parser.add_argument("--out", default=None, help="write the JSON and Markdown results here")
    parser.add_argument("--runs-dir", default=None, help="where the runs' out_dirs go (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per run")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"--only: unknown recipe(s) {unknown}; expected some of {list(RECIPES)}")
    runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="minillm-sweep-")
    results = []
    for name in names:
        result = run_recipe(name, RECIPES[name], runs_dir, args.timeout)
        results.append(result)
        status = f"{result['val_bpb']:.4f} bpb" if "val_bpb" in result else "FAILED"
        print(f"{name}: {status} in {result['wall_s'] / 60:.2f} min (other cores {result['other_cores']:.2f})",
              flush=True)
    rows = [[r["name"], f"{r['val_bpb']:.4f}" if "val_bpb" in r else "failed", f"{r['wall_s'] / 60:.2f}",
             f"{r['other_cores']:.2f}", " ".join(r["overrides"])] for r in results]
    table = format_table(["recipe", "val bits/byte", "minutes (end to end)", "other cores", "overrides"], rows)
    print(table)
    payload = {"recipes": results, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(f"results: {save_results('sweep_main_job', payload, table, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
