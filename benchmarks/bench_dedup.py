"""De-duplication throughput (exact + MinHash/LSH) on a corpus with planted near duplicates.

    python benchmarks/bench_dedup.py [--copies 8] [--doc-chars 4000] [--mutation 0.005] [--repeats 3]

The embedded Shakespeare corpus is cut into documents of about ``--doc-chars`` characters (at
line breaks); the corpus is then repeated ``--copies`` times, each copy with a fraction
``--mutation`` of its words replaced by random words (seeded), so every document has
``copies - 1`` near duplicates: Jaccard ~ (1 - 5m) / (1 + 5m) with the original (0.95 for
m = 0.005, 5-word shingles) and ~ (1 - 10m) / (1 + 10m) between two mutated copies. Reports
the median throughput in MB/s (UTF-8 bytes in per second of wall time), documents per second,
how many duplicates were found, and how much CPU other processes used meanwhile.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import common  # noqa: E402

from minillm.data import default_corpus_path, find_duplicates, read_corpus  # noqa: E402


def make_corpus(doc_chars: int, copies: int, mutation: float, seed: int) -> list[str]:
    (text,) = read_corpus(default_corpus_path())
    docs, start = [], 0
    while start < len(text):
        cut = text.find("\n", start + doc_chars)
        cut = len(text) if cut == -1 else cut + 1
        docs.append(text[start:cut])
        start = cut
    rng = np.random.default_rng(seed)
    corpus = list(docs)
    for copy in range(1, copies):
        for doc in docs:
            words = doc.split()
            replace = rng.random(len(words)) < mutation
            for i in np.flatnonzero(replace):
                words[i] = f"mut{copy}x{rng.integers(1 << 30)}"
            corpus.append(" ".join(words))
    order = rng.permutation(len(corpus))                   # duplicates scattered through the stream
    return [corpus[i] for i in order]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--doc-chars", type=int, default=4000)
    parser.add_argument("--mutation", type=float, default=0.005)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    corpus = make_corpus(args.doc_chars, args.copies, args.mutation, args.seed)
    megabytes = sum(len(doc.encode("utf-8")) for doc in corpus) / 1e6
    times, reports, other = [], [], []
    for _ in range(args.repeats):
        with common.OtherCpu() as cpu:
            result = find_duplicates(corpus, threshold=0.8, num_perm=128, shingle_size=5, seed=0)
        times.append(cpu.wall)
        reports.append(result.report)
        other.append(cpu.other_cores)
        print(cpu.describe())
    wall = common.median(times)
    report = reports[0]
    expected_dropped = len(corpus) - len(corpus) // args.copies
    rows = [[f"{megabytes:.1f} MB, {len(corpus):,} docs", wall, megabytes / wall, len(corpus) / wall,
             report.docs_in - report.docs_out, expected_dropped, report.candidate_comparisons, max(other)]]
    table = common.format_table(
        ["corpus", "median s", "MB/s", "docs/s", "dropped", "planted", "comparisons", "other cores (max)"], rows)
    print(report)
    print(table)
    path = common.save_results("bench_dedup", {"args": vars(args), "megabytes": megabytes, "times": times,
                                               "other_cores": other, "report": str(report)}, table)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
