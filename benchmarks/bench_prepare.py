"""Streaming `minillm prepare` vs tiktoken, and BPE training at scale.

    python benchmarks/bench_prepare.py                       # 200 MB corpus, 2 rounds (several minutes)
    python benchmarks/bench_prepare.py --megabytes 20 --rounds 1 --train-megabytes 10   # quicker

The corpus (made once, deterministically, in --scratch): JSON-lines files of documents built from
the complete works of Shakespeare (../shared/data, 5 MB). Each document joins three random runs
of whole lines (800-3,000 characters each) from random places, and 1% of its words are varied
(two letters swapped, or a letter doubled), so no two documents are exact copies and the
vocabulary grows as real corpora's does; 5% of the documents are planted near copies (0.5% of
the words of an earlier document varied) for de-duplication to find.

Contenders, each in a fresh process of its own, alternating over --rounds:

- ``tiktoken``: the reference: tiktoken's ``encode_ordinary`` on every document's text, one
  process, one thread (the documents are read into memory first, untimed) with the same GPT-2
  ranks and split pattern as minillm's tokenizer;
- ``prepare-wN`` / ``prepare-wN-nodedup``: ``minillm.data.stream.prepare_corpus`` end to end
  (reading, cleaning, MinHash, tokenizing in N worker processes, dedup, shards, the val cut),
  GPT-2's tokenizer (from ../shared/data/gpt2), timed from the call to its return;
- ``train``: ``BPETokenizer.train`` to a 32,768-token vocabulary (GPT-4 pattern) on the first
  --train-megabytes of the corpus's text, streamed document by document; pre-tokenization and
  merge learning timed apart.

Throughput is text megabytes (UTF-8 bytes of the documents' text) per second; the ratio is
prepare's over tiktoken's. Peak RSS: the main process's ``ru_maxrss``; for prepare also each
worker's, and their sum (a bound on the process tree's peak).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # run from a checkout without installing
sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))

import common  # noqa: E402  (after the path setup)

DATA = os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
FILE_MEGABYTES = 25


def gpt2_files() -> tuple[str, str]:
    return os.path.join(DATA, "gpt2", "encoder.json"), os.path.join(DATA, "gpt2", "vocab.bpe")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------
# the corpus
# ------------------------------------------------------------------------------------------------
def _vary(rng, words: list[str], fraction: float) -> None:
    """Vary ``fraction`` of the words in place: swap two letters or double one."""
    for index in rng.choice(len(words), size=max(1, int(fraction * len(words))), replace=False).tolist():
        word = words[index]
        if len(word) >= 3:
            i = int(rng.integers(len(word) - 1))
            words[index] = word[:i] + word[i + 1] + word[i] + word[i + 2:]
        elif word:
            words[index] = word + word[-1]


def make_corpus(directory: str, megabytes: int, seed: int = 0) -> list[str]:
    """Write the corpus (module docstring) as ``part_NNN.jsonl`` files; return their paths."""
    import numpy as np

    marker = os.path.join(directory, f"DONE-{megabytes}MB-seed{seed}")
    paths = []
    if os.path.exists(marker):
        return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".jsonl"))
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        os.remove(os.path.join(directory, name))
    with open(os.path.join(DATA, "shakespeare_complete.txt"), encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    lengths = np.array([len(line) + 1 for line in lines])
    starts = np.concatenate([[0], np.cumsum(lengths)])
    rng = np.random.default_rng(seed)
    target = megabytes * 10**6
    written, file_index, handle = 0, 0, None
    recent: list[str] = []
    while written < target:
        if handle is None or handle.tell() >= FILE_MEGABYTES * 10**6:
            if handle is not None:
                handle.close()
            paths.append(os.path.join(directory, f"part_{file_index:03d}.jsonl"))
            handle = open(paths[-1], "w", encoding="utf-8")
            file_index += 1
        if recent and rng.random() < 0.05:
            words = recent[int(rng.integers(len(recent)))].split(" ")
            _vary(rng, words, 0.005)
        else:
            pieces = []
            for _ in range(3):
                first = int(rng.integers(len(lines)))
                want = int(rng.integers(800, 3000))
                last = int(np.searchsorted(starts, starts[first] + want))
                pieces.append("\n".join(lines[first:max(last, first + 1)]))
            words = "\n\n".join(pieces).split(" ")
            _vary(rng, words, 0.01)
        text = " ".join(words)
        recent = (recent + [text])[-1000:]
        handle.write(json.dumps({"text": text}) + "\n")
        written += len(text.encode("utf-8"))
    handle.close()
    open(marker, "w").close()
    return paths


def iter_texts(paths: list[str], limit_bytes: int | None = None):
    total = 0
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                text = json.loads(line)["text"]
                yield text
                total += len(text.encode("utf-8"))
                if limit_bytes is not None and total >= limit_bytes:
                    return


# ------------------------------------------------------------------------------------------------
# contenders (each in its own process)
# ------------------------------------------------------------------------------------------------
def child_tiktoken(args) -> dict:
    import tiktoken

    from minillm.tokenizer import BPETokenizer

    ours = BPETokenizer.from_gpt2(*gpt2_files())
    encoding = tiktoken.Encoding(name="gpt2-local", pat_str=ours.pattern, mergeable_ranks=ours.mergeable_ranks,
                                 special_tokens={})
    texts = list(iter_texts(args.paths))
    text_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    tokens = 0
    with common.OtherCpu() as load:
        for text in texts:
            tokens += len(encoding.encode_ordinary(text))
    return {"seconds": load.wall, "text_mb": text_mb, "tokens": tokens, "other_cores": load.other_cores,
            "peak_rss_mb": peak_rss_mb()}


def child_prepare(args) -> dict:
    from minillm.data.stream import prepare_corpus
    from minillm.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer_path)
    text_mb = sum(len(text.encode("utf-8")) for text in iter_texts(args.paths)) / 1e6     # untimed
    out = os.path.join(args.scratch, f"out-{args.child}")
    with common.OtherCpu() as load:
        result = prepare_corpus(args.paths, tokenizer, out, tokenizer_path=args.tokenizer_path,
                                dedup=not args.child.endswith("nodedup"), eot_token_id=tokenizer.special_tokens[
                                    "<|endoftext|>"], workers=args.workers, overwrite=True, log=lambda *a: None)
    cleaning, dedup = result["cleaning"], result["dedup"]
    splits = result["meta"]["splits"]
    # The workers are children of multiprocessing's fork server, not of this process, so OtherCpu
    # counts their CPU as "other processes": take it out with what they report of themselves.
    other_cores = max(0.0, load.other - result["worker_cpu_seconds"]) / load.wall
    return {"seconds": load.wall, "text_mb": text_mb, "worker_cpu_seconds": result["worker_cpu_seconds"],
            "other_cores": other_cores, "peak_rss_mb": peak_rss_mb(),
            "worker_peak_rss_mb": result["worker_peak_rss_mb"], "docs_in": cleaning.docs_in,
            "chars_in": cleaning.chars_in, "docs_out": dedup.docs_out if dedup else cleaning.docs_out,
            "near_duplicates": dedup.near_duplicates if dedup else 0,
            "exact_duplicates": dedup.exact_duplicates if dedup else 0,
            "tokens": splits["train"]["tokens"] + splits["val"]["tokens"]}


def child_stages(args) -> dict:
    """Where a worker's time goes: each stage alone over the first 20 MB of text, one process."""
    from minillm.data.clean import clean_document
    from minillm.data.dedup import content_key
    from minillm.data.minhash import MinHasher
    from minillm.tokenizer import load_tokenizer

    texts = list(iter_texts(args.paths, 20 * 10**6))
    text_mb = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    tokenizer = load_tokenizer(args.tokenizer_path)
    hasher = MinHasher()
    seconds = {}
    with common.OtherCpu() as load:
        started = time.perf_counter()
        cleaned = [clean_document(t) for t in texts]
        seconds["clean"] = time.perf_counter() - started
        started = time.perf_counter()
        for text in cleaned:
            content_key(text)
        seconds["content key"] = time.perf_counter() - started
        started = time.perf_counter()
        shingles = [hasher.shingles(t) for t in cleaned]
        seconds["shingles"] = time.perf_counter() - started
        started = time.perf_counter()
        for item in shingles:
            hasher.signature_from_shingles(item)
        seconds["signatures"] = time.perf_counter() - started
        started = time.perf_counter()
        for text in cleaned:
            tokenizer.encode_ordinary(text)
        seconds["encode (minillm BPE)"] = time.perf_counter() - started
    return {"seconds": load.wall, "stages": seconds, "text_mb": text_mb, "other_cores": load.other_cores,
            "peak_rss_mb": peak_rss_mb()}


