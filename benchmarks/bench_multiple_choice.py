"""Multiple-choice scoring speed: the key/value cache shared across a question's choices vs
plain batched forwards (minillm.train.multiple_choice).

    python benchmarks/bench_multiple_choice.py                  # contexts 32,128,512; 4 choices of 24 tokens
    python benchmarks/bench_multiple_choice.py --contexts 64 --questions 4 --repeats 1   # a smoke run

Model: the one of bench_generate.py (GPT-2 preset, 6 layers, 6 heads, 384 wide, block_size 768,
vocab 1024, float32, seeded random weights, eval mode): speed does not depend on the weights.
Each question: a context of the given length and 4 choices of 24 tokens (HellaSwag's endings are
about 20-30 GPT-2 tokens, its contexts 40-100), random ids.

Contenders (one library, so one process; alternated A B C A B C ..., medians of --repeats):
- "cache": ``score_with_cache``: the context (less its last token) once at batch 1 with
  ``only_last``, its keys/values copied to the 4 rows, then the 4 choices in one forward.
- "batch 4": ``score_batch`` one question per forward (4 rows of context + choice).
- "batch 16": ``score_batch`` four questions per forward (16 rows).
All three must give the same log-probabilities (checked, float32 tolerance).
Reported: questions per second and the ratio to "cache", with other processes' CPU use.

Results: benchmarks/results/bench_multiple_choice.json and .md (git-ignored).
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

MODEL = dict(vocab_size=1024, block_size=768, n_layer=6, n_head=6, n_embd=384)
CHOICES, CHOICE_TOKENS = 4, 24


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="32,128,512", help="context lengths in tokens (comma-separated)")
    parser.add_argument("--questions", type=int, default=16, help="questions per timed call (a multiple of 4)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per contender")
    parser.add_argument("--threads", type=int, default=2, help="BLAS threads")
    args = parser.parse_args(argv)
    args.contexts = [int(c) for c in args.contexts.split(",")]
    if args.questions < 4 or args.questions % 4 or args.repeats < 1 or args.threads < 1:
        parser.error("--questions must be a multiple of 4, --repeats and --threads >= 1")
    if max(args.contexts) + CHOICE_TOKENS > MODEL["block_size"]:
        parser.error(f"context + choice must fit block_size={MODEL['block_size']}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from common import OtherCpu, alternate, format_table, median, save_results, set_threads  # noqa: PLC0415
    set_threads(args.threads)
    import numpy as np  # noqa: PLC0415  (after the thread count is set)

    import minillm as mm  # noqa: PLC0415
    from minillm.nn import GPT, GPTConfig  # noqa: PLC0415
    from minillm.train.multiple_choice import score_batch, score_with_cache  # noqa: PLC0415

    mm.manual_seed(0)
    model = GPT(GPTConfig.gpt2(**MODEL)).eval()
    rng = np.random.Generator(np.random.PCG64(0))
    rows, payload = [], {"model": MODEL, "choices": CHOICES, "choice_tokens": CHOICE_TOKENS,
                         "questions": args.questions, "repeats": args.repeats, "threads": args.threads, "results": []}
    for length in args.contexts:
        items = [(rng.integers(0, MODEL["vocab_size"], size=length).tolist(),
                  [rng.integers(0, MODEL["vocab_size"], size=CHOICE_TOKENS).tolist() for _ in range(CHOICES)])
                 for _ in range(args.questions)]
        outputs = {}

        def cached():
            with mm.no_grad():
                outputs["cache"] = [score_with_cache(model, context, choices) for context, choices in items]

        def batched(per_forward):
            def run():
                with mm.no_grad():
                    outputs[f"batch {per_forward * CHOICES}"] = [
                        scores for start in range(0, len(items), per_forward)
                        for scores in score_batch(model, items[start:start + per_forward])]
            return run

        contenders = {"cache": cached, "batch 4": batched(1), "batch 16": batched(4)}
        with OtherCpu() as other:
            times = alternate(contenders, repeats=args.repeats, warmup=1)
        for name in ("batch 4", "batch 16"):
            np.testing.assert_allclose(outputs[name], outputs["cache"], rtol=1e-4, atol=1e-3)
        cache_s = median(times["cache"])
        row = [length]
        for name in contenders:
            row += [args.questions / median(times[name]), f"{median(times[name]) / cache_s:.2f}x"]
        row.append(f"{other.other_cores:.2f}")
        rows.append(row)
        payload["results"].append({"context": length, "times": times, "other_cores": other.other_cores})
        print(f"context {length}: done ({other.describe()})", flush=True)
    headers = ["context"]
    for name in ("cache", "batch 4", "batch 16"):
        headers += [f"{name} q/s", f"{name} time/cache"]
    headers.append("other cores")
    text = "\n".join([format_table(headers, rows), "",
                      f"model {MODEL}, float32, {CHOICES} choices of {CHOICE_TOKENS} tokens, {args.questions} "
                      f"questions per call, {args.threads} BLAS threads, medians of {args.repeats} alternated rounds"])
    print(text)
    print(f"saved {save_results('bench_multiple_choice', payload, text)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
