"""Generation speed: tokens per second with the key/value cache and with full recomputation.

    python benchmarks/bench_generate.py                        # prompts 16,128,512; 256 new tokens; 3 rounds
    python benchmarks/bench_generate.py --repeats 5 --threads 1
    python benchmarks/bench_generate.py --no-recompute         # the cache alone (seconds, not minutes)

Model: GPT-2 preset (LayerNorm, learned positions, GELU, tied head), 6 layers, 6 heads, 384 wide,
block_size 768 (so 512 + 256 fits without sliding the window), vocab 1024 (the project's default
BPE size), float32, seeded random weights (speed does not depend on them), eval mode, batch 1.
Decoding is greedy (temperature 0): the time is the model's, and both contenders must produce the
same tokens (checked on every prompt length).

Method
- Contenders per prompt length: "cache" (``model.stream``: prefill, then one-token steps against
  the preallocated cache) and "recompute" (``use_cache=False``: a full forward over the whole
  context for every new token). After one short warm-up call each, they are alternated A B A B ...
  (``common.alternate``) and the medians over ``--repeats`` rounds are reported.
- tokens/s = new tokens / median time of the whole call (prefill included). For the cache, the
  prefill time (prompt in, first token out) and the decode-only time per token (first token to
  last) are recorded too.
- Targets: with the cache, the decode time per token at the longest prompt is at most 1.5x that
  at the shortest (the total time per token, prefill included, is shown beside it); and at the
  longest prompt recompute takes at least 5x as long as the cache.
- Other processes' CPU use during each prompt length's timed region (``common.OtherCpu``): on a
  shared 2-core machine any other load slows BLAS 5-25x; re-run when the table warns.

Results: benchmarks/results/bench_generate.json and .md (git-ignored).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

MODEL = dict(vocab_size=1024, block_size=768, n_layer=6, n_head=6, n_embd=384)
GROWTH_TARGET = 1.5
SPEEDUP_TARGET = 5.0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", default="16,128,512", help="prompt lengths (comma-separated)")
    parser.add_argument("--new-tokens", type=int, default=256, help="tokens generated per call")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per contender")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads")
    parser.add_argument("--no-recompute", dest="recompute", action="store_false",
                        help="time the cache alone (recomputation takes minutes at 512)")
    args = parser.parse_args(argv)
    args.prompts = [int(p) for p in args.prompts.split(",")]
    if args.new_tokens < 2 or args.repeats < 1 or args.threads < 1:
        parser.error("--new-tokens must be >= 2, --repeats and --threads >= 1")
    if max(args.prompts) + args.new_tokens > MODEL["block_size"]:
        parser.error(f"prompt + new tokens must fit block_size={MODEL['block_size']}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from common import OtherCpu, alternate, format_table, median, save_results, set_threads  # noqa: PLC0415
    set_threads(args.threads)
    import numpy as np  # noqa: PLC0415  (after the thread count is set)

    import minillm as mm  # noqa: PLC0415
    from minillm.nn import GPT, GPTConfig  # noqa: PLC0415

    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(**MODEL)).eval()
    rng = np.random.Generator(np.random.PCG64(0))
    n = args.new_tokens
    rows, payload = [], {"model": MODEL, "new_tokens": n, "repeats": args.repeats, "threads": args.threads,
                         "results": []}
    for length in args.prompts:
        prompt = rng.integers(0, MODEL["vocab_size"], size=length).tolist()
        split = {"prefill": [], "decode": []}
        outputs = {}

        def cached():
            start = time.perf_counter()
            tokens = model.stream(prompt, n, temperature=0.0)
            first = [next(tokens)]
            middle = time.perf_counter()
            outputs["cache"] = first + list(tokens)
            end = time.perf_counter()
            split["prefill"].append(middle - start)
            split["decode"].append((end - middle) / (n - 1))

        def recomputed():
            outputs["recompute"] = model.generate(prompt, n, temperature=0.0, use_cache=False)[length:]

        contenders = {"cache": cached}
        if args.recompute:
            contenders["recompute"] = recomputed
        model.generate(prompt, 2, temperature=0.0)               # warm-up: short calls, both paths
        model.generate(prompt, 2, temperature=0.0, use_cache=False)
        with OtherCpu() as other:
            times = alternate(contenders, repeats=args.repeats, warmup=0)
        if args.recompute and outputs["cache"] != outputs["recompute"]:
            raise AssertionError(f"prompt {length}: cache and recomputation produced different tokens")
        cache_s = median(times["cache"])
        result = {"prompt": length, "cache_s": times["cache"], "prefill_s": split["prefill"],
                  "decode_s_per_token": split["decode"], "other_cores": other.other_cores}
        row = [length, n / cache_s, 1000 * cache_s / n, 1000 * median(split["decode"]),
               1000 * median(split["prefill"])]
        if args.recompute:
            recompute_s = median(times["recompute"])
            result["recompute_s"] = times["recompute"]
            row += [n / recompute_s, recompute_s / cache_s]
        row.append(f"{other.other_cores:.2f}")
        rows.append(row)
        payload["results"].append(result)
        print(f"prompt {length}: done ({other.describe()})", flush=True)

    headers = ["prompt", "cache tok/s", "cache ms/tok (all)", "cache ms/tok (decode)", "prefill ms"]
    if args.recompute:
        headers += ["recompute tok/s", "recompute/cache"]
    headers.append("other cores")
    table = format_table(headers, rows)
    first, last = rows[0], rows[-1]
    decode_growth, total_growth = last[3] / first[3], last[2] / first[2]
    lines = [table, "",
             f"cache, per-token time from prompt {first[0]} to {last[0]}: decode x{decode_growth:.2f}, "
             f"with prefill x{total_growth:.2f} (target <= {GROWTH_TARGET}: "
             f"{'met' if decode_growth <= GROWTH_TARGET else 'NOT met'} on decode)"]
    payload.update(decode_growth=decode_growth, total_growth=total_growth)
    if args.recompute:
        speedup = last[6]
        payload["speedup_longest"] = speedup
        lines.append(f"recompute / cache at prompt {last[0]}: x{speedup:.1f} (target >= {SPEEDUP_TARGET}: "
                     f"{'met' if speedup >= SPEEDUP_TARGET else 'NOT met'})")
    lines.append(f"model {MODEL}, float32, greedy, batch 1, {n} new tokens, {args.threads} BLAS threads, "
                 f"medians of {args.repeats} alternated rounds")
    text = "\n".join(lines)
    print(text)
    print(f"saved {save_results('bench_generate', payload, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
