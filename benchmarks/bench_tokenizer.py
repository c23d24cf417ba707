"""Tokenizer benchmark: minillm's BPE vs HF `tokenizers` (training) and tiktoken (encoding).

    python benchmarks/bench_tokenizer.py                 # full run (about 1-2 minutes)
    python benchmarks/bench_tokenizer.py --repeats 1     # quicker

What is measured (10 MB of text: the complete works of Shakespeare, 5 MB, concatenated twice --
the duplication doubles the pre-tokenization work but adds no new distinct words):

- training to a 16,384-token vocabulary: minillm (GPT-4 split pattern) vs HF `tokenizers`
  (BPE model, ByteLevel pre-tokenizer, BpeTrainer) with RAYON_NUM_THREADS=1. Each run is a
  fresh process, alternating minillm / HF, and reports its peak resident memory (ru_maxrss) next
  to the memory it had before training started.
- peak memory of minillm's training measured by tracemalloc (Python allocations only), in a
  separate process because tracing slows everything down.
- encode_ordinary throughput: minillm (a fresh tokenizer, so the chunk cache starts cold, and
  again with the cache warm) vs tiktoken's `encode_ordinary` (single-threaded) built from the
  same mergeable_ranks and pattern; the ids must be identical. Alternated, medians reported.

Every timed region also records the CPU time that *other* processes used meanwhile (from
/proc/stat): on a shared 2-core machine a busy neighbour can distort timings; rerun if it is
large. HF `tokenizers` and tiktoken are optional: their columns read "n/a" when missing.
The table is printed and written to benchmarks/results/bench_tokenizer.txt (and .json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # run from a checkout without installing
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import common  # noqa: E402  (after the path setup)

from minillm.fileio import atomic_write_text  # noqa: E402

DEFAULT_CORPUS = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data", "shakespeare_complete.txt")
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
VOCAB_SIZE = 16_384


# ------------------------------------------------------------------------------------------------
# measuring helpers
# ------------------------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / (1024 * 1024)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def load_text(corpus: str) -> str:
    with open(corpus, encoding="utf-8") as handle:
        text = handle.read()
    return text + text  # ~10 MB: the 5 MB complete works, twice


# ------------------------------------------------------------------------------------------------
# workers (each runs in its own process and prints one JSON line)
# ------------------------------------------------------------------------------------------------

def worker_train_ours(corpus: str) -> dict:
    from minillm.tokenizer import BPETokenizer
    text = load_text(corpus)
    rss_before = current_rss_mb()
    with common.OtherCpu() as timed:
        tokenizer = BPETokenizer.train(text, vocab_size=VOCAB_SIZE, pattern="gpt4")
    tokenizer.save(os.path.join(RESULTS_DIR, "bench_tokenizer_16k.json"))
    return {"seconds": timed.wall, "others_cpu": timed.other, "vocab_size": tokenizer.vocab_size,
            "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb(), "corpus_mb": len(text.encode()) / 2**20}


def worker_train_ours_tracemalloc(corpus: str) -> dict:
    import tracemalloc

    from minillm.tokenizer import BPETokenizer
    text = load_text(corpus)
    tracemalloc.start()
    BPETokenizer.train(text, vocab_size=VOCAB_SIZE, pattern="gpt4")
    _, peak = tracemalloc.get_traced_memory()
    return {"tracemalloc_peak_mb": peak / 2**20, "corpus_mb": len(text.encode()) / 2**20}


def worker_train_hf(corpus: str) -> dict:
    os.environ["RAYON_NUM_THREADS"] = "1"  # before the import: the thread pool reads it once
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    except ImportError:
        return {"missing": "tokenizers"}
    text = load_text(corpus)
    rss_before = current_rss_mb()
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    with common.OtherCpu() as timed:
        tokenizer.train_from_iterator([text], trainer=trainer)
    return {"seconds": timed.wall, "others_cpu": timed.other, "vocab_size": tokenizer.get_vocab_size(),
            "rss_before_mb": rss_before, "peak_rss_mb": peak_rss_mb()}


def worker_encode(corpus: str, repeats: int) -> dict:
    os.environ["RAYON_NUM_THREADS"] = "1"
    from minillm.tokenizer import BPETokenizer
    text = load_text(corpus)
    trained = BPETokenizer.load(os.path.join(RESULTS_DIR, "bench_tokenizer_16k.json"))
    try:
        import tiktoken
        encoding = tiktoken.Encoding(name="minillm-bench", pat_str=trained.pattern,
                                     mergeable_ranks=trained.mergeable_ranks, special_tokens={})
    except ImportError:
        encoding = None
    result: dict = {"cold": [], "warm": [], "tiktoken": [], "others_cpu": [], "identical": None}
    for _ in range(repeats):  # alternate: ours (cold), ours (warm), tiktoken, ...
        tokenizer = BPETokenizer.from_dict(trained.to_dict())  # fresh: empty chunk cache
        with common.OtherCpu() as cold:
            ours = tokenizer.encode_ordinary(text)
        with common.OtherCpu() as warm:
            tokenizer.encode_ordinary(text)
        result["cold"].append(cold.wall)
        result["warm"].append(warm.wall)
        result["others_cpu"] += [cold.other, warm.other]
        if encoding is not None:
            with common.OtherCpu() as theirs_timed:
                theirs = encoding.encode_ordinary(text)
            result["tiktoken"].append(theirs_timed.wall)
            result["others_cpu"].append(theirs_timed.other)
            result["identical"] = ours == theirs if result["identical"] in (None, True) else False
    result["tokens"] = len(ours)
    result["megabytes"] = len(text.encode()) / 2**20
    return result


def run_worker(name: str, corpus: str, *extra: str) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--corpus", corpus, *extra]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"worker {name} failed:\n{completed.stderr}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# the report
# ------------------------------------------------------------------------------------------------

def ratio(ours: float | None, theirs: float | None) -> str:
    if ours is None or theirs is None:
        return "n/a"
    return f"{ours / theirs:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=DEFAULT_CORPUS, help="text file, used twice (default: Shakespeare)")
    parser.add_argument("--repeats", type=int, default=2, help="alternated runs per contender (default 2)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    os.makedirs(RESULTS_DIR, exist_ok=True)
    if args.worker:
        workers = {"train-ours": worker_train_ours, "train-ours-tracemalloc": worker_train_ours_tracemalloc,
                   "train-hf": worker_train_hf}
        if args.worker == "encode":
            print(json.dumps(worker_encode(args.corpus, args.repeats)))
        else:
            print(json.dumps(workers[args.worker](args.corpus)))
        return 0

    ours_runs, hf_runs = [], []
    for _ in range(args.repeats):  # A B A B: each in a fresh process
        ours_runs.append(run_worker("train-ours", args.corpus))
        hf_runs.append(run_worker("train-hf", args.corpus))
    traced = run_worker("train-ours-tracemalloc", args.corpus)
    encode = run_worker("encode", args.corpus, "--repeats", str(args.repeats))

    hf_available = "missing" not in hf_runs[0]
    corpus_mb = ours_runs[0]["corpus_mb"]
    train_ours = statistics.median(r["seconds"] for r in ours_runs)
    train_hf = statistics.median(r["seconds"] for r in hf_runs) if hf_available else None
    peak_ours = max(r["peak_rss_mb"] for r in ours_runs)
    base_ours = min(r["rss_before_mb"] for r in ours_runs)
    peak_hf = max(r["peak_rss_mb"] for r in hf_runs) if hf_available else None
    cold = statistics.median(encode["cold"])
    warm = statistics.median(encode["warm"])
    tik = statistics.median(encode["tiktoken"]) if encode["tiktoken"] else None
    megabytes = encode["megabytes"]
    train_others = max(r["others_cpu"] for r in ours_runs + (hf_runs if hf_available else []))
    encode_others = max(encode["others_cpu"])

    def fmt(value, unit="s", digits=2):
        return "n/a" if value is None else f"{value:.{digits}f} {unit}"

    lines = [
        f"minillm tokenizer benchmark  ({platform.processor() or platform.machine()}, Python {platform.python_version()})",
        f"text: {args.corpus} concatenated twice = {corpus_mb:.2f} MB (the duplication adds no new words)",
        f"median of {args.repeats} alternated run(s); 'others' = most CPU seconds other processes used "
        "during one timed run (rerun if large)",
        "",
        f"{'measure':44} {'minillm':>14} {'reference':>14} {'ratio':>8}   target",
        f"{'train to 16,384 tokens (s), ref = HF 1 thread':44} {fmt(train_ours):>14} {fmt(train_hf):>14} "
        f"{ratio(train_ours, train_hf):>8}   minillm/HF <= 5x (others {train_others:.1f} s)",
        f"{'train peak RSS (MB), ref = HF':44} {fmt(peak_ours, 'MB', 0):>14} {fmt(peak_hf, 'MB', 0):>14} "
        f"{ratio(peak_ours, peak_hf):>8}",
        f"{'train RSS growth over start (MB) / corpus':44} {fmt(peak_ours - base_ours, 'MB', 0):>14} "
        f"{fmt(corpus_mb, 'MB', 1):>14} {(peak_ours - base_ours) / corpus_mb:>7.1f}x   < 20x corpus",
        f"{'train peak RSS, whole process / corpus':44} {fmt(peak_ours, 'MB', 0):>14} {fmt(corpus_mb, 'MB', 1):>14} "
        f"{peak_ours / corpus_mb:>7.1f}x   < 20x corpus",
        f"{'train tracemalloc peak / corpus':44} {fmt(traced['tracemalloc_peak_mb'], 'MB', 0):>14} "
        f"{fmt(corpus_mb, 'MB', 1):>14} {traced['tracemalloc_peak_mb'] / corpus_mb:>7.1f}x   < 20x corpus",
        f"{'encode_ordinary MB/s, cold cache, ref=tiktoken':44} {fmt(megabytes / cold, 'MB/s'):>14} "
        f"{fmt(megabytes / tik if tik else None, 'MB/s'):>14} {ratio(tik, cold):>8}   minillm/tiktoken >= 0.5x "
        f"(others {encode_others:.1f} s)",
        f"{'encode_ordinary MB/s, warm cache, ref=tiktoken':44} {fmt(megabytes / warm, 'MB/s'):>14} "
        f"{fmt(megabytes / tik if tik else None, 'MB/s'):>14} {ratio(tik, warm):>8}",
        f"identical ids (minillm vs tiktoken, {encode['tokens']:,} tokens): {encode['identical']}",
    ]
    report = "\n".join(lines)
    print(report)
    atomic_write_text(os.path.join(RESULTS_DIR, "bench_tokenizer.txt"), report + "\n")
    atomic_write_text(os.path.join(RESULTS_DIR, "bench_tokenizer.json"), json.dumps(
        {"train_ours": ours_runs, "train_hf": hf_runs, "tracemalloc": traced, "encode": encode}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