def child_train(args) -> dict:
    from minillm.tokenizer.patterns import Splitter, resolve_pattern
    from minillm.tokenizer.special import SpecialTokenMatcher
    from minillm.tokenizer.training import count_chunks, learn_merges

    limit = args.train_megabytes * 10**6
    name, pattern = resolve_pattern("gpt4")
    with common.OtherCpu() as load:
        started = time.perf_counter()
        counts = count_chunks(iter_texts(args.paths, limit), Splitter(pattern, named=True), SpecialTokenMatcher({}))
        counted = time.perf_counter()
        merges = learn_merges(counts, args.vocab_size - 256)
    return {"seconds": load.wall, "count_seconds": counted - started, "merge_seconds": load.wall - (counted - started),
            "merges": len(merges), "distinct_chunks": len(counts), "text_mb": limit / 1e6,
            "other_cores": load.other_cores, "peak_rss_mb": peak_rss_mb()}


# ------------------------------------------------------------------------------------------------
# the parent
# ------------------------------------------------------------------------------------------------
def main() -> int:
    global DATA
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=200, help="corpus size in MB of text (default 200)")
    parser.add_argument("--train-megabytes", type=int, default=100, help="text for tokenizer training (default 100)")
    parser.add_argument("--vocab-size", type=int, default=32_768)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--contenders", default="tiktoken,prepare-w2-nodedup,prepare-w2,prepare-w1-nodedup,train,"
                        "stages", help="comma-separated: tiktoken, prepare-wN[-nodedup], train, stages")
    parser.add_argument("--scratch", default="/tmp/minillm-bench-prepare", help="corpus and outputs go here")
    parser.add_argument("--data", default=DATA, help="the shared data folder (Shakespeare, GPT-2's vocabulary)")
    parser.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    DATA = args.data
    corpus_dir = os.path.join(args.scratch, f"corpus-{args.megabytes}mb")
    args.tokenizer_path = os.path.join(args.scratch, "gpt2-minillm.json")

    if args.child:
        args.paths = make_corpus(corpus_dir, args.megabytes)
        child = {"tiktoken": child_tiktoken, "train": child_train, "stages": child_stages}.get(args.child,
                                                                                                 child_prepare)
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0

    from minillm.tokenizer import BPETokenizer

    os.makedirs(args.scratch, exist_ok=True)
    started = time.perf_counter()
    paths = make_corpus(corpus_dir, args.megabytes)
    print(f"corpus: {len(paths)} files in {corpus_dir} ({sum(os.path.getsize(p) for p in paths) / 1e6:.0f} MB on "
          f"disk, made or found in {time.perf_counter() - started:.1f} s)", flush=True)
    BPETokenizer.from_gpt2(*gpt2_files()).save(args.tokenizer_path)
    contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]

    def run(contender: str) -> dict:
        workers = contender.split("-")[1][1:] if contender.startswith("prepare-") else "1"
        argv = ["--child", contender, "--workers", workers, "--megabytes", str(args.megabytes),
                "--train-megabytes", str(args.train_megabytes), "--vocab-size", str(args.vocab_size),
                "--scratch", args.scratch, "--data", args.data]
        return common.run_script_child(__file__, argv, threads=1, timeout=1800)

    runs = common.alternate_rounds(contenders, args.rounds, run, describe=lambda r: (
        f"{r['seconds']:.1f} s, peak RSS {r['peak_rss_mb']:.0f} MB, other cores {r['other_cores']:.2f}"))
    good = {c: [r for r in rs if "error" not in r] for c, rs in runs.items()}
    median = common.median

    rows = []
    reference = None
    if good.get("tiktoken"):
        reference = median([r["text_mb"] / r["seconds"] for r in good["tiktoken"]])
    for contender in contenders:
        results = good.get(contender)
        if not results or contender in ("train", "stages"):
            continue
        speeds = [r["text_mb"] / r["seconds"] for r in results]
        speed = median(speeds)
        peak = max(r["peak_rss_mb"] for r in results)
        workers = max((r.get("worker_peak_rss_mb") or [] for r in results), key=len, default=[])
        worker_peaks = [max(r["worker_peak_rss_mb"][i] for r in results if len(r["worker_peak_rss_mb"]) > i)
                        for i in range(len(workers))] if contender != "tiktoken" and "w1" not in contender else []
        tree = peak + sum(worker_peaks)
        rows.append([contender, f"{median([r['seconds'] for r in results]):.1f}", f"{speed:.2f}",
                     f"{common.spread(speeds)}", f"{speed / reference:.2f}x" if reference else "n/a",
                     f"{peak:.0f}", " + ".join(f"{w:.0f}" for w in worker_peaks) or "-", f"{tree:.0f}",
                     f"{max(r['other_cores'] for r in results):.2f}"])
    table = common.format_table(["contender", "seconds", "text MB/s", "round range", "vs tiktoken",
                                 "main peak RSS MB", "worker peaks MB", "sum MB", "max other cores"], rows)
    lines = [table]
    dedup_runs = [r for c, rs in good.items() if c.startswith("prepare-") and not c.endswith("nodedup") for r in rs]
    if dedup_runs:
        r = dedup_runs[0]
        lines.append(f"\ndedup: {r['docs_in']:,} documents in, {r['docs_out']:,} kept, {r['near_duplicates']:,} near "
                     f"and {r['exact_duplicates']:,} exact duplicates dropped (about 5% planted)")
    if good.get("train"):
        results = good["train"]
        rows = [["train 32k" if args.vocab_size == 32_768 else f"train {args.vocab_size}",
                 f"{results[0]['text_mb']:.0f}", f"{median([r['seconds'] for r in results]):.1f}",
                 f"{median([r['count_seconds'] for r in results]):.1f}",
                 f"{median([r['merge_seconds'] for r in results]):.1f}", f"{results[0]['merges']:,}",
                 f"{results[0]['distinct_chunks']:,}", f"{max(r['peak_rss_mb'] for r in results):.0f}",
                 f"{max(r['other_cores'] for r in results):.2f}"]]
        lines.append("\n" + common.format_table(["tokenizer training", "text MB", "seconds", "pre-tokenize s",
                                                  "merges s", "merges", "distinct chunks", "peak RSS MB",
                                                  "max other cores"], rows))
    if good.get("stages"):
        results = good["stages"]
        names = list(results[0]["stages"])
        text_mb = results[0]["text_mb"]
        rows = [[name, f"{median([r['stages'][name] for r in results]):.2f}",
                 f"{text_mb / median([r['stages'][name] for r in results]):.1f}"] for name in names]
        lines.append(f"\nwhere a worker's time goes ({text_mb:.0f} MB of text, each stage alone, one process):\n"
                     + common.format_table(["stage", "seconds", "MB/s"], rows))
    report = "\n".join(lines)
    print(report)
    path = common.save_results("bench_prepare", {"args": {k: v for k, v in vars(args).items()}, "runs": runs},
                               report, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
